from __future__ import annotations

import json

import numpy as np
import pytest

from radprobe.features.cache import FeatureCache, FeatureSpec, cache_key


def _write(cache: FeatureCache, key: str, n: int = 5, d: int = 3):
    w = cache.writer(key)
    a = w.allocate("cls", (n, d), "float32")
    a[:] = np.arange(n * d, dtype=np.float32).reshape(n, d)
    return w.commit([f"s{i}" for i in range(n)], {"note": "x"})


def test_roundtrip_is_memory_mapped(tmp_path):
    cache = FeatureCache(tmp_path)
    fs = _write(cache, "k1")
    again = cache.get("k1")
    assert again is not None and again.sample_ids == [f"s{i}" for i in range(5)]
    assert isinstance(again.cls, np.memmap)
    np.testing.assert_array_equal(again.cls, np.arange(15, dtype=np.float32).reshape(5, 3))
    assert fs.meta == {"note": "x"}


def test_absent_key_is_none(tmp_path):
    assert FeatureCache(tmp_path).get("nope") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_manifest", "drop_array", "ids"])
def test_corrupt_entry_is_detected_and_removed(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    fs = _write(cache, "k")
    arr = fs.path / "cls.npy"
    del fs
    if damage == "truncate":
        arr.write_bytes(arr.read_bytes()[:-4])
    elif damage == "flip":
        b = bytearray(arr.read_bytes())
        b[-1] ^= 0xFF
        arr.write_bytes(bytes(b))
    elif damage == "drop_manifest":
        (tmp_path / "k" / "manifest.json").unlink()
    elif damage == "drop_array":
        arr.unlink()
    else:
        (tmp_path / "k" / "sample_ids.json").write_text(json.dumps(["a"] * 5))
    assert cache.get("k") is None
    assert not (tmp_path / "k").exists()
    # and it can be rebuilt in place
    assert _write(cache, "k").cls.shape == (5, 3)


def test_size_only_verification_misses_bitflip_but_full_catches_it(tmp_path):
    cache = FeatureCache(tmp_path)
    fs = _write(cache, "k")
    arr = fs.path / "cls.npy"
    b = bytearray(arr.read_bytes())
    b[-1] ^= 0xFF
    arr.write_bytes(bytes(b))
    assert cache.get("k", verify="size") is not None
    assert cache.get("k", verify="full") is None


def test_aborted_writer_leaves_nothing(tmp_path):
    cache = FeatureCache(tmp_path)
    w = cache.writer("k")
    w.allocate("cls", (2, 2), "float32")
    w.abort()
    assert cache.get("k") is None
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".k.lock")] == []


def test_key_changes_with_each_part():
    base = dict(
        backbone={"name": "a", "weights": "w"},
        preprocess={"resolution": 224},
        manifest_digest="m",
        split="train",
        split_digest="s",
        spec=FeatureSpec(),
    )
    k0 = cache_key(**base)
    assert k0 == cache_key(**base)
    variants = [
        {"backbone": {"name": "a", "weights": "w2"}},
        {"preprocess": {"resolution": 448}},
        {"manifest_digest": "m2"},
        {"split": "test"},
        {"split_digest": "s2"},
        {"spec": FeatureSpec(n_blocks=1)},
    ]
    keys = {cache_key(**{**base, **v}) for v in variants}
    assert k0 not in keys and len(keys) == len(variants)
