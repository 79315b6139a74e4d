"""The headline metric of many score sets at once (model selection over a grid of heads).

Equal to :func:`validation_score` for each score set (tests check this against
scikit-learn), but vectorised: AUROC comes from average ranks (Mann-Whitney U), so a 52-head grid is
scored in one call instead of 52 metric suites. Labels of -1 (unknown) are left out per label.
"""

from __future__ import annotations

from collections.abc import Iterator

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


# ----------------------------------------------------------------------------- weighted resamples
# A patient bootstrap resample is a multiplicity per sample: weights (B, N). Every headline metric
# below is computed for B resamples at once from those weights, equal to scikit-learn on the resample
# with its duplicated rows (duplicates are integer weights; tied scores count one half).


def _groups_by_score(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    return order, starts


def _weighted_auc_ap(s: np.ndarray, pos: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and average precision (B,) of scores s (N,), positives pos (N,), weights w (B, N)."""
    order, starts = _groups_by_score(s)
    wp = np.add.reduceat(w[:, order] * pos[order], starts, axis=1)  # (B, G) ascending score
    wn = np.add.reduceat(w[:, order] * ~pos[order], starts, axis=1)
    n_pos, n_neg = wp.sum(1), wn.sum(1)
    ok = (n_pos > 0) & (n_neg > 0)
    below = np.cumsum(wn, 1) - wn
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (below + 0.5 * wn)).sum(1) / (n_pos * n_neg)
        tps = np.cumsum(wp[:, ::-1], 1)  # thresholds from the highest score down
        fps = np.cumsum(wn[:, ::-1], 1)
        prec = np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1e-300), 0.0)
        ap = (wp[:, ::-1] * prec).sum(1) / n_pos
    return np.where(ok, auc, np.nan), np.where(ok, ap, np.nan)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over finite entries; NaN where a row has none."""
    finite = np.isfinite(x)
    n = finite.sum(1)
    total = np.where(finite, x, 0.0).sum(1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def weighted_headline_metrics(
    y: np.ndarray,
    scores: np.ndarray,
    task: str,
    w: np.ndarray,
    threshold: float = 0.5,
    per_class: bool = False,
) -> dict[str, np.ndarray]:
    """The task's headline metrics (``HEADLINE[task]``), each (B,), of B weighted resamples.

    Undefined values (a class without positives in a resample) are NaN, as classification_metrics
    leaves them out; multi-label labels of -1 count only where known. ``per_class`` adds each
    class's own values as ``auroc:<i>``, ``auprc:<i>`` (multi-label) and ``f1:<i>``.
    """
    y = np.asarray(y)
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    if task == "multilabel":
        n_lab = y.shape[1]
        auc = np.full((len(w), n_lab), np.nan)
        ap = np.full((len(w), n_lab), np.nan)
        f1 = np.full((len(w), n_lab), np.nan)
        pred = s >= threshold
        for c in range(n_lab):
            known = y[:, c] != -1
            pos, wc = y[known, c] == 1, w[:, known]
            auc[:, c], ap[:, c] = _weighted_auc_ap(s[known, c], pos, wc)
            tp = wc @ (pos & pred[known, c])
            fp = wc @ (~pos & pred[known, c])
            fn = wc @ (pos & ~pred[known, c])
            denom = 2 * tp + fp + fn
            has = wc.sum(1) > 0
            f1[:, c] = np.where(has, np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0), np.nan)
        out["auroc_macro"], out["auprc_macro"], out["f1_macro"] = (
            _nanmean_rows(auc),
            _nanmean_rows(ap),
            _nanmean_rows(f1),
        )
        if per_class:
            out.update(_columns(auroc=auc, auprc=ap, f1=f1))
        return out
    n_cls = s.shape[1]
    pred = s.argmax(1)
    true_1h = np.eye(n_cls)[y]
    pred_1h = np.eye(n_cls)[pred]
    t = w @ true_1h  # (B, C) weighted true counts
    p = w @ pred_1h
    tp = w @ (true_1h * pred_1h)
    total = w.sum(1)
    out["accuracy"] = tp.sum(1) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        out["balanced_accuracy"] = _nanmean_rows(np.where(t > 0, tp / t, np.nan))
        out["f1_macro"] = _nanmean_rows(np.where(t + p > 0, 2 * tp / (t + p), np.nan))
    if task == "binary":
        out["auroc"], out["auprc"] = _weighted_auc_ap(s[:, 1], y == 1, w)
    else:
        per = np.stack([_weighted_auc_ap(s[:, c], y == c, w)[0] for c in range(n_cls)], 1)
        out["auroc_macro"] = _nanmean_rows(per)
        if per_class:
            with np.errstate(invalid="ignore", divide="ignore"):
                f1 = np.where(t + p > 0, 2 * tp / (t + p), np.nan)  # a class neither true nor predicted
            out.update(_columns(auroc=per, f1=f1))
    return out


def _columns(**per: np.ndarray) -> dict[str, np.ndarray]:
    """``{"auroc": (B, C)}`` as ``{"auroc:0": (B,), "auroc:1": ...}``."""
    return {f"{name}:{c}": v[:, c] for name, v in per.items() for c in range(v.shape[1])}


def bootstrap_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) sample multiplicities of patient resamples.

    Draws exactly as ``metrics.classification.resample_index`` does (one ``rng.integers`` call per
    resample), so a seed gives the same resamples either way.
    """
    uniq, inverse = np.unique(groups, return_inverse=True)
    out = np.empty((n_boot, len(groups)))
    for b in range(n_boot):
        counts = np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
        out[b] = counts[inverse]
    return out


def weight_chunks(
    groups: np.ndarray, n_boot: int, rng: np.random.Generator, max_cells: int = 4_000_000
) -> Iterator[np.ndarray]:
    """:func:`bootstrap_weights` of ``n_boot`` resamples, in (chunk, N) blocks of bounded size."""
    chunk = max(1, min(n_boot, max_cells // max(1, len(groups))))
    for start in range(0, n_boot, chunk):
        yield bootstrap_weights(groups, min(chunk, n_boot - start), rng)


def validation_score(labels: np.ndarray, scores: np.ndarray, task: str) -> float:
    """The task's headline metric on validation, used for model selection (higher is better).

    Multi-label labels of -1 (unknown) are left out per label, as in every metric.
    """
    return float(headline_scores(labels, np.asarray(scores)[None], task)[0])
