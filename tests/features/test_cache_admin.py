"""Listing and pruning the feature cache (``radprobe cache list|prune``)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from radprobe.cli import main
from radprobe.features.cache import FeatureCache, select_prune

DAY = 86400.0


def _entry(cache: FeatureCache, key: str, backbone: str, dataset: str, rows: int, age_days: float) -> None:
    w = cache.writer(key)
    w.allocate("cls", (rows, 64), "float32")[:] = 1.0
    w.commit(
        [f"s{i}" for i in range(rows)],
        {
            "backbone": {"name": backbone, "weights_digest": "sha-" + backbone},
            "dataset": dataset,
            "split": "train",
        },
    )
    cache.add_to_family("fam", key)
    t = time.time() - age_days * DAY
    os.utime(cache.entry_path(key) / "manifest.json", (t, t))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> FeatureCache:
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path))
    c = FeatureCache(tmp_path / "features")
    _entry(c, "old-vit", "vit", "nih", 100, 30)
    _entry(c, "mid-cnn", "cnn", "nih", 200, 10)
    _entry(c, "new-vit", "vit", "btcv", 50, 1)
    return c


def test_entries_come_oldest_first_with_their_sizes(cache):
    es = cache.entries()
    assert [e.key for e in es] == ["old-vit", "mid-cnn", "new-vit"]
    assert [e.rows for e in es] == [100, 200, 50]
    assert [e.bytes for e in es] == [os.path.getsize(cache.entry_path(e.key) / "cls.npy") for e in es]
    assert es[0].backbone == "vit" and es[0].dataset == "nih" and es[0].precision == "fp32"


def test_select_prune_filters_and_size_budget(cache):
    es = cache.entries()
    keys = lambda sel: [e.key for e in sel]  # noqa: E731
    assert keys(select_prune(es, backbone="vit")) == ["old-vit", "new-vit"]
    assert keys(select_prune(es, dataset="nih", backbone="cnn")) == ["mid-cnn"]
    assert keys(select_prune(es, older_than_s=5 * DAY)) == ["old-vit", "mid-cnn"]
    total = sum(e.bytes for e in es)
    # the oldest go first, and only until the rest fits
    assert keys(select_prune(es, max_bytes=total - 1)) == ["old-vit"]
    assert keys(select_prune(es, max_bytes=es[2].bytes)) == ["old-vit", "mid-cnn"]
    assert keys(select_prune(es, max_bytes=total)) == []
    assert keys(select_prune(es, backbone="vit", max_bytes=0)) == ["old-vit", "new-vit"]


def test_prune_cli_removes_entries_and_their_family_markers(cache, capsys):
    assert main(["cache", "prune", "--backbone", "vit", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] and [e["key"] for e in out["removed"]] == ["old-vit", "new-vit"]
    assert len(cache.entries()) == 3  # a dry run removes nothing
    assert main(["cache", "prune", "--older-than", "20"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert [e.key for e in cache.entries()] == ["mid-cnn", "new-vit"]
    assert cache.get("old-vit") is None
    assert [e.key for e in cache.family("fam")] == ["mid-cnn", "new-vit"]
    assert not any(p.name.endswith(".removed") for p in cache.root.iterdir())


def test_list_cli_json_and_one_line_errors(cache, capsys):
    assert main(["cache", "list", "--dataset", "nih", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["key"] for e in out["entries"]] == ["old-vit", "mid-cnn"]
    assert main(["cache", "prune"]) == 2
    assert "name --backbone, --dataset, --older-than or --max-gb" in capsys.readouterr().err
    assert main(["cache", "prune", "--max-gb", "-1"]) == 2
    assert len(cache.entries()) == 3


def test_a_removed_entry_stays_readable_through_an_open_memory_map(cache):
    fs = cache.get("mid-cnn")
    cache.remove("mid-cnn")
    assert not cache.entry_path("mid-cnn").exists()
    np.testing.assert_array_equal(fs.cls[:2], np.ones((2, 64), np.float32))
