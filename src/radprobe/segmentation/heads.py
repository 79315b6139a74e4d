"""Segmentation heads on frozen patch grids, and the from-scratch U-Net reference.

* :class:`LinearHead` — DINOv2's linear segmentation head: BatchNorm + 1x1 conv on the last layer's
  patch-token grid (``bn=False``: the 1x1 conv alone, Baharoon et al.'s head); logits are upsampled
  bilinearly to the mask size by the caller.
* :class:`LightDecoder` — a DPT-style multi-level decoder: four levels (four intermediate ViT blocks,
  or a CNN's last four stage maps) are projected to ``channels``, a ViT's single-resolution grids
  are resampled to a pyramid (x4, x2, x1, x0.5 of the patch grid; a CNN's maps already are one),
  and the levels are fused coarse to fine with residual conv units; finer levels are narrower
  (32/64/128/128 channels at ``channels=128``). ~2 M parameters on ViT-L features.
* :func:`build_unet` — MONAI's 2D UNet, trained from scratch on the images (the reference row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VIT_SCALES = (4.0, 2.0, 1.0, 0.5)


def decoder_plan(num_blocks: int, is_vit: bool) -> tuple[list[int], list[float]]:
    """Absolute layer index and resampling scale of each decoder level (finest first).

    ViTs: four blocks spread over the depth ending at the last (DPT: 5, 11, 17, 23 of 24; 2, 5, 8, 11
    of 12); a shallow model repeats blocks. CNNs: the last four stages, each at its own stride.
    """
    if is_vit:
        at = np.ceil(np.linspace(num_blocks / 4 - 1, num_blocks - 1, 4)).astype(int)
        return [int(max(0, a)) for a in at], list(VIT_SCALES)
    first = max(0, num_blocks - 4)
    layers = list(range(first, num_blocks))
    return layers, [1.0] * len(layers)


def linear_layer(num_blocks: int) -> int:
    """The layer the linear head reads: the last block (or stage)."""
    return num_blocks - 1


class LinearHead(nn.Module):
    """BatchNorm + 1x1 conv on one patch grid (DINOv2 linear segmentation); ``bn=False``: the 1x1 conv
    alone, weights N(0, 0.01), bias 0 (Baharoon et al., ``eval/segmentation/utils.py:56-58``)."""

    upsample = "bilinear"  # how the training loop brings the logits to the target size

    def __init__(self, layer: int, dim: int, num_classes: int, bn: bool = True) -> None:
        super().__init__()
        self.layer = layer
        self.bn: nn.Module = nn.BatchNorm2d(dim) if bn else nn.Identity()
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    @property
    def layers(self) -> list[int]:
        return [self.layer]

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        if isinstance(self.bn, nn.Identity):
            return LinearHead.fused_forward([self], feats)
        return self.conv(self.bn(feats[self.layer]))

    @staticmethod
    def fused_forward(heads: Sequence[LinearHead], feats: dict[int, torch.Tensor]) -> torch.Tensor:
        """K BatchNorm-free heads as one 1x1 conv with K * classes outputs, head-major (each head's
        parameters stay its own, so an optimizer can give each head its own learning rate). A matmul:
        on a CPU, conv2d's 1x1 path costs several times more for a few output channels."""
        if any(not isinstance(h.bn, nn.Identity) for h in heads):
            raise ValueError("only BatchNorm-free linear heads train fused")
        w = torch.cat([h.conv.weight.flatten(1) for h in heads])
        b = torch.cat([h.conv.bias for h in heads])
        x = feats[heads[0].layer]
        B, _, h, wd = x.shape
        out = torch.baddbmm(b[None, :, None].expand(B, -1, h * wd), w.expand(B, -1, -1), x.flatten(2))
        return out.view(B, -1, h, wd)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class _ResidualUnit(nn.Module):
    """DPT's residual conv unit: two 3x3 convs with a skip."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
            nn.Conv2d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Resample(nn.Module):
    """Bring a projected grid to its pyramid scale: upsample + conv (>1), strided conv (<1), or none."""

    def __init__(self, c: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        if scale > 1:
            self.conv: nn.Module = _conv_bn(c, c)
        elif scale < 1:
            self.conv = _conv_bn(c, c, stride=round(1 / scale))
        else:
            self.conv = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv(x)


def level_widths(n_levels: int, channels: int) -> list[int]:
    """Channels per level, finest first: the finest levels are the widest maps, so they get fewer
    channels (U-Net style) — most of the compute of a decoder sits at its finest level."""
    return [max(8, channels >> max(0, n_levels - 2 - i)) for i in range(n_levels)]


class LightDecoder(nn.Module):
    """Multi-level fusion decoder on frozen grids (DPT-style reassemble + fuse, light).

    Levels are listed finest first. Each is projected (1x1 conv) to its width and resampled to its
    pyramid scale; fusion runs coarse to fine: the running map is upsampled to the next finer
    level's size, narrowed to its width, added to it, and refined by a residual unit.
    """

    def __init__(
        self,
        layers: Sequence[int],
        dims: Sequence[int],
        scales: Sequence[float],
        num_classes: int,
        channels: int = 128,
    ) -> None:
        super().__init__()
        if not len(layers) == len(dims) == len(scales):
            raise ValueError("layers, dims and scales differ in length")
        self._layers = list(layers)
        widths = level_widths(len(layers), channels)
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, w, 1, bias=False), nn.BatchNorm2d(w))
            for d, w in zip(dims, widths, strict=True)
        )
        self.resample = nn.ModuleList(_Resample(w, s) for w, s in zip(widths, scales, strict=True))
        self.fuse = nn.ModuleList(_ResidualUnit(w) for w in widths)
        self.refine = nn.ModuleList(_ResidualUnit(w) for w in widths)
        # narrows the running map from level i + 1's width to level i's
        self.narrow = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 1, bias=False)
            if widths[i + 1] != widths[i]
            else nn.Identity()
            for i in range(len(widths) - 1)
        )
        w0 = widths[0]
        self.head = nn.Sequential(_conv_bn(w0, w0), nn.Conv2d(w0, num_classes, 1))

    @property
    def layers(self) -> list[int]:
        return sorted(set(self._layers))

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        levels = [
            rs(proj(feats[layer]))
            for layer, proj, rs in zip(self._layers, self.project, self.resample, strict=True)
        ]
        x = self.refine[-1](self.fuse[-1](levels[-1]))
        for i in range(len(levels) - 2, -1, -1):
            y = self.fuse[i](levels[i])
            up = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
            x = self.refine[i](y + self.narrow[i](up))
        return self.head(x)


class UNetModel(nn.Module):
    """MONAI's 2D UNet on (B, C, T, T) images normalised with the training set's mean/std."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        res_units: int = 2,
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.net = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=tuple(int(c) for c in channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=int(res_units),
        )
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.multiple = unet_multiple(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:  # every level halves the size: pad to a multiple, crop the logits back
            return self.net(F.pad(x, (0, pw, 0, ph), mode="replicate"))[..., :h, :w]
        return self.net(x)


def unet_multiple(channels: Sequence[int]) -> int:
    """Input side length the U-Net needs to divide evenly: 2 ** (levels - 1)."""
    return 2 ** (len(channels) - 1)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
