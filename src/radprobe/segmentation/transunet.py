"""TransUNet (Chen et al. 2021, arXiv:2102.04306), 2D, for training from scratch.

No maintained implementation ships with radprobe's dependencies (MONAI has UNETR and SwinUNETR,
which tokenise the image itself; timm has the R50+ViT hybrid encoder but no decoder), so the model is
assembled here from its published parts:

* a ResNet-style CNN (BatchNorm basic blocks; the paper's R50 uses GroupNorm bottlenecks) giving
  skip features at 1/2, 1/4 and 1/8 and a 1/16 feature map;
* a ViT encoder (timm ``Block``\\ s, learned position embeddings) over the 1/16 map as patch tokens
  (patch size 1 on the CNN map, i.e. 16 pixels);
* the cascaded upsampler (CUP): a 3x3 conv on the token grid to twice the first decoder width,
  then four blocks of 2x bilinear upsampling, concatenation of the skip at that scale (none at full
  resolution) and two 3x3 conv + BN + ReLU, and a 3x3 segmentation head.

The defaults are small enough to train on a CPU. Baharoon et al.'s TransUNet baseline (their
``transunet.ipynb``: ``R50-ViT-L_16``, ``is_pretrain = False``) has the channel layout of
``widths=[64,256,512,1024], vit_dim=1024, vit_depth=24, vit_heads=16,
decoder_channels=[256,128,64,16]``; its CNN is a ResNet-50 v2 (GroupNorm, weight-standardised
bottlenecks, 3/4/9 units) where this one has two basic blocks per stage, and its ViT has dropout 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TRANSUNET_NAME = "radprobe:transunet"  # the "backbone" of seg-transunet rows: nothing pretrained

# option -> (what it takes, the number of values for lists or None for an int)
OPTIONS: dict[str, tuple[str, int | None]] = {
    "widths": ("4 positive channel counts (1/2, 1/4, 1/8, 1/16), e.g. [16,32,64,128]", 4),
    "decoder_channels": ("4 positive channel counts (1/8 ... full resolution), e.g. [128,64,32,16]", 4),
    "vit_dim": ("a positive token width, divisible by vit_heads", None),
    "vit_depth": ("a positive number of transformer blocks", None),
    "vit_heads": ("a positive number of attention heads dividing vit_dim", None),
}
STRIDE = 16  # the token grid's stride: input sides are padded to a multiple of it


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


class CNNEncoder(nn.Module):
    """Root (7x7, stride 2) -> max-pool -> three stages; returns [1/2, 1/4, 1/8] skips and the 1/16 map."""

    def __init__(self, in_channels: int, widths: Sequence[int], blocks: int = 2) -> None:
        super().__init__()
        w0, w1, w2, w3 = (int(w) for w in widths)
        self.root = _conv_bn(in_channels, w0, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                BasicBlock(cin, cout, stride), *(BasicBlock(cout, cout) for _ in range(blocks - 1))
            )

        self.stages = nn.ModuleList([stage(w0, w1, 1), stage(w1, w2, 2), stage(w2, w3, 2)])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        half = self.root(x)
        quarter = self.stages[0](self.pool(half))
        eighth = self.stages[1](quarter)
        return [half, quarter, eighth], self.stages[2](eighth)


class DecoderBlock(nn.Module):
    """2x bilinear upsampling, the skip concatenated, two 3x3 conv + BN + ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(_conv_bn(cin + skip, cout), _conv_bn(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        # nn.UpsamplingBilinear2d, as in TransUNet: align_corners=True
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.convs(x if skip is None else torch.cat([x, skip], 1))


class TransUNet(nn.Module):
    """TransUNet on (B, C, H, W) images in [0, 1], normalised with the training set's mean/std;
    returns (B, num_classes, H, W) logits. Sides that are not a multiple of 16 are padded and cropped."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        img_size: int,
        widths: Sequence[int] = (16, 32, 64, 128),
        vit_dim: int = 192,
        vit_depth: int = 4,
        vit_heads: int = 3,
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        mean: float = 0.0,
        std: float = 1.0,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        widths, dec = [int(w) for w in widths], [int(c) for c in decoder_channels]
        self.cnn = CNNEncoder(in_channels, widths)
        self.grid = max(1, -(-int(img_size) // STRIDE))
        self.embed = nn.Conv2d(widths[3], vit_dim, 1)  # patch size 1 on the 1/16 map
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, vit_dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(
            *(Block(vit_dim, vit_heads, 4.0, qkv_bias=True) for _ in range(vit_depth))
        )
        self.norm = nn.LayerNorm(vit_dim)
        # TransUNet's DecoderCup: a 3x3 conv to head channels (512 for decoder (256, 128, 64, 16))
        self.conv_more = _conv_bn(vit_dim, 2 * dec[0])
        skips = [widths[2], widths[1], widths[0], 0]  # 1/8, 1/4, 1/2, full resolution
        ins = [2 * dec[0], *dec[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, dec, strict=True))
        self.head = nn.Conv2d(dec[-1], num_classes, 3, padding=1)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def _pos(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an h x w token grid (interpolated from the training grid)."""
        if h == w == self.grid:
            return self.pos
        g = self.pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)
        return g.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips, deep = self.cnn(x)
        t = self.embed(deep)
        gh, gw = t.shape[-2:]
        tokens = self.norm(self.blocks(t.flatten(2).transpose(1, 2) + self._pos(gh, gw)))
        y = self.conv_more(tokens.transpose(1, 2).reshape(t.shape[0], -1, gh, gw))
        for block, skip in zip(self.decoder, [*reversed(skips), None], strict=True):
            y = block(y, skip)
        return self.head(y)[..., :h, :w]


def check_option(proto: str, key: str, value: Any, opts: dict[str, Any]) -> Any:
    """One TransUNet option checked (``opts``: every option of the protocol, for vit_dim / vit_heads)."""
    from radprobe.errors import OptionError

    what, n = OPTIONS[key]
    fail = OptionError("--set", f"{proto}.{key}={value!r}: expected {what}")
    values = value if isinstance(value, list | tuple) else [value]
    if (n is None) != (not isinstance(value, list | tuple)) or (n is not None and len(values) != n):
        raise fail
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < 1:
            raise fail
        out.append(int(v))
    if key in ("vit_dim", "vit_heads"):
        dim, heads = opts.get("vit_dim"), opts.get("vit_heads")
        if isinstance(dim, int) and isinstance(heads, int) and heads > 0 and dim % heads:
            raise fail
    return out if n is not None else out[0]
