"""Classification metrics (via scikit-learn) and patient-level bootstrap CIs.

``scores`` are per-class probabilities/scores: (N, C) for every task (binary uses C = 2 columns,
class 1 is positive). A class without positives (or without negatives) in the evaluated set is
left out of macro averages and reported in ``warnings`` — never a crash, never a silent 0.5.

Multi-label labels of -1 mean "unknown" (e.g. CheXpert ``uncertain=ignore``): each label's metrics are
computed over the samples where that label is known, so a -1 is never a positive nor a negative.
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from radprobe.metrics.fast import weight_chunks, weighted_headline_metrics

# The metric that headlines a task, in the order they are reported.
HEADLINE: dict[str, tuple[str, ...]] = {
    "binary": ("auroc", "auprc", "accuracy", "balanced_accuracy", "f1_macro"),
    "multiclass": ("accuracy", "balanced_accuracy", "auroc_macro", "f1_macro"),
    "multilabel": ("auroc_macro", "auprc_macro", "f1_macro"),
}


@dataclass
class MetricValue:
    """A metric's point estimate with its bootstrap CI."""

    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    warnings: list[str] = field(default_factory=list)


def _per_class_auc(y: np.ndarray, s: np.ndarray, fn, names: str) -> tuple[float, list[str]]:
    vals, warns = [], []
    for c in range(y.shape[1]):
        known = y[:, c] != -1
        yc = y[known, c]
        pos = int((yc == 1).sum())
        if pos == 0 or pos == len(yc):
            why = "no known labels" if len(yc) == 0 else ("no positives" if pos == 0 else "no negatives")
            warns.append(f"class {c} has {why}; left out of {names}")
            continue
        vals.append(fn(yc, s[known, c]))
    return (float(np.mean(vals)) if vals else float("nan")), warns


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's AP, capped at 1: its sum of recall steps x precision can round to 1 + 2e-16."""
    return min(1.0, float(average_precision_score(y, s)))


def _multilabel_f1_macro(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean over labels of each label's F1 on its known samples (0 where F1 is undefined).

    Equals scikit-learn's ``f1_score(average="macro", zero_division=0)`` when nothing is unknown; a
    label without any known sample is left out.
    """
    known = y != -1
    pos = y == 1
    tp = (pos & pred & known).sum(0)
    fp = (~pos & pred & known).sum(0)
    fn = (pos & ~pred).sum(0)
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
    has = known.any(0)
    return float(f1[has].mean()) if has.any() else float("nan")


def classification_metrics(
    y_true: np.ndarray, scores: np.ndarray, task: str, threshold: float = 0.5
) -> tuple[dict[str, float], list[str]]:
    """All metrics of ``task`` and the warnings raised computing them."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    out: dict[str, float] = {}
    warns: list[str] = []
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        if task == "multilabel":
            out["auroc_macro"], w = _per_class_auc(y_true, scores, roc_auc_score, "auroc_macro")
            warns += w
            out["auprc_macro"], _ = _per_class_auc(y_true, scores, _average_precision, "auprc_macro")
            out["f1_macro"] = _multilabel_f1_macro(y_true, scores >= threshold)
            return out, warns
        pred = scores.argmax(1)
        out["accuracy"] = float(accuracy_score(y_true, pred))
        out["balanced_accuracy"] = float(balanced_accuracy_score(y_true, pred))
        out["f1_macro"] = float(f1_score(y_true, pred, average="macro", zero_division=0))
        onehot = np.eye(scores.shape[1], dtype=int)[y_true]
        if task == "binary":
            if len(np.unique(y_true)) < 2:
                warns.append("only one class present; auroc/auprc undefined")
                out["auroc"] = out["auprc"] = float("nan")
            else:
                out["auroc"] = float(roc_auc_score(y_true, scores[:, 1]))
                out["auprc"] = _average_precision(y_true, scores[:, 1])
        else:
            out["auroc_macro"], w = _per_class_auc(onehot, scores, roc_auc_score, "auroc_macro")
            warns += w
    return out, warns


def per_class_metrics(
    y_true: np.ndarray, scores: np.ndarray, task: str, threshold: float = 0.5
) -> dict[str, float]:
    """Each class's own AUROC, AUPRC (multi-label) and F1, as ``auroc:<i>`` etc. (scikit-learn);
    NaN where a class's value is undefined. Binary tasks have none beyond their headline."""
    y, s = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    out: dict[str, float] = {}
    nan = float("nan")
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        if task == "multilabel":
            for c in range(y.shape[1]):
                known = y[:, c] != -1
                yc, sc = y[known, c], s[known, c]
                defined = 0 < int((yc == 1).sum()) < len(yc)
                out[f"auroc:{c}"] = float(roc_auc_score(yc, sc)) if defined else nan
                out[f"auprc:{c}"] = _average_precision(yc, sc) if defined else nan
                out[f"f1:{c}"] = float(f1_score(yc, sc >= threshold, zero_division=0)) if len(yc) else nan
        elif task == "multiclass":
            pred = s.argmax(1)
            for c in range(s.shape[1]):
                yc = (y == c).astype(int)
                out[f"auroc:{c}"] = float(roc_auc_score(yc, s[:, c])) if 0 < yc.sum() < len(yc) else nan
                seen = yc.sum() + (pred == c).sum() > 0
                out[f"f1:{c}"] = float(f1_score(yc, pred == c, zero_division=0)) if seen else nan
    return out


def resample_index(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a bootstrap resample drawn over groups (patients), keeping each group's samples."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    drawn = rng.integers(0, len(uniq), len(uniq))
    return np.concatenate([order[starts[g] : starts[g] + counts[g]] for g in drawn])


def bootstrap_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    task: str,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    class_names: Sequence[str] | None = None,
) -> list[MetricValue]:
    """Headline metrics with percentile CIs from ``n_boot`` resamples of ``groups`` (patients);
    with ``class_names``, also each class's AUROC, AUPRC (multi-label) and F1 as ``auroc:<class>``
    rows (multi-class and multi-label; a class whose value is undefined on test gets no row).

    Resamples where a metric is undefined (e.g. one class only) are skipped for that metric. The
    resamples are scored as weights, all at once (``metrics.fast``), with the values scikit-learn
    gives on each resample's rows.
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    point, warns = classification_metrics(y_true, scores, task)
    names = [m for m in HEADLINE[task] if m in point]
    per_class = bool(class_names) and task != "binary"
    if per_class:
        point.update(per_class_metrics(y_true, scores, task))
        names += [m for m in point if ":" in m and np.isfinite(point[m])]  # undefined: no row
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[np.ndarray]] = {m: [] for m in names}
    for w in weight_chunks(groups, n_boot, rng):
        vals = weighted_headline_metrics(y_true, scores, task, w, per_class=per_class)
        for m in names:
            samples[m].append(vals[m][np.isfinite(vals[m])])
    out = []
    for m in names:
        s = np.concatenate(samples[m]) if samples[m] else np.empty(0)
        lo, hi = np.quantile(s, [alpha / 2, 1 - alpha / 2]) if len(s) else (np.nan, np.nan)
        name = m if ":" not in m else f"{m.split(':')[0]}:{class_names[int(m.split(':')[1])]}"  # type: ignore[index]
        out.append(MetricValue(name, point[m], float(lo), float(hi), n=len(y_true), warnings=list(warns)))
    return out
