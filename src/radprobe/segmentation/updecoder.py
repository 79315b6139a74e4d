"""seg-updecoder: Baharoon et al.'s "UNet decoder" on the patch grids of a ViT's last five blocks.

The released head (``eval/segmentation/utils.py:71-126``): the last block's grid (dim D) goes
through four up blocks, D -> D/2 -> D/4 -> D/8 -> classes. Each up block doubles the map with a 2x2
transposed conv, takes one earlier block's grid as a skip (3x3 conv + BN + ReLU at the patch grid,
then bilinear upsampling with ``align_corners=True`` to the doubled map), concatenates both and
ends in 3x3 conv + BN + ReLU. Skips go deepest first: blocks -2, -3, -4, -5. As released, the last
up block also ends in BN + ReLU, so the logits are non-negative; kept. The map (16x the patch grid)
is resized bicubically to the training size (``utils.py:124-125``).

Every grid must have the same width (a ViT); CNN stage maps are refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radprobe.segmentation import fused as fused_mod
from radprobe.segmentation.protocols import SegData, SegResult, _common, _grid_fetches, _run

N_LAYERS = 5


def updecoder_layers(num_blocks: int) -> list[int]:
    """The last five blocks, oldest first (``get_intermediate_layers(x, 5)``); a shallower model
    repeats its first block."""
    return [max(0, num_blocks - N_LAYERS + i) for i in range(N_LAYERS)]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UpBlock(nn.Module):
    """x2 transposed conv, a 3x3 conv + BN + ReLU skip from one block's grid, concat, 3x3 conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, dim: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.skip = _conv_bn_relu(dim, cout)
        self.conv = _conv_bn_relu(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        s = F.interpolate(self.skip(skip), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([x, s], 1))


class UpDecoder(nn.Module):
    """The paper's UNet decoder on five frozen grids (``layers`` oldest first, all of width ``dim``)."""

    upsample = "bicubic"  # the released head resizes its 16x map bicubically (utils.py:125)
    fuse_on = "cuda"  # grouped convs train K decoders slower than K separate ones on a CPU

    def __init__(self, layers: Sequence[int], dim: int, num_classes: int) -> None:
        super().__init__()
        if len(layers) != N_LAYERS:
            raise ValueError(f"the up decoder reads {N_LAYERS} grids, got layers {list(layers)}")
        if dim < 8:
            raise ValueError(f"the up decoder halves the width three times; dim {dim} is too small")
        self._layers = list(layers)
        widths = [dim, dim // 2, dim // 4, dim // 8, num_classes]
        self.ups = nn.ModuleList(UpBlock(widths[i], widths[i + 1], dim) for i in range(4))

    @property
    def layers(self) -> list[int]:
        return sorted(set(self._layers))

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        x = feats[self._layers[-1]]
        for up, layer in zip(self.ups, reversed(self._layers[:-1]), strict=True):
            x = up(x, feats[layer])
        return x

    @staticmethod
    def fused_forward(heads: Sequence[UpDecoder], feats: dict[int, torch.Tensor]) -> torch.Tensor:
        """K decoders as one: shared inputs meet convs whose outputs are the K heads' stacked; each
        head's own maps meet grouped convs (groups=K). BatchNorm uses batch statistics only (the
        heads' running statistics are set afterwards from the training rows, see ``train_fused``)."""
        layers = heads[0]._layers
        x = feats[layers[-1]]
        for j, layer in enumerate(reversed(layers[:-1])):
            x = _fused_block([h.ups[j] for h in heads], x, feats[layer], shared=j == 0)
        return x


def _bn_relu(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """K heads' BatchNorm (batch statistics, as in training) + ReLU on their stacked channels; each
    module's running statistics move as its own forward would move them."""
    w, b = torch.cat([m.weight for m in bns]), torch.cat([m.bias for m in bns])
    mean = torch.cat([m.running_mean for m in bns])  # type: ignore[misc]
    var = torch.cat([m.running_var for m in bns])  # type: ignore[misc]
    out = F.batch_norm(x, mean, var, w, b, training=True, momentum=bns[0].momentum, eps=bns[0].eps)
    with torch.no_grad():
        sizes = [m.num_features for m in bns]
        for m, mu, v in zip(bns, mean.split(sizes), var.split(sizes), strict=True):
            m.running_mean.copy_(mu)  # type: ignore[union-attr]
            m.running_var.copy_(v)  # type: ignore[union-attr]
            m.num_batches_tracked += 1  # type: ignore[operator]
    return F.relu(out)


def _fused_block(
    blocks: Sequence[UpBlock], x: torch.Tensor, skip: torch.Tensor, shared: bool
) -> torch.Tensor:
    K = len(blocks)
    up_w = torch.cat([b.up.weight for b in blocks], 1 if shared else 0)  # (cin, cout / groups, 2, 2)
    up_b = torch.cat([b.up.bias for b in blocks])
    x = F.conv_transpose2d(x, up_w, up_b, stride=2, groups=1 if shared else K)
    sw = torch.cat([b.skip[0].weight for b in blocks])
    sb = torch.cat([b.skip[0].bias for b in blocks])
    s = _bn_relu(F.conv2d(skip, sw, sb, padding=1), [b.skip[1] for b in blocks])
    s = F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=True)
    B, _, H, W = x.shape
    both = torch.cat([x.view(B, K, -1, H, W), s.view(B, K, -1, H, W)], 2).reshape(B, -1, H, W)
    cw = torch.cat([b.conv[0].weight for b in blocks])
    cb = torch.cat([b.conv[0].bias for b in blocks])
    return _bn_relu(F.conv2d(both, cw, cb, padding=1, groups=K), [b.conv[1] for b in blocks])


def seg_updecoder(
    data: SegData,
    lrs: Sequence[float] = (3e-4, 1e-3, 3e-3),
    epochs: int = 30,
    min_steps: int = 200,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    preset: str | None = None,
    refit: bool = False,
    augment: str = "none",
    sampler: str = "epoch",
    shots: int | Sequence[int] | None = None,
    repeats: int = 3,
    save_predictions: bool = False,
    overlays: int = 3,
) -> SegResult:
    """The paper's UNet decoder on the last five blocks' grids. Default: radprobe's training (AdamW,
    DiceCE, one model per lr); ``preset="paper"``: the released training, every lr from the same start
    on the same batches (fused on CUDA, one after another on a CPU; see ``fused.paper_sweep``)."""
    opts = dict(locals())
    opts.pop("data")
    info = data.info
    if info is None or info.patch_size is None:
        raise RuntimeError("seg-updecoder needs a frozen ViT backbone")
    layers = updecoder_layers(info.num_blocks)
    dims = {int(data.train.features[la].shape[1]) for la in layers}
    if len(dims) != 1:
        raise RuntimeError(f"seg-updecoder needs grids of one width; layers {layers} have {sorted(dims)}")
    dim, C = dims.pop(), len(data.classes)
    hparams: dict[str, Any] = {**_common(opts), "layers": layers, "head": "paper UNet decoder"}
    hparams.update(fused_mod.paper_hparams(opts, "paper UNet decoder"))
    sweep = fused_mod.paper_sweep if preset == "paper" else None
    return _run(
        "seg-updecoder",
        data,
        lambda: UpDecoder(layers, dim, C),
        _grid_fetches(data, sorted(set(layers))),
        opts,
        hparams,
        sweep=sweep,
    )
