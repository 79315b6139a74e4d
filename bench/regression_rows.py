"""Regression rows of the evaluation middle: the same small matrix before and after a change.

``run`` drives a fixed matrix (2 tiny backbones x 4 synthetic datasets x every protocol that applies
x 2 seeds) through the command line: one ``radprobe study run`` per (backbone, dataset), two at a
time, each with a fresh feature cache and one thread per process (results then do not depend on the
core count). It reads every row of the results databases and writes them normalised: run identity,
timings, memory, environment and paths dropped, rows sorted. ``compare`` matches two such files row
by row and exits 1 when any value, CI, count or selection differs beyond ``--atol`` (a changed
``eval_key`` or digest alone is reported, not failed).

    python bench/regression_rows.py run OUT.json [--workdir DIR] [--resume]
    python bench/regression_rows.py compare BASE.json NEW.json [--atol 1e-6]

The studies run as ``python -m radprobe`` under this interpreter, with this environment (PYTHONPATH
included): run the script with the Python of the code under test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

BACKBONES = ("test:vit-tiny", "test:cnn-tiny")
SEEDS = (0, 1)
BOOTSTRAP = 50
FROZEN = ("knn", "linear", "logreg", "fewshot")
SEGMENTATION = ("seg-linear", "seg-decoder", "seg-unet")
TRAINED = ("finetune", "lora", "dora", "bitfit", "vpt", "partial")
# Every protocol that applies to each dataset's task (SKIPS takes out what the code does not
# support), heaviest dataset first: studies start in this order.
DATASETS: dict[str, tuple[str, ...]] = {
    "synthetic:seg3d": (*SEGMENTATION, *TRAINED),
    "synthetic:seg2d": (*SEGMENTATION, *TRAINED),
    "synthetic:cls2d-multilabel": (*FROZEN, *TRAINED),
    "synthetic:cls3d": (*FROZEN, "mil", *TRAINED),
}
# seg3d's slices are 32 px: read at that size instead of upsampled to the backbones' native 64 px.
RESOLUTION = {"synthetic:seg3d": 32}
# (backbone or "*", dataset or "*", protocol, reason)
SKIPS: tuple[tuple[str, str, str, str], ...] = (
    ("test:cnn-tiny", "*", "vpt", "vpt prepends prompt tokens: needs a timm ViT backbone"),
    *(
        ("*", "synthetic:cls3d", p, "trained protocols classify 2D images only (3D: segmentation only)")
        for p in TRAINED
    ),
    (
        "test:cnn-tiny",
        "*",
        "seg-unet",
        "backbone-free reference: one job per dataset, run once (rows carry backbone monai:unet)",
    ),
)
# Small grids and one-epoch schedules: the whole matrix runs in minutes on 2 CPU cores.
_FEWSHOT_LINEAR = {"lrs": [0.01, 0.1], "n_blocks": [1], "avgpool": [False], "epochs": 2, "min_iterations": 20}
_TRAIN = {"epochs": 1, "batch_size": 32, "keep_checkpoints": False}
OPTIONS: dict[str, dict[str, Any]] = {
    "knn": {"ks": [5, 10, 20]},
    "linear": {"lrs": [0.001, 0.01, 0.1], "epochs": 2, "min_iterations": 30},
    "logreg": {"cs": [0.01, 1.0, 100.0], "max_iter": 200},
    "fewshot": {
        "shots": [1, 4],
        "repeats": 2,
        "inner": {"linear": _FEWSHOT_LINEAR, "logreg": {"cs": [0.1, 10.0], "max_iter": 100}},
    },
    "mil": {"lrs": [0.001, 0.01], "epochs": 2, "min_steps": 10, "hidden": 32},
    "seg-linear": {"lrs": [0.003, 0.03], "epochs": 1, "min_steps": 10},
    "seg-decoder": {"lrs": [0.001], "epochs": 1, "min_steps": 10, "channels": 16},
    "seg-unet": {"lrs": [0.001], "epochs": 1, "min_steps": 10, "channels": [8, 16, 32], "res_units": 1},
    **{p: dict(_TRAIN) for p in TRAINED},
}
# LoRA/DoRA adapt the Linear layers inside blocks by default; the ResNet's blocks have none, so
# they adapt its blocks' 3x3 convolutions instead.
_CONVS = {"targets": ["conv1", "conv2"]}
BACKBONE_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {"test:cnn-tiny": {"lora": _CONVS, "dora": _CONVS}}
# One intra-op thread per study process: CPU results then do not follow the machine's core count.
THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}

IDENTITY = ("backbone", "dataset", "protocol", "metric", "seed", "hparams")
FLOATS = ("value", "ci_low", "ci_high")
EXACT = (
    "ci_method",
    "n",
    "n_train",
    "n_val",
    "n_test",
    "trainable_params",
    "params",
    "task",
    "num_classes",
    "resolution",
)
# What defines the matrix: two files can only be compared when these agree.
MATRIX = (
    "backbones",
    "datasets",
    "resolution",
    "seeds",
    "bootstrap",
    "options",
    "backbone_options",
    "threads",
)
# Keys that may change without changing what was evaluated: reported, never failed.
KEYS = ("eval_key", "weights_digest", "manifest_digest", "split_digest")
# Entries of ``selected`` that measure the run, not the result (imgs_per_s, train_imgs_per_s, ...).
_RUN_SPECIFIC = re.compile(r"time|wall|_s$|peak|mem_mb|throughput|elapsed")


def skip_reason(backbone: str, dataset: str, protocol: str) -> str | None:
    """Why the combination is left out of the matrix, or None when it runs."""
    for b, d, p, reason in SKIPS:
        if b in ("*", backbone) and d in ("*", dataset) and p == protocol:
            return reason
    return None


def studies() -> list[dict[str, Any]]:
    """One study file per (backbone, dataset) that has jobs, heaviest dataset first."""
    out = []
    for spec, protocols in DATASETS.items():
        for backbone in BACKBONES:
            run = [p for p in protocols if skip_reason(backbone, spec, p) is None]
            if not run:
                continue
            entry: dict[str, Any] = {"spec": spec}
            if spec in RESOLUTION:
                entry["resolution"] = RESOLUTION[spec]
            name = f"{backbone}-{spec}".replace(":", "-")
            out.append(
                {
                    "name": f"regression-{name}",
                    "backbones": [backbone],
                    "datasets": [entry],
                    "protocols": {
                        p: {**OPTIONS[p], **BACKBONE_OPTIONS.get(backbone, {}).get(p, {})} for p in run
                    },
                    "seeds": list(SEEDS),
                    "bootstrap": BOOTSTRAP,
                    "device": "cpu",
                }
            )
    return out


def skipped() -> list[dict[str, str]]:
    """Every combination left out, with its reason."""
    return [
        {"backbone": b, "dataset": d, "protocol": p, "reason": r}
        for b in BACKBONES
        for d, protocols in DATASETS.items()
        for p in protocols
        if (r := skip_reason(b, d, p)) is not None
    ]


def _strip(obj: Any) -> Any:
    """``selected`` without run-specific entries (timings, throughput, memory), at any depth."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not _RUN_SPECIFIC.search(str(k))}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def read_rows(db: Path) -> list[dict[str, Any]]:
    """Every row of one results database, normalised."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        raw = [dict(r) for r in con.execute("SELECT * FROM results ORDER BY row_id")]
    finally:
        con.close()
    rows = []
    for r in raw:
        row = {k: r[k] for k in ("backbone", "dataset", "protocol", "metric", "seed")}
        row["hparams"] = canonical(json.loads(r["hparams"] or "{}"))
        row.update({k: r[k] for k in (*FLOATS, *EXACT)})
        row["selected"] = _strip(json.loads(r["selected"] or "{}"))
        row.update({k: r[k] for k in KEYS})
        rows.append(row)
    return rows


def _row_id(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(r[k] for k in IDENTITY)


def _unfinished(db: Path) -> list[dict[str, Any]]:
    """Jobs of a study's database that are not done, with the last line of their error."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        jobs = con.execute("SELECT spec, status, error FROM jobs WHERE status != 'done'").fetchall()
    except sqlite3.OperationalError:  # no jobs table: the exit status tells
        jobs = []
    finally:
        con.close()
    out = []
    for spec, status, error in jobs:
        s = json.loads(spec or "{}")
        last = (error or "").strip().splitlines()[-1:]
        out.append({"protocol": s.get("protocol"), "seed": s.get("seed"), "status": status, "error": last})
    return out


def _study_run(study: dict[str, Any], workdir: Path, cache: Path) -> dict[str, Any]:
    """Run one study through the command line; its wall time and what did not finish."""
    name = study["name"]
    path, out = workdir / f"{name}.yaml", workdir / name
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    env = {**os.environ, **THREADS, "RADPROBE_CACHE": str(cache / name)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "radprobe", "study", "run", str(path), "--out", str(out), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    print(f"{name}: exit {proc.returncode} after {wall:.0f} s", file=sys.stderr, flush=True)
    db = out / "results.db"
    outcome: dict[str, Any] = {
        "wall_s": round(wall, 1),
        "failed_jobs": _unfinished(db) if db.is_file() else [],
    }
    if proc.returncode != 0 and not outcome["failed_jobs"]:
        outcome["error"] = (proc.stderr or proc.stdout).strip()[-2000:]
    return outcome


def run_matrix(out_json: Path, workdir: Path | None, cache: Path | None, parallel: int, resume: bool) -> int:
    """Run every study, then write the normalised rows of all of them to ``out_json``.

    A workdir holding run directories already is refused unless ``resume``: their finished jobs
    would be skipped, and their rows (maybe of other code) reported as this run's.
    """
    workdir = Path(tempfile.mkdtemp(prefix="radprobe-regression-")) if workdir is None else workdir
    plan = studies()
    stale = [s["name"] for s in plan if (workdir / s["name"]).exists()]
    if stale and not resume:
        print(
            f"error: {workdir} holds run directories ({stale[0]}, ...): pass --resume or another --workdir",
            file=sys.stderr,
        )
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    cache = cache or workdir / "cache"
    print(f"workdir {workdir}, feature caches under {cache}", file=sys.stderr)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        outcomes = list(pool.map(lambda s: _study_run(s, workdir, cache), plan))
    rows, failed = [], []
    for study, outcome in zip(plan, outcomes, strict=True):
        failed += [{"study": study["name"], **f} for f in outcome.get("failed_jobs", [])]
        if "error" in outcome:
            failed.append({"study": study["name"], "error": outcome["error"]})
        db = workdir / study["name"] / "results.db"
        rows += read_rows(db) if db.is_file() else []
    rows.sort(key=lambda r: canonical([r[k] for k in IDENTITY]))
    jobs = sum(len(s["protocols"]) * len(SEEDS) for s in plan)
    doc = {
        "meta": {
            "backbones": list(BACKBONES),
            "datasets": {d: list(p) for d, p in DATASETS.items()},
            "resolution": RESOLUTION,
            "seeds": list(SEEDS),
            "bootstrap": BOOTSTRAP,
            "options": OPTIONS,
            "backbone_options": BACKBONE_OPTIONS,
            "threads": THREADS,
            "studies": len(plan),
            "jobs": jobs,
            "rows": len(rows),
            "wall_s": round(time.perf_counter() - t0, 1),
            "study_wall_s": {s["name"]: o.get("wall_s") for s, o in zip(plan, outcomes, strict=True)},
        },
        "skipped": skipped(),
        "failed": failed,
        "rows": rows,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out_json}: {len(rows)} rows from {jobs} jobs, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- compare


def _close(a: Any, b: Any, atol: float) -> bool:
    """Numbers within ``atol`` (NaN equals NaN); anything else by equality."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if a == b:  # also equal infinities
            return True
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= atol
    return a == b


def diff_values(a: Any, b: Any, atol: float, path: str = "") -> list[str]:
    """Paths (``selected.k``) where two JSON values differ beyond ``atol``, with both sides."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                out.append(f"{sub}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
            else:
                out += diff_values(a[k], b[k], atol, sub)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in diff_values(x, y, atol, f"{path}[{i}]")
        ]
    if _close(a, b, atol):
        return []
    delta = f" (diff {b - a:+.3g})" if all(isinstance(x, float) for x in (a, b)) else ""
    return [f"{path}: {a!r} -> {b!r}{delta}"]


def label(r: dict[str, Any]) -> str:
    """A row's identity on one line; its hparams as a short digest (and shots, where set)."""
    hp = json.loads(r["hparams"])
    extra = f" shots={hp['shots']}" if "shots" in hp else ""
    tag = hashlib.sha1(r["hparams"].encode()).hexdigest()[:8]
    return (
        f"{r['backbone']} · {r['dataset']} · {r['protocol']} · {r['metric']} · seed {r['seed']}{extra} "
        f"[hparams {tag}]"
    )


def _index(rows: list[dict[str, Any]], side: str, lines: list[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows by identity; a second row with the same identity is reported in ``lines``."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if _row_id(r) in out:
            lines.append(f"DUPLICATE ({side}) {label(r)}")
        out[_row_id(r)] = r
    return out


def _unmatched(base: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    """Rows on one side only; where one row of each shares all but hparams, the hparams difference."""
    coarse: dict[tuple[Any, ...], tuple[list[dict[str, Any]], list[dict[str, Any]]]] = defaultdict(
        lambda: ([], [])
    )
    for side, rows in enumerate((base, new)):
        for r in rows:
            coarse[_row_id(r)[:-1]][side].append(r)
    lines = []
    for a, b in coarse.values():
        if len(a) == 1 and len(b) == 1:
            hp = "; ".join(diff_values(json.loads(a[0]["hparams"]), json.loads(b[0]["hparams"]), 0.0))
            lines.append(f"HPARAMS {label(a[0])}: {hp}")
            continue
        lines += [f"ONLY-BASE {label(r)}" for r in a] + [f"ONLY-NEW {label(r)}" for r in b]
    return sorted(lines)


def compare(base_doc: dict[str, Any], new_doc: dict[str, Any], atol: float, new_metrics: str = "") -> int:
    """Print one line per difference and a summary; 1 when any row or value differs, else 0.

    ``new_metrics``: a regular expression of metric names the new code adds on purpose (e.g. ``:``
    for per-class rows); rows only in the new file whose metric matches it are listed as ADDED and
    do not fail the comparison."""
    problems: list[str] = []
    base = _index(base_doc["rows"], "base", problems)
    new = _index(new_doc["rows"], "new", problems)
    for side, doc in (("base", base_doc), ("new", new_doc)):
        problems += [f"FAILED-JOB ({side}) {canonical(f)}" for f in doc.get("failed", [])]
    if canonical(base_doc.get("skipped")) != canonical(new_doc.get("skipped")):
        problems.append("SKIPPED lists differ between the two files")
    for key in MATRIX:
        a, b = (doc.get("meta", {}).get(key) for doc in (base_doc, new_doc))
        if canonical(a) != canonical(b):
            problems.append(f"MATRIX {key} differs: {canonical(a)} -> {canonical(b)}")
    only_base = [base[k] for k in base.keys() - new.keys()]
    only_new = [new[k] for k in new.keys() - base.keys()]
    added = [r for r in only_new if new_metrics and re.search(new_metrics, str(r.get("metric")))]
    only_new = [r for r in only_new if r not in added]
    problems += _unmatched(only_base, only_new)
    matched = sorted(base.keys() & new.keys(), key=canonical)
    value_rows, key_lines = 0, []
    for k in matched:
        a, b = base[k], new[k]
        fields = {f: a.get(f) for f in (*FLOATS, *EXACT)} | {"selected": a.get("selected")}
        diffs = diff_values(fields, {f: b.get(f) for f in fields}, atol)
        value_rows += bool(diffs)
        problems += [f"VALUE {label(a)}: {d}" for d in diffs]
        key_lines += [f"KEY {label(a)}: {f} {a.get(f)} -> {b.get(f)}" for f in KEYS if a.get(f) != b.get(f)]
    for line in [*problems, *key_lines]:
        print(line)
    print(
        f"summary: {len(base)} base rows, {len(new)} new rows, {len(matched)} matched, "
        f"{len(only_base)} only in base, {len(only_new)} only in new, {len(added)} added on purpose; "
        f"{value_rows} matched rows differ beyond atol {atol:g}; "
        f"{len(key_lines)} eval_key/digest changes (allowed) -> {'FAIL' if problems else 'PASS'}"
    )
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the matrix and write its normalised rows")
    run.add_argument("out_json", type=Path)
    run.add_argument("--workdir", type=Path, help="run directories and study files (default: a new temp dir)")
    run.add_argument(
        "--cache", type=Path, help="root of the per-study feature caches (default: WORKDIR/cache)"
    )
    run.add_argument("--parallel", type=int, default=2, help="studies run at the same time (default 2)")
    run.add_argument("--resume", action="store_true", help="finish the studies of an interrupted run")
    cmp_ = sub.add_parser("compare", help="compare two files written by run")
    cmp_.add_argument("base_json", type=Path)
    cmp_.add_argument("new_json", type=Path)
    cmp_.add_argument("--atol", type=float, default=1e-6)
    cmp_.add_argument("--new-metrics", default="", help="regex of metric names added on purpose (e.g. ':')")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return run_matrix(args.out_json, args.workdir, args.cache, args.parallel, args.resume)
    docs = [json.loads(p.read_text()) for p in (args.base_json, args.new_json)]
    return compare(*docs, args.atol, args.new_metrics)


if __name__ == "__main__":
    sys.exit(main())
