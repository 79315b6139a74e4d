"""Where a backbone's parameters sit in depth: embeddings, block i, or after the last block.

Layer-wise learning-rate decay (finetune) and partial unfreezing (partial) both need each parameter's
depth *level*: 0 for the embeddings (patch embedding, class/register tokens, position embedding),
``i + 1`` for block (CNN: stage) ``i``, and ``depth + 1`` for what follows the last block (final
norm). The underlying network is the backbone's ``model`` attribute (timm or HF module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from radprobe.errors import RadprobeError

# timm ViTs: blocks.N; HF ViT/DINOv2: encoder.layer.N; CLIP-style: resblocks.N / layers.N
_BLOCK_RE = re.compile(r"(?:^|\.)(?:blocks|layer|layers|resblocks)\.(\d+)\.")


@dataclass
class Anatomy:
    """The underlying module of a backbone and the depth level of each of its parameters."""

    model: nn.Module
    depth: int
    levels: dict[str, int]  # parameter name (relative to ``model``) -> level in 0..depth+1
    is_vit: bool

    def blocks_from(self, k: int) -> set[str]:
        """Names of the parameters of the last ``k`` blocks and of everything after them."""
        return {n for n, lvl in self.levels.items() if lvl > self.depth - k}


def inner_model(backbone: nn.Module) -> nn.Module:
    model = getattr(backbone, "model", None)
    if not isinstance(model, nn.Module):
        raise RadprobeError(
            f"backbone {backbone.info.name} does not expose its network as `.model`; "  # type: ignore[attr-defined]
            "trained protocols need it"
        )
    return model


def _cnn_levels(model: nn.Module) -> tuple[int, dict[str, int]] | None:
    info = getattr(model, "feature_info", None)
    if info is None or hasattr(model, "blocks"):
        return None
    try:
        stages = [f["module"] for f in info]
    except (TypeError, KeyError):
        return None
    depth = len(stages)
    levels: dict[str, int] = {}
    seen = False
    for name, _ in model.named_parameters():
        hit = [j for j, s in enumerate(stages) if name.startswith(s + ".")]
        if hit:
            levels[name] = hit[0] + 1
            seen = True
        else:
            # a stem before the first stage belongs to stage 0 (timm's first feature map follows it);
            # anything after the stages (a final norm) comes last
            levels[name] = depth + 1 if seen else 1
    return depth, levels


def anatomy(backbone: nn.Module) -> Anatomy:
    """Depth levels of a backbone's parameters (timm ViTs and CNNs, HF ViTs)."""
    model = inner_model(backbone)
    cnn = _cnn_levels(model)
    if cnn is not None:
        depth, levels = cnn
        return Anatomy(model, depth, levels, is_vit=False)
    names = [n for n, _ in model.named_parameters()]
    idx = {n: int(m.group(1)) for n in names if (m := _BLOCK_RE.search(n))}
    if not idx:
        raise RadprobeError(
            f"cannot find the transformer blocks of backbone {backbone.info.name}"  # type: ignore[attr-defined]
        )
    depth = max(idx.values()) + 1
    levels = {}
    seen = False
    for n in names:
        if n in idx:
            levels[n] = idx[n] + 1
            seen = True
        else:
            levels[n] = depth + 1 if seen else 0
    return Anatomy(model, depth, levels, is_vit=True)
