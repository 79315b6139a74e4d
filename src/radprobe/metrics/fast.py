"""The headline metric of many score sets at once (model selection over a grid of heads).

Equal to :func:`radprobe.protocols.base.validation_score` for each score set (tests check this against
scikit-learn), but vectorised: AUROC comes from average ranks (Mann-Whitney U), so a 52-head grid is
scored in one call instead of 52 metric suites. Labels of -1 (unknown) are left out per label.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _auroc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """AUROC (H,) of binary labels y (N,) against scores s (H, N); NaN when a class is absent."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(len(s), np.nan)
    ranks = rankdata(s, axis=1)  # average ranks: ties count one half, as in roc_auc_score
    return (ranks[:, pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def headline_scores(labels: np.ndarray, probs: np.ndarray, task: str) -> np.ndarray:
    """The task's headline metric (H,) of scores ``probs`` (H, N, C); -inf where undefined.

    multiclass: accuracy; binary: AUROC of class 1; multilabel: macro AUROC over the labels that
    have both positives and negatives among their known (!= -1) samples.
    """
    y = np.asarray(labels)
    p = np.asarray(probs, dtype=np.float64)
    if task == "multiclass":
        out = (p.argmax(-1) == y[None]).mean(1)
    elif task == "binary":
        out = _auroc(y, p[:, :, 1])
    else:
        per = []
        for c in range(y.shape[1]):
            known = y[:, c] != -1
            per.append(_auroc(y[known, c], p[:, known, c]))
        per_class = np.stack(per, 1)
        valid = np.isfinite(per_class).any(0)
        out = per_class[:, valid].mean(1) if valid.any() else np.full(len(p), np.nan)
    return np.where(np.isfinite(out), out, -np.inf)
