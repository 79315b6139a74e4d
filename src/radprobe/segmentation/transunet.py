"""TransUNet (Chen et al. 2021, arXiv:2102.04306), 2D, for training from scratch.

No maintained implementation ships with radprobe's dependencies (MONAI has UNETR and SwinUNETR,
which tokenise the image itself; timm has the R50+ViT hybrid encoder but no decoder, and its ResNet-v2
units differ from TransUNet's), so the model is assembled here from its published parts, in two
layouts that share the token grid and the decoder:

* ``"radprobe"`` (the default, CPU-sized): a ResNet-style CNN of BatchNorm basic blocks (2 per stage)
  and timm ViT blocks without dropout;
* ``"paper"``: Baharoon et al.'s baseline (``transunet.ipynb``: ``CONFIGS_ViT_seg["R50-ViT-L_16"]``,
  ``n_skip = 3``, ``is_pretrain = False``; ``dinov2/models/transunet.py``, TransUNet's released
  ``vit_seg_modeling*.py``) at the size the options give, the released one being
  :data:`PAPER_SIZE`: a ResNet-50 v2 hybrid root (weight-standardised convs, GroupNorm, units
  (3, 4, 9), the 1/4 skip zero-padded as released) and pre-norm ViT blocks (LayerNorm eps 1e-6,
  attention dropout 0, MLP and embedding dropout 0.1, the MLP's xavier init, zero position
  embeddings).

Both give skip features at 1/2, 1/4 and 1/8 and a 1/16 map whose pixels are the ViT's tokens (patch
size 1 on the CNN map, i.e. 16 pixels), then the cascaded upsampler (CUP): a 3x3 conv + BN + ReLU on
the token grid to twice the first decoder width (512 as released), four blocks of 2x bilinear
upsampling, the skip at that scale concatenated (none at full resolution: ``n_skip = 3``) and two
3x3 conv + BN + ReLU, and a 3x3 segmentation head.
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
    "layout": ("'radprobe' (BatchNorm basic-block CNN) or 'paper' (the released R50-ViT-L_16)", None),
}
LAYOUTS = ("radprobe", "paper")
# the released R50-ViT-L_16 in these options (CONFIGS["R50-ViT-L_16"]: ResNet width 64 -> 256, 512,
# 1024 after the units; hidden 1024, 24 layers, 16 heads, mlp 4096; decoder (256, 128, 64, 16))
PAPER_SIZE: dict[str, Any] = {
    "widths": [64, 256, 512, 1024],
    "vit_dim": 1024,
    "vit_depth": 24,
    "vit_heads": 16,
    "decoder_channels": [256, 128, 64, 16],
}
PAPER_UNITS = (3, 4, 9)  # bottleneck units per ResNet stage (config.resnet.num_layers)
PAPER_DROPOUT = 0.1  # config.transformer.dropout_rate; attention_dropout_rate is 0
STD_EPS = 1e-5  # the released StdConv2d: w - mean over sqrt(var + 1e-5), biased var per out channel
GN_GROUPS = 32
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


def std_conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    """The released StdConv2d (bias-free, padding k // 2): timm's with the released eps, the same
    standardisation (timm computes it with ``F.batch_norm``: biased variance per output channel)."""
    from timm.layers import StdConv2d

    return StdConv2d(cin, cout, k, stride, padding=k // 2, bias=False, eps=STD_EPS)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, c, eps=1e-6)


class Bottleneck(nn.Module):
    """The released ``PreActBottleneck``, which despite its name is post-activation: 1x1, 3x3 (with the
    stride), 1x1 StdConvs each followed by GroupNorm (ReLU after the first two), the sum with the
    shortcut then ReLU. The projection shortcut is a 1x1 StdConv and a GroupNorm with one group per
    channel at PyTorch's eps (``nn.GroupNorm(cout, cout)``, as released)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = cout // 4
        self.conv1, self.gn1 = std_conv(cin, mid, 1), _gn(mid)
        self.conv2, self.gn2 = std_conv(mid, mid, 3, stride), _gn(mid)
        self.conv3, self.gn3 = std_conv(mid, cout, 1), _gn(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(std_conv(cin, cout, 1, stride), nn.GroupNorm(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.short(x) + self.gn3(self.conv3(y)))


class ResNetV2Encoder(nn.Module):
    """The released hybrid root (``ResNetV2`` of R50-ViT-L_16): 7x7 stride-2 StdConv + GroupNorm + ReLU
    (the 1/2 skip), 3x3 stride-2 max-pool without padding, then stages of (3, 4, 9) bottlenecks, the
    second and third starting with stride 2. An H = 16k input leaves the pool 4k - 1 wide, so the 1/4
    skip is zero-padded at the bottom and right to H / 4, as released."""

    def __init__(self, in_channels: int, widths: Sequence[int], units: Sequence[int] = PAPER_UNITS) -> None:
        super().__init__()
        w0, w1, w2, w3 = (int(w) for w in widths)
        self.root = nn.Sequential(std_conv(in_channels, w0, 7, 2), _gn(w0), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 0)

        def stage(cin: int, cout: int, stride: int, n: int) -> nn.Sequential:
            return nn.Sequential(
                Bottleneck(cin, cout, stride), *(Bottleneck(cout, cout) for _ in range(n - 1))
            )

        self.stages = nn.ModuleList(
            [
                stage(c, o, s, n)
                for c, o, s, n in zip((w0, w1, w2), (w1, w2, w3), (1, 2, 2), units, strict=True)
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        h, w = x.shape[-2:]
        half = self.root(x)
        quarter = self.stages[0](self.pool(half))
        eighth = self.stages[1](quarter)
        pad = (0, w // 4 - quarter.shape[-1], 0, h // 4 - quarter.shape[-2])
        return [half, F.pad(quarter, pad), eighth], self.stages[2](eighth)


class PaperBlock(nn.Module):
    """The released pre-norm ViT block: LayerNorm (eps 1e-6), multi-head attention (query, key and
    value as one linear of the same fan-in; softmax(q k^T / sqrt(d)) v, no dropout), residual;
    LayerNorm, MLP (GELU, dropout after the GELU and after the second linear), residual. The MLP's
    weights are xavier-uniform and its biases N(0, 1e-6), as the released ``Mlp._init_weights``; the
    attention keeps PyTorch's linear init, as released."""

    def __init__(self, dim: int, heads: int, dropout: float = PAPER_DROPOUT) -> None:
        super().__init__()
        from timm.layers import Mlp

        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=nn.GELU, drop=dropout)
        for fc in (self.mlp.fc1, self.mlp.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D))
        return x + self.mlp(self.norm2(x))


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
    returns (B, num_classes, H, W) logits. Sides that are not a multiple of 16 are padded and cropped.
    ``layout="paper"``: the released R50-ViT-L_16 parts (module docstring) at the size given."""

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
        layout: str = "radprobe",
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
        widths, dec = [int(w) for w in widths], [int(c) for c in decoder_channels]
        paper = layout == "paper"
        self.layout = layout
        self.cnn: nn.Module = (
            ResNetV2Encoder(in_channels, widths) if paper else CNNEncoder(in_channels, widths)
        )
        self.grid = max(1, -(-int(img_size) // STRIDE))
        self.embed = nn.Conv2d(widths[3], vit_dim, 1)  # patch size 1 on the 1/16 map
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, vit_dim))  # released: zeros
        if not paper:
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop: nn.Module = nn.Dropout(PAPER_DROPOUT) if paper else nn.Identity()
        self.blocks = nn.Sequential(*(self._block(paper, vit_dim, vit_heads) for _ in range(vit_depth)))
        self.norm = nn.LayerNorm(vit_dim, eps=1e-6) if paper else nn.LayerNorm(vit_dim)
        # TransUNet's DecoderCup: a 3x3 conv to head channels (512 for decoder (256, 128, 64, 16))
        self.conv_more = _conv_bn(vit_dim, 2 * dec[0])
        skips = [widths[2], widths[1], widths[0], 0]  # 1/8, 1/4, 1/2, full resolution
        ins = [2 * dec[0], *dec[:-1]]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, dec, strict=True))
        self.head = nn.Conv2d(dec[-1], num_classes, 3, padding=1)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    @staticmethod
    def _block(paper: bool, dim: int, heads: int) -> nn.Module:
        from timm.models.vision_transformer import Block

        return PaperBlock(dim, heads) if paper else Block(dim, heads, 4.0, qkv_bias=True)

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
        tokens = self.norm(self.blocks(self.drop(t.flatten(2).transpose(1, 2) + self._pos(gh, gw))))
        y = self.conv_more(tokens.transpose(1, 2).reshape(t.shape[0], -1, gh, gw))
        for block, skip in zip(self.decoder, [*reversed(skips), None], strict=True):
            y = block(y, skip)
        return self.head(y)[..., :h, :w]


def check_option(proto: str, key: str, value: Any, opts: dict[str, Any]) -> Any:
    """One TransUNet option checked (``opts``: every option of the protocol, for vit_dim / vit_heads
    and the widths the paper layout's GroupNorms can divide)."""
    from radprobe.errors import OptionError

    what, n = OPTIONS[key]
    fail = OptionError("--set", f"{proto}.{key}={value!r}: expected {what}")
    if key == "layout":
        if value not in LAYOUTS:
            raise fail
        _check_paper_widths(proto, value, opts.get("widths"))
        return value
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
    if key == "widths":
        _check_paper_widths(proto, opts.get("layout"), out)
    return out if n is not None else out[0]


def _check_paper_widths(proto: str, layout: Any, widths: Any) -> None:
    """The paper layout's GroupNorms have 32 groups: the root's width and each stage's bottleneck
    width (a quarter of its output) must be multiples of 32."""
    from radprobe.errors import OptionError

    if layout != "paper" or not isinstance(widths, list | tuple) or len(widths) != 4:
        return
    try:
        w = [int(x) for x in widths]
    except (TypeError, ValueError):
        return  # the widths' own check names them
    if w[0] % GN_GROUPS or any(x % (4 * GN_GROUPS) for x in w[1:]):
        raise OptionError(
            "--set",
            f"{proto}.widths={list(widths)!r}: layout='paper' needs widths[0] a multiple of {GN_GROUPS} "
            f"and the others of {4 * GN_GROUPS} (GroupNorm(32) on each bottleneck's quarter width)",
        )
