"""Segmentation metrics: per-class Dice, IoU and HD95 per case, macro over foreground, patient bootstrap.

A *case* is one 2D image or one 3D volume. For every foreground class (background, index 0, is
never scored):

* Dice and IoU come from the case's confusion counts. A class absent from the ground truth of a case
  has no defined Dice/IoU/HD95 there: the value is NaN, left out of every mean, and counted in a
  warning (a false positive on such a case is therefore not scored; the warning says how often).
* HD95 is MONAI's symmetric 95th-percentile Hausdorff distance, in mm when the voxel spacing is known
  (NIfTI), else in pixels. A class present in the ground truth but absent from the prediction has
  no surface to measure: it is scored as the case's diagonal (the largest distance possible in
  it) and counted in a warning — never silently dropped, which would reward missing a structure.

Aggregation follows nnU-Net: a class's value is the mean over the cases where it is defined; a
``*_macro`` value is the mean of the class values (classes defined nowhere are left out with a
warning). ``dice_iou_mean`` is (dice_macro + iou_macro) / 2, the figure Baharoon et al. tabulate.
Confidence intervals resample patients (all of a patient's cases together), percentile 95 %.
"""

from __future__ import annotations

import re
import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radprobe.metrics.classification import resample_index

BASE_METRICS = ("dice", "iou", "hd95")


@dataclass
class CaseScores:
    """Per-class scores of one case: arrays of length K = number of foreground classes (NaN: undefined)."""

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray | None = None
    gt_empty: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    pred_empty: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class SegMetric:
    """One aggregated metric with its bootstrap CI."""

    name: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0


def metric_name(prefix: str, class_name: str) -> str:
    """``dice`` + ``left lung`` -> ``dice_left_lung`` (row metric names stay identifier-like)."""
    return f"{prefix}_{re.sub(r'[^0-9A-Za-z]+', '_', class_name).strip('_') or 'class'}"


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) confusion counts, rows = ground truth, columns = prediction."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from mask shape {gt.shape}")
    idx = gt.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def dice_iou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-foreground-class Dice and IoU of one case; NaN where the class is absent from ``gt``."""
    cm = confusion(pred, gt, num_classes).astype(np.float64)
    tp = np.diag(cm)[1:]
    gt_n = cm.sum(1)[1:]
    pred_n = cm.sum(0)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(gt_n > 0, 2 * tp / (gt_n + pred_n), np.nan)
        iou = np.where(gt_n > 0, tp / (gt_n + pred_n - tp), np.nan)
    return dice, iou


def hd95(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-foreground-class HD95 (MONAI) of one case, with the gt-empty and pred-empty flags.

    NaN where the class is absent from ``gt``; the case diagonal where only the prediction lacks it.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    k = num_classes - 1
    out = np.full(k, np.nan)
    gt_empty = np.zeros(k, bool)
    pred_empty = np.zeros(k, bool)
    sp = np.ones(gt.ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    diagonal = float(np.sqrt(np.sum((np.asarray(gt.shape) * sp) ** 2)))
    for c in range(1, num_classes):
        g, p = gt == c, pred == c
        gt_empty[c - 1] = not g.any()
        pred_empty[c - 1] = not p.any()
        if gt_empty[c - 1]:
            continue
        if pred_empty[c - 1]:
            out[c - 1] = diagonal
            continue
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # MONAI deprecation chatter inside its own helpers
            d = compute_hausdorff_distance(
                torch.from_numpy(p)[None, None],
                torch.from_numpy(g)[None, None],
                include_background=True,
                percentile=95,
                spacing=None if spacing is None else [float(s) for s in sp],
            )
        out[c - 1] = float(d.reshape(-1)[0])
    return out, gt_empty, pred_empty


def case_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    with_hd95: bool = True,
) -> CaseScores:
    """Dice, IoU (and HD95) of every foreground class in one case."""
    dice, iou = dice_iou(pred, gt, num_classes)
    if not with_hd95:
        gt_empty = np.isnan(dice)
        return CaseScores(dice, iou, None, gt_empty, np.zeros_like(gt_empty))
    hd, gt_empty, pred_empty = hd95(pred, gt, num_classes, spacing)
    return CaseScores(dice, iou, hd, gt_empty, pred_empty)


def _nanmean0(x: np.ndarray) -> np.ndarray:
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are expected: NaN out
        return np.nanmean(x, axis=0)


def _tables(cases: Sequence[CaseScores]) -> dict[str, np.ndarray]:
    """Base metric -> (cases, foreground classes); hd95 only when every case has it."""
    tables = {"dice": np.stack([c.dice for c in cases]), "iou": np.stack([c.iou for c in cases])}
    if all(c.hd95 is not None for c in cases):
        tables["hd95"] = np.stack([c.hd95 for c in cases])  # type: ignore[misc]
    return tables


def _aggregate(tables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-class means over cases and the macro over defined classes, for each base metric."""
    out: dict[str, np.ndarray] = {}
    for m, t in tables.items():
        per_class = _nanmean0(t)
        defined = per_class[np.isfinite(per_class)]
        out[m] = np.concatenate([[defined.mean() if len(defined) else np.nan], per_class])
    if "dice" in out and "iou" in out:
        out["dice_iou_mean"] = np.array([(out["dice"][0] + out["iou"][0]) / 2])
    return out


def mean_dice(cases: Sequence[CaseScores]) -> float:
    """Macro foreground Dice of a set of cases (model selection on validation); -inf when undefined."""
    if not cases:
        return float("-inf")
    v = _aggregate({"dice": np.stack([c.dice for c in cases])})["dice"][0]
    return float(v) if np.isfinite(v) else float("-inf")


def split_dice(preds: Sequence[np.ndarray], masks: Sequence[np.ndarray], num_classes: int) -> float:
    """Macro foreground Dice of predicted class maps against their masks (no HD95: selection only)."""
    return mean_dice(
        [case_scores(p, m, num_classes, with_hd95=False) for p, m in zip(preds, masks, strict=True)]
    )


def summarize(
    cases: Sequence[CaseScores],
    classes: Sequence[str],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    unit: str = "px",
    split: str = "test",
) -> tuple[list[SegMetric], list[str]]:
    """Aggregated metrics with patient-bootstrap CIs, and the warnings about undefined values.

    Rows come out as ``<m>_macro``, then ``<m>_<class>`` per foreground class for m in dice, iou,
    hd95, then ``dice_iou_mean``.
    """
    fg = list(classes[1:])
    n = len(cases)
    if n == 0:
        raise ValueError("no cases to score")
    tables = _tables(cases)
    gt_empty = np.stack([c.gt_empty for c in cases])
    pred_empty = np.stack([c.pred_empty for c in cases])
    warns: list[str] = []
    for k, name in enumerate(fg):
        absent = int(gt_empty[:, k].sum())
        if absent == n:
            warns.append(
                f"class {name!r} is absent from every {split} case: its dice/iou/hd95 are undefined "
                "and left out of the macro averages"
            )
        elif absent:
            warns.append(
                f"class {name!r} is absent from the ground truth of {absent} of {n} {split} cases: "
                "left out of its means there (false positives on those cases are not scored)"
            )
        missed = int((pred_empty[:, k] & ~gt_empty[:, k]).sum())
        if missed and "hd95" in tables:
            warns.append(
                f"class {name!r} was not predicted at all in {missed} {split} case(s) that contain it: "
                f"hd95 scored as the case diagonal ({unit}) there"
            )
    return bootstrap_tables(tables, classes, groups, n_boot, seed, alpha), warns


def bootstrap_tables(
    tables: dict[str, np.ndarray],
    classes: Sequence[str],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[SegMetric]:
    """Row metrics of per-case tables (base metric -> (cases, foreground classes)), with
    patient-bootstrap percentile CIs: the aggregation :func:`summarize` reports."""
    fg = list(classes[1:])
    n = len(next(iter(tables.values())))
    point = _aggregate(tables)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[np.ndarray]] = {m: [] for m in point}
    for _ in range(n_boot):
        idx = resample_index(groups, rng)
        for m, v in _aggregate({m: t[idx] for m, t in tables.items()}).items():
            boots[m].append(v)
    out: list[SegMetric] = []
    for m, values in point.items():
        names = [m] if m == "dice_iou_mean" else [f"{m}_macro"] + [metric_name(m, c) for c in fg]
        samples = np.stack(boots[m]) if boots[m] else np.empty((0, len(values)))
        for j, name in enumerate(names):
            s = samples[:, j] if len(samples) else samples.reshape(-1)
            s = s[np.isfinite(s)]
            lo, hi = (
                (float(q) for q in np.quantile(s, [alpha / 2, 1 - alpha / 2])) if len(s) else (None, None)
            )
            out.append(SegMetric(name, float(values[j]), lo if n_boot else None, hi if n_boot else None, n))
    return out


# ------------------------------------------------------------------------------ paired comparison


@dataclass
class CaseTable:
    """Per-case, per-class scores of one evaluation's test cases (kept for ``radprobe compare``)."""

    sample_ids: np.ndarray
    groups: np.ndarray
    classes: np.ndarray  # all classes, background first (as in the row metric names)
    tables: dict[str, np.ndarray]  # base metric -> (cases, foreground classes)

    @classmethod
    def of(
        cls,
        cases: Sequence[CaseScores],
        sample_ids: Sequence[str],
        groups: np.ndarray,
        classes: Sequence[str],
    ) -> CaseTable:
        """The table of scored cases, with their ids, patients and the dataset's classes."""
        ids, grp, cl = (np.asarray(x, dtype=str) for x in (sample_ids, groups, classes))
        return cls(ids, grp, cl, _tables(cases))

    def save(self, path: str | Path) -> None:
        from radprobe.utils import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                sample_ids=self.sample_ids,
                groups=self.groups,
                classes=self.classes,
                **{f"table_{m}": t for m, t in self.tables.items()},
            )

    @classmethod
    def load(cls, path: str | Path) -> CaseTable:
        with np.load(path, allow_pickle=False) as z:
            tables = {k.removeprefix("table_"): z[k] for k in z.files if k.startswith("table_")}
            return cls(z["sample_ids"], z["groups"], z["classes"], tables)

    @classmethod
    def concat(cls, parts: Sequence[CaseTable]) -> CaseTable:
        """The cases of several tables (e.g. CV folds) as one; classes and metrics must agree."""
        first = parts[0]
        if any(
            list(p.classes) != list(first.classes) or p.tables.keys() != first.tables.keys() for p in parts
        ):
            raise ValueError("case tables with other classes or metrics cannot be pooled")
        return cls(
            np.concatenate([p.sample_ids for p in parts]),
            np.concatenate([p.groups for p in parts]),
            first.classes,
            {m: np.concatenate([p.tables[m] for p in parts]) for m in first.tables},
        )

    def metric_names(self) -> list[str]:
        fg = [str(c) for c in self.classes[1:]]
        names = [n for m in self.tables for n in [f"{m}_macro", *(metric_name(m, c) for c in fg)]]
        return names + (["dice_iou_mean"] if "dice" in self.tables and "iou" in self.tables else [])

    def value(self, metric: str, idx: np.ndarray | None = None) -> float:
        """A row metric (e.g. ``dice_macro``, ``hd95_liver``) aggregated over the cases ``idx``."""
        sub = {m: t if idx is None else t[idx] for m, t in self.tables.items()}
        agg = _aggregate(sub)
        if metric == "dice_iou_mean":
            return float(agg["dice_iou_mean"][0])
        fg = [str(c) for c in self.classes[1:]]
        for m in self.tables:
            names = [f"{m}_macro", *(metric_name(m, c) for c in fg)]
            if metric in names:
                return float(agg[m][names.index(metric)])
        raise KeyError(metric)
