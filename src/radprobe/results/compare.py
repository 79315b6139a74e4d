"""Find two backbones' evaluations in a run and compare them with a paired bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radprobe.errors import OptionError, RadprobeError
from radprobe.metrics.classification import HEADLINE
from radprobe.metrics.paired import PairedComparison, paired_bootstrap, paired_bootstrap_fn
from radprobe.results.predictions import Predictions, predictions_path
from radprobe.results.store import ResultStore


def _task(labels: np.ndarray, scores: np.ndarray) -> str:
    if labels.ndim == 2:
        return "multilabel"
    return "binary" if scores.shape[1] == 2 else "multiclass"


def _latest(rows: list[dict], backbone: str, protocol: str, dataset: str | None) -> dict:
    hits = [r for r in rows if r["backbone"] == backbone and r["protocol"] == protocol]
    if dataset is not None:
        hits = [r for r in hits if r["dataset"] == dataset]
    if not hits:
        raise RadprobeError(f"no {protocol} evaluation of backbone {backbone!r} in this run")
    datasets = {r["dataset"] for r in hits}
    if len(datasets) > 1:
        raise RadprobeError(
            f"backbone {backbone!r} has {protocol} results on {sorted(datasets)}; pass --dataset"
        )
    return hits[-1]


def compare_backbones(
    run_dir: str | Path,
    a: str,
    b: str,
    protocol: str,
    dataset: str | None = None,
    metric: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of ``metric`` between the latest evaluations of backbones ``a`` and ``b``."""
    run_dir = Path(run_dir)
    if not (run_dir / "results.db").is_file():
        raise RadprobeError(
            f"{run_dir}: no results.db here; expected a run directory written by `radprobe eval`"
        )
    with ResultStore(run_dir, create=False) as store:
        rows = store.rows()
    ra = _latest(rows, a, protocol, dataset)
    rb = _latest(rows, b, protocol, dataset or ra["dataset"])
    if ra["split_digest"] != rb["split_digest"]:
        raise RadprobeError(
            f"{a} and {b} were scored on different test splits; a paired test needs the same samples"
        )
    pa_path, pb_path = predictions_path(run_dir, ra["eval_key"]), predictions_path(run_dir, rb["eval_key"])
    for p in (pa_path, pb_path):
        if not p.is_file():
            raise RadprobeError(f"{p}: predictions missing; rerun the evaluation to write them")
    if ra.get("task") == "segmentation":
        return _compare_cases(pa_path, pb_path, a, b, metric, n_boot, seed)
    pa, pb = Predictions.load(pa_path), Predictions.load(pb_path)
    order = {s: i for i, s in enumerate(pb.sample_ids)}
    if set(order) != set(pa.sample_ids):
        raise RadprobeError(f"{a} and {b} predictions cover different samples")
    idx = np.array([order[s] for s in pa.sample_ids])
    task = _task(pa.labels, pa.scores)
    metric = metric or HEADLINE[task][0]
    if metric not in HEADLINE[task]:
        raise OptionError(
            "--metric", f"{metric!r}: expected one of {', '.join(HEADLINE[task])}", setting="metric"
        )
    return paired_bootstrap(pa.labels, pa.scores, pb.scores[idx], task, metric, pa.groups, n_boot, seed)


def _compare_cases(
    pa_path: Path, pb_path: Path, a: str, b: str, metric: str | None, n_boot: int, seed: int
) -> PairedComparison:
    """Segmentation: resample patients over the per-case scores and aggregate both as the rows do."""
    from radprobe.metrics.segmentation import CaseTable

    ta, tb = CaseTable.load(pa_path), CaseTable.load(pb_path)
    order = {s: i for i, s in enumerate(tb.sample_ids)}
    if set(order) != set(ta.sample_ids):
        raise RadprobeError(f"{a} and {b} were scored on different cases")
    tb = tb.take([order[s] for s in ta.sample_ids])
    theirs = set(tb.metric_names())  # e.g. a table saved before NSD or the pooled metrics existed
    names = [n for n in ta.metric_names() if n in theirs]
    metric = metric or "dice_macro"
    if metric not in names:
        raise OptionError("--metric", f"{metric!r}: expected one of {', '.join(names)}", setting="metric")
    return paired_bootstrap_fn(
        lambda idx: ta.value(metric, idx), lambda idx: tb.value(metric, idx), metric, ta.groups, n_boot, seed
    )
