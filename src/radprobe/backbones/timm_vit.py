"""timm vision transformers (ViT, EVA/DINOv3, SAM) behind the uniform :class:`Backbone` interface."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from radprobe.backbones.base import Backbone, BackboneInfo, BackboneOutput, Preprocess
from radprobe.errors import RadprobeError


def is_timm_vit(model: nn.Module) -> bool:
    """Token-based transformer with a patch embedding (the ViT path), as opposed to a CNN."""
    return (
        hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "forward_intermediates")
    )


def block_indices(
    name: str, depth: int, n_blocks: int, grid_layers: tuple[int, ...]
) -> tuple[list[int], dict[int, int]]:
    """Absolute indices of the last ``n_blocks`` blocks and of each requested grid layer."""
    if not 1 <= n_blocks <= depth:
        raise RadprobeError(f"n_blocks must be between 1 and {depth} for {name}, got {n_blocks}")
    grid: dict[int, int] = {}
    for layer in grid_layers:
        if not -depth <= layer < depth:
            raise RadprobeError(f"grid layer {layer} is out of range for {name} ({depth} blocks/stages)")
        grid[layer] = layer % depth
    return list(range(depth - n_blocks, depth)), grid


class TimmViT(Backbone):
    """A timm ViT-style model; features come from ``forward_intermediates`` with the final norm applied.

    cls is the final-normed class token of the last block; pooled is the mean of its final-normed
    patch tokens, never including class or register tokens. Models without a class token (SAM)
    report ``cls = pooled``. For SAM the "final norm" is its conv neck, so features are 256-d.
    ``final_norm=False`` reads every token as the blocks leave it (no final norm, no SAM neck).
    """

    def __init__(
        self, model: nn.Module, info: BackboneInfo, preprocess: Preprocess, final_norm: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.preprocess = preprocess
        self.final_norm = final_norm
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.has_cls = getattr(model, "cls_token", None) is not None
        params = inspect.signature(model.forward_intermediates).parameters
        self._prefix_kw = (
            {"return_prefix_tokens": True}
            if self.num_prefix_tokens and "return_prefix_tokens" in params
            else {}
        )
        if self.has_cls and not self._prefix_kw:
            self.has_cls = False  # the class token cannot be read back, so fall back to the patch mean
        # Average-pool ViTs keep their final norm in fc_norm and leave `norm` as Identity. Kept as
        # a flag, not a module attribute, so the norm is not registered (and saved) twice.
        norm = getattr(model, "norm", None)
        fc_norm = getattr(model, "fc_norm", None)
        self.use_fc_norm = final_norm and (
            isinstance(norm, nn.Identity) and fc_norm is not None and not isinstance(fc_norm, nn.Identity)
        )

    def _normed(
        self, spatial: torch.Tensor, prefix: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.use_fc_norm:
            return spatial, prefix
        norm = self.model.fc_norm
        spatial = norm(spatial.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return spatial, None if prefix is None else norm(prefix)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        last, grid_idx = block_indices(self.info.name, self.info.num_blocks, n_blocks, tuple(grid_layers))
        wanted = sorted(set(last) | set(grid_idx.values()))
        outs = self.model.forward_intermediates(
            x,
            indices=wanted,
            norm=self.final_norm,
            output_fmt="NCHW",
            intermediates_only=True,
            **self._prefix_kw,
        )
        maps: dict[int, torch.Tensor] = {}
        cls_tokens: dict[int, torch.Tensor] = {}
        for idx, out in zip(wanted, outs, strict=True):
            spatial, prefix = out if isinstance(out, tuple) else (out, None)
            spatial, prefix = self._normed(spatial, prefix)
            maps[idx] = spatial
            patch_mean = spatial.mean(dim=(2, 3))
            cls_tokens[idx] = prefix[:, 0] if self.has_cls and prefix is not None else patch_mean
        blocks = torch.stack(
            [torch.stack([cls_tokens[i], maps[i].mean(dim=(2, 3))], dim=1) for i in last], dim=1
        )
        return BackboneOutput(
            cls=blocks[:, -1, 0],
            pooled=blocks[:, -1, 1],
            blocks=blocks,
            grid={layer: maps[i] for layer, i in grid_idx.items()},
        )
