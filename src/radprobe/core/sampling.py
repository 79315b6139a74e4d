"""Seeded draws and DINOv2's endless stream of permutations, shared by every training loop.

Baharoon et al. (like DINOv2's eval code) train on an ``InfiniteSampler``: full batches cut from one
endless stream of seeded permutations, ``ceil(n / batch)`` batches an "epoch", so a batch may run on
from one pass over the data into the next. :func:`stream_order` gives an epoch's share of such a
stream; each entry is ``pass * n + row``, so a loop can draw a row's augmentation once per pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from radprobe.utils import digest


def derived_seed(*parts: object) -> int:
    """A 60-bit seed from any JSON-able parts (e.g. seed, epoch, index)."""
    return int(digest(list(parts), 15), 16)


def stream_batches(n: int, batch_size: int) -> int:
    """Batches an epoch of stream sampling: ``ceil(n / batch)``, as DINOv2's eval code counts them."""
    return max(1, math.ceil(n / batch_size))


def stream_order(n: int, batch_size: int, epoch: int, seed: int) -> list[int]:
    """Epoch ``epoch``'s share of one endless stream of permutations of ``n`` rows (DINOv2's
    InfiniteSampler): its ``stream_batches`` full batches, which run on across permutations. Each
    entry is ``pass * n + row``, so a row's augmentation is drawn once per pass over the data."""
    size = stream_batches(n, batch_size) * batch_size
    start, stop = epoch * size, (epoch + 1) * size
    out: list[int] = []
    for p in range(start // n, (stop - 1) // n + 1):
        g = torch.Generator().manual_seed(derived_seed("stream", seed, p))
        perm = torch.randperm(n, generator=g).tolist()
        out += [p * n + r for r in perm[max(start - p * n, 0) : min(stop - p * n, n)]]
    return out


def stream_steps(n: int, batch_size: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``steps`` full batches of the stream (epoch after epoch of :func:`stream_order`):
    (steps, batch_size) row indices and each row's pass over the data."""
    entries: list[int] = []
    epoch = 0
    while len(entries) < steps * batch_size:
        entries += stream_order(n, batch_size, epoch, seed)
        epoch += 1
    passes, rows = np.divmod(np.asarray(entries[: steps * batch_size], dtype=np.int64), n)
    return rows.reshape(steps, batch_size), passes.reshape(steps, batch_size)
