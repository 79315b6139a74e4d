"""The backbone contract: preprocessing that travels with the model, and uniform feature outputs.

Nothing outside ``radprobe.backbones`` knows whether a model came from timm, HF or open_clip: every
backbone is a :class:`Backbone` whose ``forward`` returns a :class:`BackboneOutput`.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """Turn a dataset image (float32 in [0, 1], HxW or HxWxC) into a normalised (3, R, R) tensor.

    The image is resized to ``resolution`` (a multiple of ``patch_size`` for ViTs) without cropping —
    cropping can cut away the finding in a radiograph — grayscale is repeated to 3 channels, and
    the model's own mean/std are applied. ``minmax`` stretches each channel of the resized image to
    [0, 1] by its own minimum and maximum (the ``RescaleImage`` step of Baharoon et al.); a constant
    channel becomes 0. ``crop_from`` resizes to ``crop_from`` x ``crop_from`` first and then takes
    the central ``resolution`` x ``resolution`` (torchvision's ``Resize`` + ``CenterCrop``, the eval
    transform of DINOv2's kNN). ``antialias=False`` and ``clamp=False`` resize as torchvision 0.15
    resized float tensors (Baharoon et al.'s datasets hand their transforms tensors): no low-pass
    filter before downsampling, and bicubic overshoot outside [0, 1] kept.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resolution: int = 224
    patch_size: int | None = None
    interpolation: str = "bicubic"
    minmax: bool = False
    crop_from: int | None = None
    antialias: bool = True  # False: torchvision's tensor resize before 0.17 (no low-pass filter)
    clamp: bool = True  # False: bicubic overshoot kept, as a float tensor resize keeps it

    def __post_init__(self) -> None:
        if self.patch_size and self.resolution % self.patch_size:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of patch size {self.patch_size}"
            )
        if self.crop_from is not None and self.crop_from < self.resolution:
            raise ValueError(f"crop_from {self.crop_from} is smaller than the resolution {self.resolution}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, part of the feature-cache key (``minmax`` and ``crop_from`` only when set, so
        keys made before they existed still match)."""
        d = asdict(self)
        if not self.minmax:
            del d["minmax"]
        if self.crop_from is None:
            del d["crop_from"]
        for flag in ("antialias", "clamp"):  # only when off, so earlier keys still match
            if d[flag]:
                del d[flag]
        return d

    def geometry_dict(self) -> dict[str, Any]:
        """What decides the pixels before normalisation (all but mean/std, and the patch size, which
        only checks the resolution): the key of a decoded-image cache entry, shared by backbones
        that differ only in normalisation."""
        d = self.to_dict()
        del d["mean"], d["std"], d["patch_size"]
        return d

    def __call__(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.normalise(self.geometry(image))

    def geometry(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The resized, clamped (and min-max stretched) float32 (1 or 3, R, R) image, not yet normalised."""
        x = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
        if x.ndim == 2:
            x = x[None]
        elif x.ndim == 3:
            x = x.permute(2, 0, 1)  # HWC -> CHW
        else:
            raise ValueError(f"expected an HxW or HxWxC image, got shape {tuple(x.shape)}")
        c = x.shape[0]
        if c == 4:
            x = x[:3]
        elif c not in (1, 3):
            raise ValueError(f"expected 1, 3 or 4 channels, got {c}")
        # grayscale stays one channel through resize and clamp (a third of the work, the same
        # numbers); the normalisation broadcasts it to three
        size = self.crop_from or self.resolution
        if tuple(x.shape[1:]) != (size, size):
            smooth = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(
                x[None],
                size=(size, size),
                mode=self.interpolation,
                align_corners=False if smooth else None,  # torch refuses it for "nearest"
                antialias=smooth and self.antialias,
            )[0]
        if size != self.resolution:  # torchvision's CenterCrop offsets
            top = round((size - self.resolution) / 2.0)
            x = x[:, top : top + self.resolution, top : top + self.resolution]
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        return self.stretch(x) if self.minmax else x

    @staticmethod
    def stretch(x: torch.Tensor) -> torch.Tensor:
        """Each channel of each image (the last two axes) stretched to [0, 1] by its own minimum and
        maximum; a constant channel becomes 0 (``minmax``)."""
        lo = x.amin(dim=(-2, -1), keepdim=True)
        span = x.amax(dim=(-2, -1), keepdim=True) - lo
        return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), 0.0)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The model's mean/std on a :meth:`geometry` image (C, R, R) or batch (B, C, R, R), on its
        device: (1 or 3 channels) -> 3 channels."""
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone is, for listings, result rows and cache keys."""

    name: str  # registry name, e.g. "dinov2-s" or "timm:resnet50"
    family: str  # e.g. "dinov2", "clip", "mae", "cnn", "test"
    arch: str  # underlying architecture id, e.g. timm model name
    source: str  # where weights come from: "timm:<tag>", "hf:<repo>", "file:<path>", "random-init"
    embed_dim: int  # dimension of cls / pooled
    patch_size: int | None  # None for CNNs
    native_resolution: int
    params: int
    num_blocks: int  # transformer blocks (or CNN stages)
    weights_digest: str = "random-init"  # sha256 of the checkpoint file, or the hub tag
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackboneOutput:
    """Uniform features for one batch.

    cls:    (B, D) class token after the final norm (CNNs: global average pool).
    pooled: (B, D) mean of the final-normed patch tokens (CNNs: same as ``cls``).
    blocks: (B, n, 2, D) the last n blocks' (cls, patch mean), each after the final norm, oldest
            first — the DINOv2 linear protocol's input (CNNs: n = 1, the pooled vector twice).
    grid:   {layer: (B, D_l, h, w)} patch-token maps of the chosen layers (CNNs: stage maps).
    """

    cls: torch.Tensor
    pooled: torch.Tensor
    blocks: torch.Tensor
    grid: dict[int, torch.Tensor] = field(default_factory=dict)


class Backbone(nn.Module):
    """A frozen-or-trainable feature extractor with its preprocessing attached."""

    info: BackboneInfo
    preprocess: Preprocess

    def with_preprocess(self, preprocess: Preprocess) -> Backbone:
        """This backbone (the same modules and weights, not a copy of them) under other preprocessing."""
        if preprocess == self.preprocess:
            return self
        other = copy.copy(self)  # a shallow copy shares the parameters
        other.preprocess = preprocess
        return other

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        """Features of a preprocessed batch ``x`` (B, 3, R, R).

        ``grid_layers`` indexes blocks like a Python list (-1 is the last block).
        """
        raise NotImplementedError
