"""Multi-label metrics with unknown (-1) labels equal scikit-learn on each label's known samples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from radprobe.metrics import bootstrap_metrics, classification_metrics
from radprobe.metrics.classification import resample_index
from radprobe.metrics.fast import validation_score


def _labels_with_unknowns(rng: np.random.Generator, n: int = 80, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random((n, c)) < 0.4).astype(np.int64)
    scores = np.clip(0.35 * y + rng.random((n, c)) * 0.7, 0, 1)
    y[rng.random((n, c)) < 0.25] = -1
    return y, scores


def _reference(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    aucs, aps, f1s = [], [], []
    for c in range(y.shape[1]):
        known = y[:, c] != -1
        yc, sc = y[known, c], s[known, c]
        f1s.append(f1_score(yc, sc >= 0.5, zero_division=0))
        if 0 < yc.sum() < len(yc):
            aucs.append(roc_auc_score(yc, sc))
            aps.append(average_precision_score(yc, sc))
    return {"auroc_macro": np.mean(aucs), "auprc_macro": np.mean(aps), "f1_macro": np.mean(f1s)}


def test_multilabel_metrics_use_each_labels_known_samples():
    y, s = _labels_with_unknowns(np.random.default_rng(0))
    got, warns = classification_metrics(y, s, "multilabel")
    ref = _reference(y, s)
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert warns == []


def test_unknown_is_neither_positive_nor_negative():
    rng = np.random.default_rng(1)
    y, s = _labels_with_unknowns(rng)
    base, _ = classification_metrics(y, s, "multilabel")
    # whatever the scores of unknown entries, nothing changes
    s2 = s.copy()
    s2[y == -1] = rng.random(int((y == -1).sum()))
    assert classification_metrics(y, s2, "multilabel")[0] == base
    # turning the unknowns into negatives (or positives) does change the metrics
    assert classification_metrics(np.where(y == -1, 0, y), s, "multilabel")[0] != base
    assert classification_metrics(np.where(y == -1, 1, y), s, "multilabel")[0] != base


def test_f1_macro_equals_sklearn_without_unknowns():
    rng = np.random.default_rng(2)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    y[:, 4] = 0  # a label without positives: F1 is 0 there, as in scikit-learn
    s = rng.random((60, 5))
    got, _ = classification_metrics(y, s, "multilabel")
    assert got["f1_macro"] == pytest.approx(f1_score(y, s >= 0.5, average="macro", zero_division=0))


def test_label_without_known_samples_is_left_out_with_a_warning():
    rng = np.random.default_rng(3)
    y, s = _labels_with_unknowns(rng)
    y[:, 2] = -1
    got, warns = classification_metrics(y, s, "multilabel")
    ref = _reference(np.delete(y, 2, 1), np.delete(s, 2, 1))
    assert got["auroc_macro"] == pytest.approx(ref["auroc_macro"])
    assert got["f1_macro"] == pytest.approx(ref["f1_macro"])
    assert any("class 2 has no known labels" in w for w in warns)


def test_bootstrap_and_validation_score_respect_unknowns():
    rng = np.random.default_rng(4)
    y, s = _labels_with_unknowns(rng, n=40)
    groups = np.repeat(np.arange(20), 2)
    rows = bootstrap_metrics(y, s, "multilabel", groups=groups, n_boot=30, seed=5)
    auroc = next(r for r in rows if r.name == "auroc_macro")
    assert auroc.value == pytest.approx(_reference(y, s)["auroc_macro"])
    # the CI is the percentile interval of the per-resample reference values
    boot = np.random.default_rng(5)
    vals = []
    for _ in range(30):
        idx = resample_index(groups, boot)
        vals.append(_reference(y[idx], s[idx])["auroc_macro"])
    lo, hi = np.quantile(vals, [0.025, 0.975])
    assert (auroc.ci_low, auroc.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert validation_score(y, s, "multilabel") == pytest.approx(_reference(y, s)["auroc_macro"])
