"""Volume pooling of per-slice cache entries equals numpy over each volume's slices."""

from __future__ import annotations

import numpy as np
import pytest

from radprobe.features.cache import FeatureCache
from radprobe.features.extract import pool_volumes, volume_offsets


def _per_slice_entry(cache: FeatureCache, depths: list[int], d: int = 6):
    rng = np.random.default_rng(0)
    n = sum(depths)
    w = cache.writer("slices")
    cls = w.allocate("cls", (n, d), "float32")
    cls[:] = rng.normal(size=(n, d))
    blocks = w.allocate("blocks", (n, 2, 2, d), "float32")
    blocks[:] = rng.normal(size=(n, 2, 2, d))
    vol = w.allocate("volume", (n,), "int32")
    vol[:] = np.repeat(np.arange(len(depths)), depths)
    sl = w.allocate("slice", (n,), "int32")
    sl[:] = np.concatenate([np.arange(k) for k in depths])
    ids = [f"v{v}#{k}" for v, dep in enumerate(depths) for k in range(dep)]
    return w.commit(ids, {"per_slice": True, "volumes": [f"v{v}" for v in range(len(depths))]})


@pytest.mark.parametrize("how", ["mean", "max"])
def test_pooling_matches_numpy_over_each_volume(tmp_path, how):
    depths = [3, 1, 7, 4]
    fs = _per_slice_entry(FeatureCache(tmp_path), depths)
    got = pool_volumes(fs, how)
    cls, blocks, vol = np.asarray(fs.cls), np.asarray(fs.blocks), np.asarray(fs.arrays["volume"])
    fn = np.mean if how == "mean" else np.max
    ref_cls = np.stack([fn(cls[vol == v], axis=0) for v in range(len(depths))])
    ref_blocks = np.stack([fn(blocks[vol == v], axis=0) for v in range(len(depths))])
    np.testing.assert_allclose(got["cls"], ref_cls, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["blocks"], ref_blocks, rtol=1e-6, atol=1e-6)
    assert got["cls"].dtype == np.float32 and got["blocks"].shape == (4, 2, 2, 6)
    assert list(volume_offsets(fs)) == [0, 3, 4, 11, 15]


def test_unknown_pooling_is_refused(tmp_path):
    fs = _per_slice_entry(FeatureCache(tmp_path), [2, 2])
    with pytest.raises(ValueError, match="mean, max"):
        pool_volumes(fs, "median")
