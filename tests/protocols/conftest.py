from __future__ import annotations

import numpy as np
import pytest

from radprobe.protocols.base import ProtocolInput, SplitFeatures


def make_split(rng, n, centers, task, n_blocks=2, patients_per=2):
    c = len(centers)
    if task == "multilabel":
        y = (rng.random((n, c)) < 0.35).astype(np.int64)
        x = y @ centers + rng.normal(scale=0.7, size=(n, centers.shape[1]))
    else:
        y = rng.integers(0, c, n)
        x = centers[y] + rng.normal(scale=1.0, size=(n, centers.shape[1]))
    blocks = np.stack(
        [np.stack([x + rng.normal(scale=0.3, size=x.shape), x * 0.5], 1) for _ in range(n_blocks)], 1
    ).astype(np.float32)
    groups = np.array([f"p{i // patients_per}" for i in range(n)])
    return SplitFeatures(x.astype(np.float32), y, groups, blocks)


@pytest.fixture(params=["multiclass", "multilabel", "binary"])
def toy(request):
    task = request.param
    rng = np.random.default_rng(0)
    c = 2 if task == "binary" else 3
    centers = rng.normal(scale=2.0, size=(c, 12))
    splits = [make_split(rng, n, centers, task) for n in (160, 60, 80)]
    return ProtocolInput(*splits, task=task, num_classes=c, seed=0)


@pytest.fixture
def blocks_input():
    """A factory of toy inputs of ``task`` whose cache holds ``n_blocks`` blocks (``sizes``: splits)."""

    def make(task, n_blocks=4, sizes=(200, 60, 60), seed=0):
        rng = np.random.default_rng(seed)
        c = 2 if task == "binary" else 3
        centers = rng.normal(scale=2.0, size=(c, 12))
        splits = [make_split(rng, n, centers, task, n_blocks=n_blocks) for n in sizes]
        return ProtocolInput(*splits, task=task, num_classes=c, seed=seed)

    return make
