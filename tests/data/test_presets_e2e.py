"""Every preset, end to end: its replica in the real layout → data check → an evaluation."""

from __future__ import annotations

import json
import sqlite3

import pytest

from radprobe.cli import main
from radprobe.data.presets.replicas import REPLICAS, make_replica

SEGMENTATION = {"montgomery", "shenzhen", "btcv", "amos", "msd"}
SEG_FAST = [
    "--set",
    "seg-linear.epochs=1",
    "--set",
    "seg-linear.min_steps=4",
    "--set",
    "seg-linear.lrs=[0.01]",
]


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_preset_replica_checks_and_evaluates(preset, tmp_path, capsys):
    spec = make_replica(preset, tmp_path / "data")
    assert main(["data", "check", spec, "--json"]) == 0, capsys.readouterr()
    capsys.readouterr()
    protocol = ["seg-linear", *SEG_FAST] if preset in SEGMENTATION else ["knn"]
    out = tmp_path / "run"
    argv = ["eval", "-b", "test:vit-tiny", "-d", spec, "-o", str(out), "--bootstrap", "20", "--json", "-p"]
    code = main([*argv, *protocol])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)["rows"]
    assert rows and all(r["ci_low"] is not None or r["value"] != r["value"] for r in rows)
    n = sqlite3.connect(out / "results.db").execute("select count(*) from results").fetchone()[0]
    assert n == len(rows)


def test_volume_classification_on_synthetic_cls3d(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls3d", "-p", "knn,logreg", "-o", str(out)]
    code = main([*argv, "--bootstrap", "50", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    # one feature row per volume (slice features averaged), scored per volume
    assert summary["splits"]["test"]["n"] == summary["rows"][0]["n_test"]
    assert {r["protocol"] for r in summary["rows"]} == {"knn", "logreg"}
