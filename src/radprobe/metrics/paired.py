"""Paired bootstrap comparison of two models scored on the same test samples."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from radprobe.metrics.classification import classification_metrics, resample_index
from radprobe.metrics.fast import weight_chunks, weighted_headline_metrics


@dataclass
class PairedComparison:
    """Difference a − b of a metric with its bootstrap CI and two-sided p-value."""

    metric: str
    a: float
    b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_boot: int


def paired_bootstrap(
    y_true: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    task: str,
    metric: str,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """Resample patients once per round and score both models on the same resample.

    The p-value is the two-sided bootstrap p of the difference's sign, 2·min(P(d ≤ 0), P(d ≥ 0)),
    floored at 1 / (valid resamples + 1).
    """
    y_true = np.asarray(y_true)
    groups = np.arange(len(y_true)) if groups is None else np.asarray(groups)
    a = classification_metrics(y_true, scores_a, task)[0][metric]
    b = classification_metrics(y_true, scores_b, task)[0][metric]
    rng = np.random.default_rng(seed)
    diffs = []
    for w in weight_chunks(groups, n_boot, rng):
        # both models scored on the same weighted resamples, all at once (see metrics.fast)
        da = weighted_headline_metrics(y_true, scores_a, task, w)[metric]
        db = weighted_headline_metrics(y_true, scores_b, task, w)[metric]
        ok = np.isfinite(da) & np.isfinite(db)
        diffs.append((da - db)[ok])
    return _compare(metric, float(a), float(b), np.concatenate(diffs), len(y_true), n_boot)


def paired_bootstrap_fn(
    value_a: Callable[[np.ndarray | None], float],
    value_b: Callable[[np.ndarray | None], float],
    metric: str,
    groups: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """:func:`paired_bootstrap` for any statistic: ``value_x(idx)`` scores model x on the rows ``idx``
    of a patient resample (``None``: all rows), e.g. segmentation metrics aggregated over cases."""
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = resample_index(groups, rng)
        da, db = value_a(idx), value_b(idx)
        if np.isfinite(da) and np.isfinite(db):
            diffs.append(da - db)
    a, b = value_a(None), value_b(None)
    return _compare(metric, a, b, np.asarray(diffs, dtype=float), len(groups), n_boot)


def _compare(metric: str, a: float, b: float, d: np.ndarray, n: int, n_boot: int) -> PairedComparison:
    """Percentile CI and two-sided sign p-value of the bootstrap differences ``d``."""
    if len(d) == 0:
        return PairedComparison(metric, a, b, a - b, np.nan, np.nan, np.nan, n, n_boot)
    lo, hi = np.quantile(d, [0.025, 0.975])
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    p = float(min(1.0, max(p, 1 / (len(d) + 1))))
    return PairedComparison(metric, float(a), float(b), float(a - b), float(lo), float(hi), p, n, n_boot)
