"""``radprobe compare`` on segmentation rows: a paired patient bootstrap over per-case scores."""

from __future__ import annotations

import json

import numpy as np

from radprobe.cli import main
from radprobe.metrics.segmentation import CaseTable
from radprobe.results.compare import compare_backbones
from radprobe.results.predictions import predictions_path

FAST = ["--set", "seg-linear.lrs=0.01", "--set", "seg-linear.epochs=2", "--set", "seg-linear.min_steps=8"]


def _seg_linear(capsys, backbone: str, out) -> list[dict]:
    argv = ["eval", "-b", backbone, "-d", "synthetic:seg2d", "-p", "seg-linear", "-o", str(out), "--json"]
    code = main([*argv, "--bootstrap", "50", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)["rows"]


def test_compare_segmentation_backbones_on_their_cases(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    vit = _seg_linear(capsys, "test:vit-tiny", out)
    _seg_linear(capsys, "test:cnn-tiny", out)
    # the saved per-case table aggregates to exactly the stored row values
    table = CaseTable.load(predictions_path(out, vit[0]["eval_key"]))
    for r in vit:
        if np.isfinite(r["value"]):
            assert np.isclose(table.value(r["metric"]), r["value"], atol=1e-12), r["metric"]
    res = compare_backbones(out, "test:vit-tiny", "test:cnn-tiny", "seg-linear", n_boot=200)
    assert res.metric == "dice_macro" and res.n == len(table.sample_ids)
    assert np.isclose(res.diff, res.a - res.b) and res.ci_low <= res.diff <= res.ci_high
    same = compare_backbones(
        out, "test:vit-tiny", "test:vit-tiny", "seg-linear", metric="iou_organ", n_boot=50
    )
    assert same.diff == 0 and same.p_value == 1.0
    code = main(["compare", str(out), "--a", "test:vit-tiny", "--b", "test:cnn-tiny", "-p", "seg-linear",
                 "--metric", "nope"])  # fmt: skip
    assert code == 2 and "dice_macro" in capsys.readouterr().err
