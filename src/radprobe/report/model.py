"""What a report shows, computed from the result rows of a run directory.

Rows are grouped by *model* — a backbone name together with its weights digest, since the same
architecture may appear with several checkpoints (or none: random init). Cross-validation folds
(datasets named ``<base>_fold<k>``) are pooled into one derived dataset per base: classification
protocols pool the folds' saved test predictions, segmentation protocols their per-case tables, and
bootstrap over patients again; protocols without per-sample records (few-shot summaries) average the
fold values with a t-interval over folds.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.metrics.classification import HEADLINE

META_FILE = "report_meta.json"
SEGMENTATION_HEADLINE = ("dice_macro", "dice_iou_mean", "iou_macro")
FOLD_RE = re.compile(r"^(?P<pre>.*?)[_-]?fold(?P<k>\d+)(?P<post>.*)$")


# Marks a zero-width interval in tables; the report's footnote says what it means.
ZERO_WIDTH = " ⁰"


@dataclass(frozen=True)
class Cell:
    """A value with its 95% interval (either bound may be missing)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    @property
    def has_ci(self) -> bool:
        return (
            self.lo is not None and self.hi is not None and math.isfinite(self.lo) and math.isfinite(self.hi)
        )

    @property
    def zero_width(self) -> bool:
        """An interval of no width: every resample gave the same value (e.g. one test patient holds
        the class), which says nothing about uncertainty."""
        return self.has_ci and self.lo == self.hi

    def text(self, digits: int = 3) -> str:
        """``0.912 [0.880, 0.940]`` (just the value when there is no interval); a zero-width
        interval is marked ``ZERO_WIDTH``."""
        if self.value is None or not math.isfinite(self.value):
            return "n/a"
        v = f"{self.value:.{digits}f}"
        if not self.has_ci:
            return v
        return f"{v} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]{ZERO_WIDTH if self.zero_width else ''}"


def cell(row: dict[str, Any]) -> Cell:
    return Cell(float(row["value"]), row.get("ci_low"), row.get("ci_high"))


def lower_is_better(metric: str) -> bool:
    """Distances (HD95) and losses go down when a model improves."""
    return metric.startswith(("hd", "loss", "error"))


def headline_metric(task: str, metrics: Iterable[str]) -> str:
    """The metric a table leads with: the task's headline if present, else the first one given."""
    present = list(dict.fromkeys(metrics))
    preferred = HEADLINE.get(task, ()) if task in HEADLINE else SEGMENTATION_HEADLINE
    for m in preferred:
        if m in present:
            return m
    return present[0] if present else ""


def metric_order(task: str, metrics: Iterable[str]) -> list[str]:
    """Headline first, then the task's other headline metrics, then the rest in their given order."""
    present = list(dict.fromkeys(metrics))
    first = headline_metric(task, present)
    preferred = list(HEADLINE.get(task, SEGMENTATION_HEADLINE))
    rest = [m for m in preferred if m in present and m != first]
    return [first, *rest, *[m for m in present if m != first and m not in rest]]


def shots_of(row: dict[str, Any]) -> int | None:
    s = (row.get("hparams") or {}).get("shots")
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def model_key(row: dict[str, Any]) -> str:
    return f"{row['backbone']}@{row.get('weights_digest') or ''}"


@dataclass
class ReportMeta:
    """Optional ``report_meta.json`` of a run directory (written by ``radprobe demo``).

    labels: display names by weights digest or backbone name; control: weights digests (or backbone
    names) of random-init controls, which turns on the sanity gate; gate_protocols: protocols the
    gate checks (default: every protocol without a shots count); gate_skip: datasets shown but not
    gated, with the reason; settings / notes: shown verbatim.
    """

    title: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    control: list[str] = field(default_factory=list)
    gate_protocols: list[str] = field(default_factory=list)
    gate_skip: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pool_bootstrap: int = 1000

    @classmethod
    def load(cls, run_dir: Path) -> ReportMeta:
        path = Path(run_dir) / META_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str) + "\n"


def model_labels(rows: Sequence[dict[str, Any]], meta: ReportMeta) -> dict[str, str]:
    """Display label per model key: from the meta file, else the backbone name, disambiguated by
    weights (``[random init]`` or a digest prefix) when one backbone appears with several."""
    digests: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        digests[r["backbone"]].add(r.get("weights_digest") or "")
    out: dict[str, str] = {}
    for r in rows:
        key = model_key(r)
        if key in out:
            continue
        d = r.get("weights_digest") or ""
        label = meta.labels.get(d) or meta.labels.get(key)
        if not label:
            label = r["backbone"]
            if len(digests[r["backbone"]]) > 1:
                label += " [random init]" if d.startswith("random-init") else f" [{d[:8]}]"
            label = meta.labels.get(r["backbone"], label)
        out[key] = label
    return out


def is_control(row: dict[str, Any], meta: ReportMeta) -> bool:
    d = row.get("weights_digest") or ""
    return d in meta.control or row["backbone"] in meta.control or model_key(row) in meta.control


# ------------------------------------------------------------------------------ fold pooling


def fold_base(dataset: str) -> tuple[str, int] | None:
    m = FOLD_RE.match(dataset)
    if not m:
        return None
    return m.group("pre") + m.group("post"), int(m.group("k"))


def _hkey(row: dict[str, Any]) -> str:
    return json.dumps(row.get("hparams") or {}, sort_keys=True, default=str)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Binary AUROC from average ranks (Mann-Whitney U), NaN when one class is absent."""
    from scipy.stats import rankdata

    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _point(y: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    pred = scores.argmax(1)
    classes = range(scores.shape[1])
    recall = [np.mean(pred[y == c] == c) for c in classes if (y == c).any()]
    f1 = []
    for c in classes:
        tp = np.sum((pred == c) & (y == c))
        denom = np.sum(pred == c) + np.sum(y == c)
        f1.append(2 * tp / denom if denom else 0.0)
    out = {"accuracy": float(np.mean(pred == y)), "balanced_accuracy": float(np.mean(recall))}
    if task == "binary":
        out["auroc"] = _auroc(y, scores[:, 1])
    else:
        aucs = [_auroc((y == c).astype(int), scores[:, c]) for c in classes]
        out["auroc_macro"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    out["f1_macro"] = float(np.mean(f1))
    return out


@dataclass
class PooledMetric:
    name: str
    value: float
    ci_low: float | None
    ci_high: float | None


def pooled_metrics(
    y: np.ndarray, scores: np.ndarray, task: str, groups: np.ndarray, n_boot: int, seed: int = 0
) -> list[PooledMetric]:
    """Headline metrics of pooled fold predictions with a percentile patient bootstrap.

    Computed with numpy (ranks for AUROC) rather than scikit-learn: the report resamples thousands
    of times and scikit-learn's input validation would dominate; tests check both agree.
    """
    from radprobe.metrics.classification import resample_index

    y = np.asarray(y).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    point = _point(y, scores, task)
    names = [m for m in HEADLINE[task] if m in point]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(n_boot):
        idx = resample_index(np.asarray(groups), rng)
        vals = _point(y[idx], scores[idx], task)
        for m in names:
            if np.isfinite(vals[m]):
                samples[m].append(vals[m])
    out = []
    for m in names:
        s = np.asarray(samples[m])
        lo, hi = (float(q) for q in np.quantile(s, [0.025, 0.975])) if len(s) else (None, None)
        out.append(PooledMetric(m, point[m], lo, hi))
    return out


def _pool_predictions(paths: list[Path], task: str, n_boot: int) -> list[dict[str, Any]]:
    """Classification rows of the folds' saved test predictions pooled, one per headline metric;
    none when a sample appears in two folds (not a cross-validation)."""
    from radprobe.results.predictions import Predictions

    loaded = [Predictions.load(p) for p in paths]
    ids = np.concatenate([p.sample_ids for p in loaded])
    if len(set(ids.tolist())) != len(ids):
        return []
    labels = np.concatenate([p.labels for p in loaded])
    scores = np.concatenate([p.scores for p in loaded])
    groups = np.concatenate([p.groups for p in loaded])
    return [
        {
            "metric": m.name,
            "value": m.value,
            "ci_low": m.ci_low if n_boot else None,
            "ci_high": m.ci_high if n_boot else None,
            "n": len(labels),
            "n_test": len(labels),
        }
        for m in pooled_metrics(labels, scores, task, groups, n_boot)
    ]


def _pool_case_tables(
    paths: list[Path], by_eval: dict[str, list[dict[str, Any]]], n_boot: int
) -> list[dict[str, Any]]:
    """Segmentation rows of the folds' per-case tables pooled, one per metric the folds report;
    none when a case appears in two folds (not a cross-validation) or the tables disagree."""
    from radprobe.metrics.segmentation import CaseTable

    try:
        table = CaseTable.concat([CaseTable.load(p) for p in paths])
    except (OSError, ValueError, KeyError):
        return []
    if len(set(table.sample_ids.tolist())) != len(table.sample_ids):
        return []
    metrics = {m.name: m for m in table.metrics(n_boot)}
    wanted = [r["metric"] for r in next(iter(by_eval.values()))]
    return [
        {
            "metric": name,
            "value": metrics[name].value,
            "ci_low": metrics[name].ci_low if n_boot else None,
            "ci_high": metrics[name].ci_high if n_boot else None,
            "n": len(table.sample_ids),
            "n_test": len(table.sample_ids),
        }
        for name in wanted
        if name in metrics
    ]


def pool_folds(rows: Sequence[dict[str, Any]], run_dir: Path, n_boot: int = 1000) -> list[dict[str, Any]]:
    """Derived rows, one per (model, fold base, protocol, hparams, metric), for every base that has
    at least two folds with the same set of evaluations."""
    from radprobe.results.predictions import predictions_path

    bases: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        fb = fold_base(r["dataset"])
        if fb:
            bases[fb[0]].add(fb[1])
    bases = {b: ks for b, ks in bases.items() if len(ks) >= 2}
    groups: dict[tuple[str, str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        fb = fold_base(r["dataset"])
        if fb and fb[0] in bases:
            groups[(model_key(r), fb[0], r["protocol"], _hkey(r), int(r.get("seed") or 0))].append(r)
    out: list[dict[str, Any]] = []
    for (_, base, _, _, _), members in sorted(groups.items()):
        folds = sorted({fold_base(r["dataset"])[1] for r in members})  # type: ignore[index]
        if folds != sorted(bases[base]):
            continue  # a fold is missing for this evaluation: nothing honest to pool
        k = len(folds)
        name = f"{base} (CV, {k} folds)"
        by_eval: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in members:
            by_eval[r["eval_key"]].append(r)
        first = members[0]
        task = first.get("task") or ""
        preds = [predictions_path(run_dir, ek) for ek in by_eval]
        pooled: list[dict[str, Any]] = []
        what = ""
        if len(by_eval) == k and all(p.is_file() for p in preds):
            if task in ("binary", "multiclass"):
                pooled, what = _pool_predictions(preds, task, n_boot), "test predictions"
            elif task == "segmentation":
                pooled, what = _pool_case_tables(preds, by_eval, n_boot), "test cases"
        warnings = sorted({w for r in members for w in (r.get("warnings") or [])})
        for row in pooled:
            out.append(
                {
                    **first,
                    **row,
                    "dataset": name,
                    "ci_method": f"{what} of {k} folds pooled; patient bootstrap x{n_boot}",
                    "eval_key": "",
                    "derived": True,
                    "warnings": warnings,
                }
            )
        if pooled:
            continue
        by_metric: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in members:
            by_metric[r["metric"]].append(r)
        for rs in by_metric.values():
            if len(rs) != k:
                continue
            vals = np.array([float(r["value"]) for r in rs])
            mean = float(np.nanmean(vals))
            lo = hi = None
            if k > 1 and np.isfinite(vals).all():
                from scipy import stats

                half = float(stats.t.ppf(0.975, k - 1) * vals.std(ddof=1) / math.sqrt(k))
                lo, hi = mean - half, mean + half
            out.append(
                {
                    **rs[0],
                    "dataset": name,
                    "value": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "ci_method": f"mean of {k} folds, t-interval over folds",
                    "n": int(sum(int(r.get("n") or 0) for r in rs)),
                    "n_test": int(sum(int(r.get("n_test") or 0) for r in rs)),
                    "eval_key": "",
                    "derived": True,
                    "warnings": sorted({w for r in rs for w in (r.get("warnings") or [])}),
                }
            )
    return out


def collapse_seeds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, dataset, protocol, hparams, metric): rows of several seeds become their
    mean, with the envelope of the per-seed intervals (a conservative summary, labelled as such)."""
    grouped: dict[tuple[str, str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[(model_key(r), r["dataset"], r["protocol"], _hkey(r), r["metric"])].append(r)
    out = []
    for rs in grouped.values():
        seeds = sorted({int(r.get("seed") or 0) for r in rs})
        if len(rs) == 1 or len(seeds) == 1:
            out.extend(rs)
            continue
        los = [r["ci_low"] for r in rs if r.get("ci_low") is not None]
        his = [r["ci_high"] for r in rs if r.get("ci_high") is not None]
        full = len(los) == len(his) == len(rs)
        out.append(
            {
                **rs[0],
                "value": float(np.mean([float(r["value"]) for r in rs])),
                "ci_low": min(los) if full else None,
                "ci_high": max(his) if full else None,
                "ci_method": f"mean over seeds {seeds}; interval: envelope of the per-seed 95% CIs",
                "seeds": seeds,
            }
        )
    return out


# ------------------------------------------------------------------------------ sanity gate


@dataclass
class GateResult:
    """Pretrained models against the random-init control on one dataset and protocol."""

    dataset: str
    protocol: str
    metric: str
    control: Cell
    pretrained: dict[str, Cell]
    beats: dict[str, bool]

    @property
    def passed(self) -> bool:
        return bool(self.beats) and all(self.beats.values())


def beats_control(model: Cell, control: Cell, metric: str) -> bool:
    """Strictly better beyond both intervals (bounds fall back to the point value when missing)."""
    m_lo = model.lo if model.has_ci else model.value
    m_hi = model.hi if model.has_ci else model.value
    c_lo = control.lo if control.has_ci else control.value
    c_hi = control.hi if control.has_ci else control.value
    return bool(m_hi < c_lo) if lower_is_better(metric) else bool(m_lo > c_hi)


def sanity_gate(rows: Sequence[dict[str, Any]], labels: dict[str, str], meta: ReportMeta) -> list[GateResult]:
    """Every dataset x gated protocol where a control and at least one pretrained model were run."""
    if not meta.control:
        return []
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        gated = not meta.gate_protocols or r["protocol"] in meta.gate_protocols
        if shots_of(r) is None and gated and r["dataset"] not in meta.gate_skip:
            grouped[(r["dataset"], r["protocol"])].append(r)
    out: list[GateResult] = []
    for (dataset, protocol), rs in grouped.items():
        metric = headline_metric(rs[0].get("task") or "", [r["metric"] for r in rs])
        heads = [r for r in rs if r["metric"] == metric]
        ctrl = [r for r in heads if is_control(r, meta)]
        pre = [r for r in heads if not is_control(r, meta)]
        if not ctrl or not pre:
            continue
        c = cell(ctrl[0])
        cells = {labels[model_key(r)]: cell(r) for r in pre}
        out.append(
            GateResult(
                dataset,
                protocol,
                metric,
                c,
                cells,
                {k: beats_control(v, c, metric) for k, v in cells.items()},
            )
        )
    return sorted(out, key=lambda g: (g.dataset, g.protocol))


def gate_by_task(results: Sequence[GateResult]) -> dict[str, bool]:
    """PASS per dataset: every gated protocol passed."""
    out: dict[str, bool] = {}
    for g in results:
        out[g.dataset] = out.get(g.dataset, True) and g.passed
    return out
