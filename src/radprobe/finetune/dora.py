"""DoRA with its magnitude step recomputed in backward: peft's numbers, less saved for backward.

peft's DoRA adds ``(m / n - 1) * base + (m / n) * s * lora`` to each adapted layer's output, where
``base`` is the layer's output less its bias and ``lora = B(A(x))``. The magnitude's gradient needs
both output-sized tensors, so autograd keeps them (``base`` in fp32 once the fp32 bias is taken
off a bf16 output): two tensors as large as the layer's output per adapted layer, on top of LoRA's.
Recomputing that step in backward keeps only its inputs, ``x`` (LoRA's A needs it anyway) and the
layer's output (with dropout > 0 peft recomputes ``base`` itself, so not even that); the extra work
is the rank-r matmuls, the weight norm of ``W + s B A`` and a few elementwise ops. The forward and
backward run the same operations on the same values, so losses and gradients are unchanged.

Imported only when a DoRA model is built (peft is optional).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.dora import DoraLinearLayer
from torch import nn
from torch.utils.checkpoint import checkpoint


class RecomputedDoraLinearLayer(DoraLinearLayer):
    """peft's DoRA magnitude layer whose training forward is checkpointed (recomputed in backward)."""

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x, **kwargs)
        # no random ops inside (peft applies LoRA dropout before this step): no RNG state to replay
        return checkpoint(super().forward, x, use_reentrant=False, preserve_rng_state=False, **kwargs)


def recompute_dora(model: nn.Module) -> int:
    """Make every DoRA magnitude layer of ``model`` recompute in backward; returns how many.

    The class swap keeps the parameters, buffers and state-dict names as they are.
    """
    n = 0
    for m in model.modules():
        if type(m) is DoraLinearLayer:
            m.__class__ = RecomputedDoraLinearLayer
            n += 1
    return n
