"""Independent references for the metrics tests: scikit-learn metrics written out per task, and a
patient (cluster) bootstrap drawn from its contract alone, sharing no code with radprobe.metrics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)


def _defined(y: np.ndarray) -> bool:
    return 0 < int(np.sum(y == 1)) < len(y)


def _mean_defined(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def sklearn_metrics(y: np.ndarray, s: np.ndarray, task: str) -> dict[str, float]:
    """The headline metrics of ``task`` from scikit-learn alone (NaN where undefined).

    Multi-label: each label over its known samples (label != -1); AUROC/AUPRC average the labels
    where both classes are present, F1 averages every label with a known sample (0 when undefined).
    """
    if task == "binary":
        out = {
            "accuracy": accuracy_score(y, s.argmax(1)),
            "balanced_accuracy": balanced_accuracy_score(y, s.argmax(1)),
        }
        out["f1_macro"] = f1_score(y, s.argmax(1), average="macro", zero_division=0)
        ok = _defined(y)
        out["auroc"] = roc_auc_score(y, s[:, 1]) if ok else float("nan")
        out["auprc"] = min(1.0, average_precision_score(y, s[:, 1])) if ok else float("nan")
        return {k: float(v) for k, v in out.items()}
    if task == "multiclass":
        pred = s.argmax(1)
        aucs = [roc_auc_score(y == c, s[:, c]) for c in range(s.shape[1]) if _defined((y == c).astype(int))]
        return {
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "auroc_macro": _mean_defined(aucs),
            "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
        }
    aucs, aps, f1s = [], [], []
    for c in range(y.shape[1]):
        known = y[:, c] != -1
        yc, sc = y[known, c], s[known, c]
        if len(yc):
            f1s.append(f1_score(yc, sc >= 0.5, zero_division=0))
        if _defined(yc):
            aucs.append(roc_auc_score(yc, sc))
            aps.append(min(1.0, average_precision_score(yc, sc)))
    return {
        "auroc_macro": _mean_defined(aucs),
        "auprc_macro": _mean_defined(aps),
        "f1_macro": _mean_defined(f1s),
    }


def cluster_resample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one patient bootstrap, from the contract: the sorted distinct patients, as many
    draws with replacement as there are patients (one ``rng.integers`` call), every row of each
    drawn patient in dataset order."""
    patients = sorted(set(groups.tolist()))
    drawn = rng.integers(0, len(patients), len(patients))
    return np.array([i for d in drawn for i in range(len(groups)) if groups[i] == patients[d]], dtype=int)
