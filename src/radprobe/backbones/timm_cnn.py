"""timm convolutional networks behind the uniform :class:`Backbone` interface."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from radprobe.backbones.base import Backbone, BackboneInfo, BackboneOutput, Preprocess
from radprobe.backbones.timm_vit import block_indices
from radprobe.errors import RadprobeError


def feature_channels(model: nn.Module) -> list[int]:
    """Channels of each feature stage, from timm's feature_info."""
    info = getattr(model, "feature_info", None)
    if info is None:
        raise RadprobeError(f"timm model {type(model).__name__} exposes no feature stages (feature_info)")
    if hasattr(info, "channels"):  # FeatureInfo object of a features_only wrapper
        return list(info.channels())
    return [int(f["num_chs"]) for f in info]


def as_feature_extractor(model: nn.Module) -> nn.Module:
    """``model`` itself when it has ``forward_intermediates``, else timm's features_only wrapper of it."""
    if hasattr(model, "forward_intermediates"):
        return model
    from timm.models import FeatureListNet

    try:
        return FeatureListNet(model, out_indices=tuple(range(len(feature_channels(model)))))
    except Exception as exc:
        raise RadprobeError(
            f"timm model {type(model).__name__} supports neither forward_intermediates "
            f"nor features_only: {exc}"
        ) from None


class TimmCNN(Backbone):
    """A timm CNN; stage maps come from ``forward_intermediates`` (or a features_only wrapper).

    cls = pooled = global average pool of the last stage. ``blocks`` always has n = 1 (the pooled
    vector twice) whatever ``n_blocks`` asks, so multi-block protocols still run on CNNs; ``grid``
    is keyed by stage index (-1 is the last stage).
    """

    def __init__(self, model: nn.Module, info: BackboneInfo, preprocess: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.preprocess = preprocess
        self._intermediates = hasattr(model, "forward_intermediates")
        if self._intermediates:
            params = inspect.signature(model.forward_intermediates).parameters
            self._norm_kw = {"norm": True} if "norm" in params else {}

    def _stages(self, x: torch.Tensor, wanted: list[int]) -> list[torch.Tensor]:
        if self._intermediates:
            return self.model.forward_intermediates(
                x, indices=wanted, output_fmt="NCHW", intermediates_only=True, **self._norm_kw
            )
        feats = self.model(x)
        return [feats[i] for i in wanted]

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        if n_blocks < 1:
            raise RadprobeError(f"n_blocks must be at least 1, got {n_blocks}")
        depth = self.info.num_blocks
        last, grid_idx = block_indices(self.info.name, depth, 1, tuple(grid_layers))
        wanted = sorted(set(last) | set(grid_idx.values()))
        maps = dict(zip(wanted, self._stages(x, wanted), strict=True))
        pooled = maps[depth - 1].mean(dim=(2, 3))
        return BackboneOutput(
            cls=pooled,
            pooled=pooled,
            blocks=torch.stack([pooled, pooled], dim=1)[:, None],
            grid={layer: maps[i] for layer, i in grid_idx.items()},
        )
