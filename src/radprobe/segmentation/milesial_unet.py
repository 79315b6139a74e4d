"""The U-Net of milesial/Pytorch-UNet, the from-scratch baseline of Baharoon et al.

Their ``unet.ipynb`` (cell 2, l.6) builds ``UNet(n_channels=3, n_classes)`` from
``dinov2/models/unet.py`` (a copy of milesial's model): ``bilinear=False`` (its default, l.81), so
each up step is a 2x2 stride-2 transposed conv; widths 64, 128, 256, 512, 1024 (l.87-97); every
conv a 3x3 without bias followed by BatchNorm and ReLU, twice per level (``DoubleConv``, l.9-26);
2x2 max-pooling down (l.29-40); the upsampled map padded to its skip's size and concatenated after
the skip (l.57-69); a 1x1 conv to the classes (l.72-78). 31,037,763 parameters for 3 classes.

``widths`` generalises the five levels (any number >= 2; the released layout when each doubles the
last), so tests and CPU runs can use a narrow copy of the same design.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PAPER_WIDTHS = (64, 128, 256, 512, 1024)


class DoubleConv(nn.Sequential):
    """(3x3 conv, no bias -> BatchNorm -> ReLU) x 2; ``mid`` channels in between (default: ``cout``)."""

    def __init__(self, cin: int, cout: int, mid: int | None = None) -> None:
        mid = mid or cout
        super().__init__(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool, then a :class:`DoubleConv`."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """Upsample ``x`` (transposed conv halving its channels, or bilinear), pad it to the skip's size,
    concatenate ``[skip, x]`` and apply a :class:`DoubleConv`."""

    def __init__(self, cin: int, skip: int, cout: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(cin + skip, cout, (cin + skip) // 2)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin // 2 + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])  # odd sides lose a row when pooled
        return self.conv(torch.cat([skip, x], dim=1))


class MilesialUNet(nn.Module):
    """milesial's U-Net on (B, in_channels, H, W) inputs (any H, W); returns (B, classes, H, W) logits.

    With ``bilinear`` the deepest level and every up step but the last are half as wide (the
    released ``factor``), so the bilinear model has about half the parameters."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = PAPER_WIDTHS,
        bilinear: bool = False,
    ) -> None:
        super().__init__()
        w = [int(c) for c in widths]
        if len(w) < 2:
            raise ValueError(f"milesial U-Net: {len(w)} widths; expected at least 2")
        factor = 2 if bilinear else 1
        enc = [*w[:-1], w[-1] // factor]  # each level's output channels
        self.inc = DoubleConv(in_channels, enc[0])
        self.downs = nn.ModuleList(Down(enc[i - 1], enc[i]) for i in range(1, len(w)))
        ups, c = [], enc[-1]
        for k in range(len(w) - 2, -1, -1):  # deep to shallow; the skip of level k has enc[k] channels
            out = w[k] // factor if k > 0 else w[0]
            ups.append(Up(c, enc[k], out, bilinear))
            c = out
        self.ups = nn.ModuleList(ups)
        self.outc = nn.Conv2d(w[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.outc(y)
