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

* NSD (normalised surface Dice, Nikolov et al. 2021) at a stated tolerance: the share of both
  surfaces (voxels of each mask that touch its outside, 1-connectivity) lying within the tolerance
  of the other surface. The tolerance and its unit are part of the metric name: ``nsd@2mm`` where
  the voxel spacing is known, ``nsd@2px`` where it is not (see :data:`NSD_TOLERANCE`). A class
  absent from the ground truth is NaN (as for Dice); present but not predicted, it scores 0.

Aggregation follows nnU-Net: a class's value is the mean over the cases where it is defined; a
``*_macro`` value is the mean of the class values (classes defined nowhere are left out with a
warning). ``dice_iou_mean`` is (dice_macro + iou_macro) / 2, that figure averaged per case.

Pooled metrics add the aggregation of the paper's code (torchmetrics, whose states sum over every
test pixel before the ratio is taken): per class, the intersections and sizes are summed over the
cases first, then the ratio is taken, then averaged over the foreground classes where it is defined.

* ``dice_pooled``: 2 * sum(TP) / (sum(|pred|) + sum(|gt|)); torchmetrics ``Dice(average="macro",
  ignore_index=0)`` of the paper's ``build_segmentation_metrics``.
* ``iou_pooled``: sum(TP) / sum(|pred OR gt|), the IoU that matches ``dice_pooled``.
* ``iou_pooled_paper``: what ``MulticlassJaccardIndex(average="macro", ignore_index=0)`` of
  torchmetrics 1.0.3 computes there: pixels whose *ground truth* is background are dropped before
  counting, so a foreground class predicted on background is not a false positive (it is higher
  than ``iou_pooled`` whenever a model over-segments).
* ``dice_iou_mean_paper``: (dice_pooled_macro + iou_pooled_paper_macro) / 2, the "averaged Dice
  and Jaccard" of the paper's figures, computed as its code computes them.

Each case keeps its (C, C) confusion counts, so a bootstrap resample of patients pools its own
cases. Confidence intervals resample patients (all of a patient's cases together), percentile 95 %.
"""

from __future__ import annotations

import re
import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radprobe.metrics.classification import resample_index
from radprobe.metrics.surface import surface_dice

BASE_METRICS = ("dice", "iou", "hd95")
POOLED_METRICS = ("dice_pooled", "iou_pooled", "iou_pooled_paper")
PAPER_MEAN = "dice_iou_mean_paper"  # (dice_pooled_macro + iou_pooled_paper_macro) / 2
SINGLE = ("dice_iou_mean", PAPER_MEAN)  # one value each, no per-class rows

# Default NSD tolerance by distance unit: "mm" where every case's voxel spacing is known (CT and MRI
# volumes read from NIfTI headers), "px" where it is not (PNG/JPEG images, 2D X-rays). 2 mm is about
# two to three in-plane voxels of abdominal CT or brain MRI and finer than a typical 3-5 mm slice;
# override it per protocol with ``nsd_tolerance_mm``. Tolerances are task-specific (Metrics
# Reloaded): the metric name always says which one was used.
NSD_TOLERANCE = {"mm": 2.0, "px": 2.0}


def nsd_name(tolerance: float, unit: str) -> str:
    """``nsd@2mm``: the base metric name, which states the tolerance and its unit."""
    return f"nsd@{tolerance:g}{unit}"


@dataclass
class CaseScores:
    """Per-class scores of one case: arrays of length K = number of foreground classes (NaN: undefined)."""

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray | None = None
    gt_empty: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    pred_empty: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    confusion: np.ndarray | None = None  # (C, C) counts, rows = ground truth (pooled metrics)
    nsd: np.ndarray | None = None
    nsd_name: str = ""  # e.g. "nsd@2mm": the tolerance and its unit


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


def dice_iou(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, cm: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-foreground-class Dice and IoU of one case; NaN where the class is absent from ``gt``
    (``cm``: the case's confusion counts, when already counted)."""
    cm = (confusion(pred, gt, num_classes) if cm is None else cm).astype(np.float64)
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
    nsd_tolerance: float | None = None,
) -> CaseScores:
    """Dice, IoU, confusion counts (and the surface metrics: HD95 and NSD) of one case.

    ``nsd_tolerance``: in mm with ``spacing``, else pixels; None: :data:`NSD_TOLERANCE` of the unit.
    """
    cm = confusion(pred, gt, num_classes)
    dice, iou = dice_iou(pred, gt, num_classes, cm)
    if not with_hd95:
        gt_empty = np.isnan(dice)
        return CaseScores(dice, iou, None, gt_empty, np.zeros_like(gt_empty), confusion=cm)
    hd, gt_empty, pred_empty = hd95(pred, gt, num_classes, spacing)
    unit = "px" if spacing is None else "mm"
    tol = NSD_TOLERANCE[unit] if nsd_tolerance is None else float(nsd_tolerance)
    nsd = surface_dice(pred, gt, num_classes, tol, spacing)
    return CaseScores(dice, iou, hd, gt_empty, pred_empty, cm, nsd, nsd_name(tol, unit))


def _nanmean0(x: np.ndarray) -> np.ndarray:
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are expected: NaN out
        return np.nanmean(x, axis=0)


def _tables(cases: Sequence[CaseScores]) -> dict[str, np.ndarray]:
    """Base metric -> (cases, foreground classes); hd95 and nsd only when every case has them."""
    tables = {"dice": np.stack([c.dice for c in cases]), "iou": np.stack([c.iou for c in cases])}
    if all(c.hd95 is not None for c in cases):
        tables["hd95"] = np.stack([c.hd95 for c in cases])  # type: ignore[misc]
    names = {c.nsd_name for c in cases}
    if all(c.nsd is not None for c in cases) and len(names) == 1:
        tables[names.pop()] = np.stack([c.nsd for c in cases])  # type: ignore[misc]
    return tables


def _confusions(cases: Sequence[CaseScores]) -> np.ndarray | None:
    """(cases, C, C) confusion counts, or None when a case lacks them."""
    if not cases or any(c.confusion is None for c in cases):
        return None
    return np.stack([c.confusion for c in cases]).astype(np.int64)  # type: ignore[misc]


def pooled(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled metrics of summed confusion counts ``cm`` (C, C): base metric -> per-foreground-class
    values (NaN where the denominator is 0, as torchmetrics leaves such classes out of its mean)."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)[1:]
    gt_n, pred_n = cm.sum(1)[1:], cm.sum(0)[1:]
    # the paper's IoU: rows of background ground truth dropped before counting
    pred_fg = cm[1:, 1:].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "dice_pooled": np.where(gt_n + pred_n > 0, 2 * tp / (gt_n + pred_n), np.nan),
            "iou_pooled": np.where(gt_n + pred_n - tp > 0, tp / (gt_n + pred_n - tp), np.nan),
            "iou_pooled_paper": np.where(gt_n + pred_fg - tp > 0, tp / (gt_n + pred_fg - tp), np.nan),
        }


def _macro(per_class: np.ndarray) -> np.ndarray:
    """[macro over defined classes, *per_class]."""
    defined = per_class[np.isfinite(per_class)]
    return np.concatenate([[defined.mean() if len(defined) else np.nan], per_class])


def _aggregate(tables: dict[str, np.ndarray], cm: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-class means over cases and the macro over defined classes, for each base metric; with
    the cases' confusion counts ``cm`` (cases, C, C), the pooled metrics too."""
    out: dict[str, np.ndarray] = {m: _macro(_nanmean0(t)) for m, t in tables.items()}
    if "dice" in out and "iou" in out:
        out["dice_iou_mean"] = np.array([(out["dice"][0] + out["iou"][0]) / 2])
    if cm is not None:
        out.update({m: _macro(v) for m, v in pooled(cm.sum(0)).items()})
        # the figure Baharoon et al. plot ("averaged Dice and Jaccard"): torchmetrics' pooled values
        out[PAPER_MEAN] = np.array([(out["dice_pooled"][0] + out["iou_pooled_paper"][0]) / 2])
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
    hd95 and nsd (e.g. ``nsd@2mm_macro``), then ``dice_iou_mean``, then the pooled metrics
    (``dice_pooled_macro``, ``iou_pooled_<class>``, ...).
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
    return bootstrap_tables(tables, classes, groups, n_boot, seed, alpha, _confusions(cases)), warns


def bootstrap_tables(
    tables: dict[str, np.ndarray],
    classes: Sequence[str],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    confusion: np.ndarray | None = None,
) -> list[SegMetric]:
    """Row metrics of per-case tables (base metric -> (cases, foreground classes)), with
    patient-bootstrap percentile CIs: the aggregation :func:`summarize` reports. With the cases'
    ``confusion`` counts (cases, C, C), the pooled metrics too: each resample pools its own cases."""
    fg = list(classes[1:])
    n = len(next(iter(tables.values())))
    point = _aggregate(tables, confusion)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    boots: dict[str, list[np.ndarray]] = {m: [] for m in point}
    for _ in range(n_boot):
        idx = resample_index(groups, rng)
        cm = None if confusion is None else confusion[idx]
        for m, v in _aggregate({m: t[idx] for m, t in tables.items()}, cm).items():
            boots[m].append(v)
    out: list[SegMetric] = []
    for m, values in point.items():
        names = [m] if m in SINGLE else [f"{m}_macro"] + [metric_name(m, c) for c in fg]
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
    confusion: np.ndarray | None = None  # (cases, C, C) counts: the pooled metrics (None: older tables)

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
        return cls(ids, grp, cl, _tables(cases), _confusions(cases))

    def save(self, path: str | Path) -> None:
        from radprobe.utils import atomic_path

        extra = {} if self.confusion is None else {"confusion": self.confusion}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                sample_ids=self.sample_ids,
                groups=self.groups,
                classes=self.classes,
                **{f"table_{m}": t for m, t in self.tables.items()},
                **extra,
            )

    @classmethod
    def load(cls, path: str | Path) -> CaseTable:
        with np.load(path, allow_pickle=False) as z:
            tables = {k.removeprefix("table_"): z[k] for k in z.files if k.startswith("table_")}
            cm = z["confusion"] if "confusion" in z.files else None
            return cls(z["sample_ids"], z["groups"], z["classes"], tables, cm)

    @classmethod
    def concat(cls, parts: Sequence[CaseTable]) -> CaseTable:
        """The cases of several tables (e.g. CV folds) as one; classes and metrics must agree."""
        first = parts[0]
        if any(
            list(p.classes) != list(first.classes) or p.tables.keys() != first.tables.keys() for p in parts
        ):
            raise ValueError("case tables with other classes or metrics cannot be pooled")
        with_cm = all(p.confusion is not None for p in parts)
        return cls(
            np.concatenate([p.sample_ids for p in parts]),
            np.concatenate([p.groups for p in parts]),
            first.classes,
            {m: np.concatenate([p.tables[m] for p in parts]) for m in first.tables},
            np.concatenate([p.confusion for p in parts]) if with_cm else None,  # type: ignore[misc]
        )

    def take(self, idx: Sequence[int] | np.ndarray) -> CaseTable:
        """The cases ``idx``, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        cm = None if self.confusion is None else self.confusion[idx]
        return CaseTable(
            self.sample_ids[idx],
            self.groups[idx],
            self.classes,
            {m: t[idx] for m, t in self.tables.items()},
            cm,
        )

    def metrics(self, n_boot: int = 1000, seed: int = 0) -> list[SegMetric]:
        """Every row metric of the table, with patient-bootstrap CIs (as the rows were made)."""
        return bootstrap_tables(
            self.tables, list(self.classes), self.groups, n_boot, seed, confusion=self.confusion
        )

    def _bases(self) -> list[str]:
        return [*self.tables, *(POOLED_METRICS if self.confusion is not None else ())]

    def metric_names(self) -> list[str]:
        fg = [str(c) for c in self.classes[1:]]
        names = [n for m in self.tables for n in [f"{m}_macro", *(metric_name(m, c) for c in fg)]]
        names += ["dice_iou_mean"] if "dice" in self.tables and "iou" in self.tables else []
        pooled_ = POOLED_METRICS if self.confusion is not None else ()
        names += [n for m in pooled_ for n in [f"{m}_macro", *(metric_name(m, c) for c in fg)]]
        return names + ([PAPER_MEAN] if self.confusion is not None else [])

    def value(self, metric: str, idx: np.ndarray | None = None) -> float:
        """A row metric (e.g. ``dice_macro``, ``hd95_liver``, ``dice_pooled_macro``) aggregated over
        the cases ``idx``."""
        sub = {m: t if idx is None else t[idx] for m, t in self.tables.items()}
        cm = self.confusion if self.confusion is None or idx is None else self.confusion[idx]
        agg = _aggregate(sub, cm)
        if metric in SINGLE:
            return float(agg[metric][0])
        fg = [str(c) for c in self.classes[1:]]
        for m in self._bases():
            names = [f"{m}_macro", *(metric_name(m, c) for c in fg)]
            if metric in names:
                return float(agg[m][names.index(metric)])
        raise KeyError(metric)
