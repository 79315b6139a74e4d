"""Report building blocks: cells, headline metrics, fold pooling, seeds, the sanity gate, references."""

from __future__ import annotations

import numpy as np
import pytest

from radprobe.metrics.classification import classification_metrics
from radprobe.report.model import (
    Cell,
    ReportMeta,
    beats_control,
    collapse_seeds,
    fold_base,
    gate_by_task,
    headline_metric,
    model_labels,
    pool_folds,
    pooled_metrics,
    sanity_gate,
)
from radprobe.report.references import load_references, matching, mismatch
from radprobe.results import ResultStore


def test_cell_text_and_gate_rule():
    assert Cell(0.5, 0.4, 0.6).text() == "0.500 [0.400, 0.600]"
    assert Cell(0.5).text() == "0.500"
    assert Cell(float("nan")).text() == "n/a"
    assert beats_control(Cell(0.8, 0.71, 0.9), Cell(0.6, 0.5, 0.7), "auroc")
    assert not beats_control(Cell(0.8, 0.69, 0.9), Cell(0.6, 0.5, 0.7), "auroc")  # intervals overlap
    assert beats_control(Cell(5.0, 4.0, 6.0), Cell(9.0, 7.0, 11.0), "hd95_macro")  # lower is better
    assert beats_control(Cell(0.9), Cell(0.1), "dice_macro")  # no intervals: the points decide


def test_headline_metric_per_task():
    assert headline_metric("binary", ["accuracy", "auroc"]) == "auroc"
    assert headline_metric("multiclass", ["auroc_macro", "accuracy"]) == "accuracy"
    assert headline_metric("segmentation", ["hd95_macro", "dice_macro"]) == "dice_macro"
    assert headline_metric("unknown", ["x", "y"]) == "x"


def test_fold_names():
    assert fold_base("lung_gtv_cls_fold3") == ("lung_gtv_cls", 3)
    assert fold_base("lung_gtv_cls_fold1_demo-quick") == ("lung_gtv_cls_demo-quick", 1)
    assert fold_base("mni_tissue_cls") is None


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_pooled_metrics_agree_with_scikit_learn(task):
    rng = np.random.default_rng(3)
    c = 2 if task == "binary" else 3
    y = rng.integers(0, c, 300)
    s = rng.random((300, c))
    s[np.arange(300), y] += 0.4
    s[:20] = 0.5  # ties
    groups = np.array([f"p{i % 7}" for i in range(300)])
    ours = {m.name: m for m in pooled_metrics(y, s, task, groups, n_boot=200)}
    ref, _ = classification_metrics(y, s, task)
    for name, m in ours.items():
        assert m.value == pytest.approx(ref[name], abs=1e-12)
        assert m.ci_low <= m.value <= m.ci_high


def test_pool_folds_pools_predictions(run_dir):
    with ResultStore(run_dir, create=False) as store:
        rows = store.rows()
    pooled = pool_folds(rows, run_dir, n_boot=50)
    knn = [r for r in pooled if r["protocol"] == "knn" and r["metric"] == "auroc"]
    assert {r["dataset"] for r in knn} == {"lung_cls (CV, 2 folds)"}
    assert len(knn) == 3  # one per model
    assert all(r["n"] == 60 and "pooled" in r["ci_method"] for r in knn)


def test_pool_folds_needs_every_fold(run_dir):
    with ResultStore(run_dir, create=False) as store:
        rows = [r for r in store.rows() if r["dataset"] != "lung_cls_fold2"]
    assert pool_folds(rows, run_dir) == []


def _row(value, seed=0, lo=None, hi=None, **kw):
    base = {
        "backbone": "b",
        "weights_digest": "w",
        "dataset": "d",
        "protocol": "knn",
        "metric": "auroc",
        "hparams": {},
        "task": "binary",
        "value": value,
        "ci_low": lo,
        "ci_high": hi,
        "seed": seed,
    }
    return {**base, **kw}


def test_collapse_seeds_means_and_envelopes():
    out = collapse_seeds([_row(0.6, 0, 0.5, 0.7), _row(0.8, 1, 0.7, 0.9)])
    assert len(out) == 1
    assert out[0]["value"] == pytest.approx(0.7)
    assert (out[0]["ci_low"], out[0]["ci_high"]) == (0.5, 0.9)
    assert out[0]["seeds"] == [0, 1]


def test_sanity_gate_passes_and_fails():
    rows = [
        _row(0.9, lo=0.85, hi=0.95, weights_digest="pre"),
        _row(0.6, lo=0.55, hi=0.65, weights_digest="ctl"),
        _row(0.7, lo=0.6, hi=0.8, weights_digest="pre", dataset="e"),
        _row(0.65, lo=0.55, hi=0.75, weights_digest="ctl", dataset="e"),
    ]
    meta = ReportMeta(control=["ctl"])
    labels = model_labels(rows, meta)
    gate = sanity_gate(rows, labels, meta)
    assert gate_by_task(gate) == {"d": True, "e": False}
    assert sanity_gate(rows, labels, ReportMeta()) == []  # no control named: no gate


def test_labels_disambiguate_one_backbone_with_several_weights():
    rows = [_row(0.5, weights_digest="random-init:seed0"), _row(0.5, weights_digest="abcdef123456")]
    labels = model_labels(rows, ReportMeta())
    assert sorted(labels.values()) == ["b [abcdef12]", "b [random init]"]
    assert model_labels(rows, ReportMeta(labels={"abcdef123456": "mine"}))["b@abcdef123456"] == "mine"


def test_references_are_complete_and_match_only_their_setting():
    refs = load_references()
    assert len(refs) >= 40
    for r in refs:
        assert r.source and r.cell and r.reported
        assert 0 < r.value <= 1
        assert {"protocol", "metric", "dataset"} <= set(r.match)
    nih = {
        "dataset": "nih-cxr14",
        "task": "multilabel",
        "num_classes": 15,
        "n_val": 10002,
        "n_test": 25596,
        "resolution": 224,
        "backbone": "dinov2-l",
        "protocol": "linear",
        "metric": "auroc_macro",
        "hparams": {},
    }
    hits = matching(nih)
    assert [h.reported for h in hits] == ["0.763"]
    assert "Baharoon" in hits[0].source
    assert matching({**nih, "resolution": 448}) == []
    assert mismatch(hits[0], {**nih, "n_test": 1000}) == "n_test"
    assert (
        matching({**nih, "protocol": "fewshot-linear", "hparams": {"shots": 4, "repeats": 1}})[0].reported
        == "0.519"
    )
    assert matching({**nih, "protocol": "fewshot-linear", "hparams": {"shots": 4, "repeats": 5}}) == []
    assert matching({**nih, "derived": True}) == []


def test_a_published_figure_the_released_code_leaves_open_is_flagged_beside_it():
    from radprobe.report.build import _published

    nih = {"dataset": "nih-cxr14", "task": "multilabel", "num_classes": 15, "n_val": 10002, "n_test": 25596}
    row = {
        **nih,
        "resolution": 224,
        "backbone": "paper:dinov2-l",
        "protocol": "linear",
        "metric": "auroc_macro",
    }
    text = _published({**row, "hparams": {}})
    assert text.startswith("0.763 (Baharoon et al.") and "[caveat: the released launch scripts" in text
    shot = _published({**row, "protocol": "fewshot-linear", "hparams": {"shots": 4, "repeats": 1}})
    assert "0.519" in shot and "draws from train + val and the head chosen on test" in shot
    flagged = {r.cell for r in load_references() if r.caveat}
    assert len(flagged) == 30 and all(c.startswith("NIH CXR14") for c in flagged)  # linear and few-shot


def _seg_fold_rows(run_dir, fold: int, dice: np.ndarray, ids: list[str]) -> list[dict]:
    from radprobe.metrics.segmentation import CaseTable
    from radprobe.results.predictions import predictions_path

    ek = f"seg-eval-{fold}"
    table = CaseTable(
        np.asarray(ids),
        np.asarray([i.split("-")[0] for i in ids]),
        np.asarray(["background", "organ", "lesion"]),
        {"dice": dice, "iou": dice / (2 - dice)},
    )
    path = predictions_path(run_dir, ek)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.save(path)
    return [
        _row(
            table.value(m),
            dataset=f"seg_fold{fold}",
            protocol="seg-linear",
            metric=m,
            task="segmentation",
            eval_key=ek,
            n=len(ids),
            n_test=len(ids),
        )
        for m in ("dice_macro", "dice_lesion", "iou_macro")
    ]


def test_pool_folds_pools_segmentation_cases(tmp_path):
    rng = np.random.default_rng(0)
    d1, d2 = rng.random((3, 2)), rng.random((4, 2))
    d2[1, 1] = np.nan  # lesion absent from one case: left out of the lesion mean
    rows = _seg_fold_rows(tmp_path, 1, d1, ["p1-a", "p1-b", "p2-a"])
    rows += _seg_fold_rows(tmp_path, 2, d2, ["p3-a", "p3-b", "p4-a", "p5-a"])
    pooled = {r["metric"]: r for r in pool_folds(rows, tmp_path, n_boot=200)}
    assert set(pooled) == {"dice_macro", "dice_lesion", "iou_macro"}
    cases = np.concatenate([d1, d2])
    per_class = np.nanmean(cases, axis=0)
    assert pooled["dice_lesion"]["value"] == pytest.approx(per_class[1])
    assert pooled["dice_macro"]["value"] == pytest.approx(per_class.mean())
    for r in pooled.values():
        assert (
            r["dataset"] == "seg (CV, 2 folds)"
            and r["n_test"] == 7
            and "cases of 2 folds pooled" in r["ci_method"]
        )
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    # the same case in two folds is no cross-validation: the folds' values are averaged instead
    rows = _seg_fold_rows(tmp_path, 1, d1, ["p1-a", "p1-b", "p2-a"])
    rows += _seg_fold_rows(tmp_path, 2, d2, ["p1-a", "p3-b", "p4-a", "p5-a"])
    pooled = {r["metric"]: r for r in pool_folds(rows, tmp_path, n_boot=200)}
    assert "t-interval" in pooled["dice_macro"]["ci_method"]


def test_a_zero_width_interval_is_marked():
    from radprobe.report.model import ZERO_WIDTH

    assert Cell(0.5, 0.5, 0.5).text() == f"0.500 [0.500, 0.500]{ZERO_WIDTH}"
    assert Cell(0.5, 0.5, 0.5).zero_width and not Cell(0.5, 0.4, 0.6).zero_width
    assert not Cell(0.5).zero_width
