"""What a study's run directory holds: the jobs a study plans (with their states, when the run
exists) and the states of a run's jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radprobe.backbones.base import Preprocess
from radprobe.core.runtime import pid_alive
from radprobe.errors import RadprobeError
from radprobe.protocols import registry
from radprobe.results import ResultStore
from radprobe.run.study import dataset_spec, expand
from radprobe.run.study_config import StudyConfig


def plan(study: StudyConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Expanded jobs and the feature extractions they need, with states if the run exists."""
    jobs = expand(study)
    states: dict[str, str] = {}
    if run_dir is not None and (run_dir / "results.db").is_file():
        with ResultStore(run_dir, create=False) as store:
            states = {j["job_key"]: j["status"] for j in store.jobs()}
    # per extraction, the augmented views of train and val its jobs read (each one more extraction)
    views: dict[tuple[str, str, str, int], int] = {}
    # and the other preprocessing some jobs read (the paper kNN's centre crop): one more each
    other: dict[tuple[str, str, str, int], set[str]] = {}
    for j in jobs:
        if j.frozen:
            at = (j.backbone.name, j.backbone.weights_label, j.dataset, j.resolution or 0)
            views[at] = max(views.get(at, 0), registry.views_needed(j.protocol, j.options))
            pp = registry.eval_preprocess(j.protocol, j.options, Preprocess())
            other.setdefault(at, set()).update(
                [json.dumps(pp.to_dict(), sort_keys=True)] if pp != Preprocess() else []
            )
    extractions = sorted(views)
    datasets = []
    for d in study.datasets:
        spec = dataset_spec(study, d)
        path = spec.partition(":")[2].split("?")[0]
        datasets.append({"spec": spec, "present": spec.startswith("synthetic:") or Path(path).exists()})
    return {
        "study": study.name,
        "jobs": [{**j.spec(), "job_key": j.key, "status": states.get(j.key, "pending")} for j in jobs],
        "extractions": [
            {
                "backbone": b,
                "weights": w or None,
                "dataset": d,
                "resolution": r or None,
                **({"train_views": views[b, w, d, r]} if views[b, w, d, r] else {}),
                **({"other_preprocessing": len(other[b, w, d, r])} if other[b, w, d, r] else {}),
            }
            for b, w, d, r in extractions
        ],
        "datasets": datasets,
    }


def status(run_dir: Path) -> dict[str, Any]:
    """Counts of done / running / failed / pending (interrupted = running with a dead process), and ETA."""
    if not (run_dir / "results.db").is_file():
        raise RadprobeError(
            f"{run_dir}: no results.db here; expected a run directory of `radprobe study run`"
        )
    with ResultStore(run_dir, create=False) as store:
        jobs = store.jobs()
    counts = {"done": 0, "running": 0, "interrupted": 0, "failed": 0, "pending": 0}
    for j in jobs:
        state = j["status"]
        if state == "running" and not pid_alive(j["pid"]):
            state = "interrupted"
        j["state"] = state
        counts[state] += 1
    times = [j["wall_time_s"] for j in jobs if j["status"] == "done" and j["wall_time_s"] is not None]
    remaining = counts["pending"] + counts["running"] + counts["interrupted"] + counts["failed"]
    eta = (sum(times) / len(times)) * remaining if times else None
    return {
        "run_dir": str(run_dir),
        "total": len(jobs),
        **counts,
        "eta_s": eta,
        "failed_jobs": [
            {
                "job_key": j["job_key"],
                **{k: j["spec"].get(k) for k in ("protocol", "dataset", "seed")},
                "backbone": j["spec"].get("backbone", {}).get("name"),
                "error": (j["error"] or "").splitlines()[-1:],
            }
            for j in jobs
            if j["state"] == "failed"
        ],
    }
