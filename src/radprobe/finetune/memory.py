"""Exact bytes a training forward pass leaves held for backward (no allocator, so CPU works too).

Peak RSS is noisy and CUDA's peak mixes in the allocator's caching; this counts, storage by
storage, what the forward pass made and is still alive once it returns: the tensors autograd
saved, the inputs gradient checkpointing keeps to recompute from, and the casts autocast made.
Weights, the input batch and the output are left out.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _MadeTensors(TorchDispatchMode):
    """Weak references to every tensor an op returns (weak: counting must not keep them alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref[torch.Tensor]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.refs.extend(weakref.ref(t) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
        return out


def held_for_backward(
    model: torch.nn.Module,
    x: torch.Tensor,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> int:
    """Bytes that one forward of ``model`` on ``x`` (under ``amp()``) holds until backward."""
    made = _MadeTensors()
    with amp(), made:
        out = model(x)
    outside = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), x)}
    outside |= {t.untyped_storage().data_ptr() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)}
    held: dict[int, int] = {}
    for ref in made.refs:
        t = ref()
        if t is not None:
            s = t.untyped_storage()
            if s.data_ptr() not in outside:
                held[s.data_ptr()] = s.nbytes()
    del out
    return sum(held.values())
