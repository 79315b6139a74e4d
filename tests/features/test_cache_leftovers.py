"""What interrupted runs leave in the feature cache is cleaned, and every rebuilt entry is named once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from radprobe.features.cache import FeatureCache
from radprobe.run.config import EvalConfig
from radprobe.run.frozen import prepare


def _stale(root: Path, key: str, suffix: str = "tmp") -> Path:
    d = root / f".{key}.x1y2z3.{suffix}"
    d.mkdir(parents=True)
    (d / "cls.npy").write_bytes(b"half-written")
    return d


def test_clean_stale_removes_leftovers_but_not_a_live_writers(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    dead, removed, live = _stale(tmp_path, "aaa"), _stale(tmp_path, "bbb", "removed"), _stale(tmp_path, "ccc")
    with FileLock(str(tmp_path / ".ccc.lock")):  # a writer of ccc is at work
        gone = cache.clean_stale()
    assert sorted(gone) == sorted([dead, removed])
    assert not dead.exists() and not removed.exists() and live.exists()


def test_a_new_writer_clears_its_keys_leftovers(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    stale, other = _stale(tmp_path, "k"), _stale(tmp_path, "other")
    w = cache.writer("k")
    assert not stale.exists() and other.exists() and w.tmp.exists()
    w.abort()


def test_cache_prune_removes_leftovers_of_killed_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path))
    stale = _stale(tmp_path / "features", "deadbeef")
    exe = str(Path(sys.executable).parent / "radprobe")
    res = subprocess.run(
        [exe, "cache", "prune", "--older-than", "365", "--json"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["leftovers_removed"] == [str(stale)]
    assert not stale.exists()


def test_every_corrupt_entry_warns_once_with_its_own_split(tmp_path: Path) -> None:
    cfg = EvalConfig(
        backbone="test:vit-tiny", dataset="synthetic:cls2d-binary", protocols=[], out=tmp_path / "run",
        progress=False, cache_root=tmp_path / "cache",
    )  # fmt: skip
    first = prepare(cfg)
    before = {s: fs.cls.copy() for s, fs in first.feats.items()}
    for fs in first.feats.values():  # flip a byte of each split's class tokens
        arr = fs.path / "cls.npy"
        data = bytearray(arr.read_bytes())
        data[-1] ^= 0xFF
        arr.write_bytes(bytes(data))
    lines: list[str] = []
    again = prepare(cfg, warn=lines.append)
    assert len(lines) == 3
    for split in ("train", "val", "test"):
        assert sum(f"split {split} of dataset cls2d-binary" in line for line in lines) == 1, lines
    assert all((again.feats[s].cls == before[s]).all() for s in again.feats)  # rebuilt as they were
