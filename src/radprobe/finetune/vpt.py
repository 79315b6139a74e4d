"""Visual prompt tuning (Jia et al. 2022) for timm ViTs.

Learnable prompt tokens are inserted between the prefix tokens (class, registers) and the patch
tokens. *Shallow*: one set before the first block, carried through every block. *Deep*: a new set
before every block, replacing the previous block's prompt outputs. Prompts never reach the outputs:
features are read exactly like :class:`~radprobe.backbones.timm_vit.TimmViT` reads them (final norm,
class token, patch mean without prefix or prompt tokens).

The forward pass is written out here rather than hooked into ``forward_intermediates`` because the
token count changes between embedding and blocks, which that method's reshaping does not allow.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from radprobe.backbones.base import BackboneOutput
from radprobe.backbones.timm_vit import TimmViT, block_indices, is_timm_vit


def supports_vpt(backbone: nn.Module) -> bool:
    return isinstance(backbone, TimmViT) and is_timm_vit(backbone.model)


class PromptedViT(nn.Module):
    """A frozen timm ViT backbone with learnable prompt tokens; same outputs as the backbone's forward."""

    def __init__(self, backbone: TimmViT, tokens: int, deep: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.info = backbone.info
        self.preprocess = backbone.preprocess
        self.tokens = tokens
        self.deep = deep
        model = backbone.model
        depth = len(model.blocks)
        dim = int(model.embed_dim)
        self.prompts = nn.Parameter(torch.empty(depth if deep else 1, tokens, dim))
        # VPT's init: uniform with the Xavier bound of a patch-embedding-sized fan-in
        patch = backbone.info.patch_size or 16
        bound = math.sqrt(6.0 / float(3 * patch * patch + dim))
        nn.init.uniform_(self.prompts, -bound, bound)
        self.dropout = nn.Dropout(dropout)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward(
        self, x: torch.Tensor, n_blocks: int = 1, grid_layers: tuple[int, ...] = ()
    ) -> BackboneOutput:
        bb = self.backbone
        m = bb.model
        last, grid_idx = block_indices(self.info.name, len(m.blocks), n_blocks, tuple(grid_layers))
        wanted = set(last) | set(grid_idx.values())
        b, _, height, width = x.shape
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        p, k = bb.num_prefix_tokens, self.tokens
        taken: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(m.blocks):
            if i == 0 or self.deep:
                prompt = self.dropout(self.prompts[i if self.deep else 0]).to(x.dtype).expand(b, -1, -1)
                rest = x[:, p:] if i == 0 else x[:, p + k :]
                x = torch.cat([x[:, :p], prompt, rest], dim=1)
            x = self._run(blk, x)
            if i in wanted:
                y = m.norm(x) if bb.final_norm else x
                prefix, patches = y[:, :p], y[:, p + k :]  # prompt outputs are dropped
                if bb.use_fc_norm:
                    prefix, patches = m.fc_norm(prefix), m.fc_norm(patches)
                taken[i] = torch.cat([prefix, patches], dim=1)
        h, w = m.patch_embed.dynamic_feat_size((height, width))
        cls_tokens, means, grids = {}, {}, {}
        for i, y in taken.items():
            patches = y[:, p:]
            means[i] = patches.mean(dim=1)
            cls_tokens[i] = y[:, 0] if bb.has_cls else means[i]
            grids[i] = patches.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        blocks = torch.stack([torch.stack([cls_tokens[i], means[i]], dim=1) for i in last], dim=1)
        return BackboneOutput(
            cls=blocks[:, -1, 0],
            pooled=blocks[:, -1, 1],
            blocks=blocks,
            grid={layer: grids[i] for layer, i in grid_idx.items()},
        )
