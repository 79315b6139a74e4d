"""Command line: thin typer + rich wrappers over the package."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from radprobe.cli.paths import writable_dir, writable_file
from radprobe.errors import OptionError, RadprobeError
from radprobe.progress import output_console
from radprobe.results.store import check_run_dir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure how well vision foundation models serve radiology.",
)
data_app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")
app.add_typer(data_app, name="data")
study_app = typer.Typer(no_args_is_help=True, help="Declarative studies: plan, run, status.")
app.add_typer(study_app, name="study")
cache_app = typer.Typer(no_args_is_help=True, help="The feature cache: list and prune entries.")
app.add_typer(cache_app, name="cache")
console = output_console()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
    """radprobe: frozen-feature and fine-tuning evaluation of vision backbones on radiology data."""


def _warn(message: str) -> None:
    from radprobe.progress import stderr_console

    stderr_console.print(f"[yellow]warning[/]: {message}", highlight=False)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command("backbones")
def backbones_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List every registered backbone."""
    from radprobe.backbones import list_backbones

    rows = list_backbones()
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"{len(rows)} backbones")
    for col in ("name", "family", "params", "patch", "res", "dim", "weights", "needs"):
        t.add_column(col, justify="right" if col in ("params", "patch", "res", "dim") else "left")
    for r in rows:
        t.add_row(
            r["name"],
            r["family"],
            f"{r['params'] / 1e6:,.1f}M",
            str(r.get("patch_size") or "-"),
            str(r["native_resolution"]),
            str(r["embed_dim"]),
            r["source"],
            r.get("requires") or "",
        )
    console.print(t)


@app.command("protocols")
def protocols_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List every protocol with its family, what it consumes, its options and their defaults."""
    from radprobe.protocols import registry

    rows = [
        {
            "name": s.name,
            "family": s.family,
            "consumes": s.consumes,
            "summary": s.summary,
            "tasks": list(s.tasks),
            "ndims": list(s.ndims),
            "options": registry.describe(s.name),
        }
        for s in registry.PROTOCOLS.values()
    ]
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"{len(rows)} protocols")
    for col in ("name", "family", "consumes", "options (default)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        opts = ", ".join(f"{o['name']}={o['default']}" for o in r["options"])
        t.add_row(r["name"], r["family"], r["consumes"], opts)
    console.print(t)


@app.command("datasets")
def datasets_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List known datasets and presets."""
    from radprobe.data import list_datasets

    rows = list_datasets()
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"{len(rows)} datasets")
    cols = [
        c for c in ("name", "task", "modality", "ndim", "source", "description") if any(c in r for r in rows)
    ]
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(r.get(c, "")) for c in cols))
    console.print(t)


@data_app.command("check")
def data_check_cmd(
    spec: str = typer.Argument(..., help="Dataset spec, e.g. synthetic:cls2d-binary or csv:manifest.csv"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Validate a dataset and report every problem with file names. Exit 1 if any error."""
    from radprobe.data import check_dataset

    problems = check_dataset(spec)
    errors = [p for p in problems if p.severity == "error"]
    if as_json:
        _print_json([{"severity": p.severity, "message": p.message} for p in problems])
    else:
        from radprobe.progress import stderr_console

        for p in problems:  # diagnostics on stderr; the verdict below is the command's output
            style = "red" if p.severity == "error" else "yellow"
            stderr_console.print(f"[{style}]{p.severity}[/]: {p.message}", highlight=False, soft_wrap=True)
        console.print(
            f"{spec}: {len(errors)} error(s), {len(problems) - len(errors)} warning(s)"
            if problems
            else f"{spec}: OK"
        )
    if errors:
        raise typer.Exit(1)


def _parse_protocols(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


_BACKBONE = typer.Option(..., "--backbone", "-b", help="Registered name, timm:<name> or hf:<repo>.")
_DATASET = typer.Option(..., "--dataset", "-d", help="Dataset spec (see `radprobe datasets`).")
_WEIGHTS = typer.Option(None, "--weights", help="Local checkpoint: .safetensors, .pth/.pt or HF folder.")
_PARTIAL = typer.Option(False, "--allow-partial-weights", help="Load checkpoints that do not fit exactly.")
_RANDOM = typer.Option(
    False, "--random-init", help="The architecture with a seeded random init instead of weights (a control)."
)
_RES = typer.Option(None, "--resolution", min=1, help="Input resolution (default: the backbone's).")
_BATCH = typer.Option(64, "--batch-size", min=1, help="Images per forward pass.")
_WORKERS = typer.Option(
    None,
    "--num-workers",
    min=0,
    help="Decoding worker processes (default: min(cores, 8) beside a GPU, none on a CPU of 2 cores; "
    "training: none).",
)
_DEVICE = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, mps or auto.")
_NO_IMAGE_CACHE = typer.Option(
    False,
    "--no-image-cache",
    help="Decode every image for this backbone on the CPU instead of reading/writing the decoded-image "
    "cache (RADPROBE_CACHE/images; RADPROBE_IMAGE_CACHE=0 for every run). Features are the same.",
)
_JSON = typer.Option(False, "--json", help="Print a JSON summary on stdout.")
# numpy's legacy RandomState and torch take seeds in [0, 2**32): anything else fails deep inside a run.
_SEED_RANGE: dict[str, int] = {"min": 0, "max": 2**32 - 1}


def _config(**kw: Any):  # type: ignore[no-untyped-def]
    from radprobe.run import EvalConfig

    if kw.get("weights") is not None and not Path(kw["weights"]).exists():
        raise RadprobeError(f"--weights {kw['weights']}: no such file or folder")
    if kw.get("weights") is not None and not kw.get("pretrained", True):
        raise RadprobeError("--random-init and --weights exclude each other: choose one")
    return EvalConfig(**kw)


_PIXELS_FROM = {
    "image-cache-hit": ", images read from the decoded-image cache",
    "image-cache-build": ", images decoded into the decoded-image cache",
    "decode": ", images decoded for this backbone",
}


@app.command("extract")
def extract_cmd(
    backbone: str = _BACKBONE,
    dataset: str = _DATASET,
    weights: str | None = _WEIGHTS,
    allow_partial_weights: bool = _PARTIAL,
    random_init: bool = _RANDOM,
    resolution: int | None = _RES,
    batch_size: int = _BATCH,
    num_workers: int | None = _WORKERS,
    device: str = _DEVICE,
    no_image_cache: bool = _NO_IMAGE_CACHE,
    as_json: bool = _JSON,
) -> None:
    """Extract features of every split into the cache (a no-op when cached)."""
    from radprobe.run import extract

    cfg = _config(
        backbone=backbone,
        dataset=dataset,
        protocols=[],
        out=Path("."),
        weights=weights,
        allow_partial_weights=allow_partial_weights,
        pretrained=not random_init,
        resolution=resolution,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=not as_json,
        image_cache=not no_image_cache,
    )
    summary = extract(cfg, warn=_warn)
    if as_json:
        _print_json(summary.to_dict())
        return
    for split, s in summary.splits.items():
        lent = s["extra"].get("reused_rows", 0)
        if s["cache_hit"]:
            how = "cache hit, no forward pass"
        elif s["extra"].get("forward_images") == 0:
            how = f"all {lent} rows lent by other cache entries, no forward pass"
        else:
            how = f"extracted at {s['imgs_per_s']:.1f} img/s"
            how += f", {lent} rows lent by other cache entries" if lent else ""
            how += _PIXELS_FROM.get(s["extra"].get("data_path", ""), "")
        console.print(f"{split:>5}: {s['n']} samples — {how} — {s['path']}", highlight=False)


@app.command("eval")
def eval_cmd(
    backbone: str = _BACKBONE,
    dataset: str = _DATASET,
    protocol: str = typer.Option("knn", "--protocol", "-p", help="Comma-separated protocols, e.g. knn."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (holds results.db)."),
    weights: str | None = _WEIGHTS,
    allow_partial_weights: bool = _PARTIAL,
    random_init: bool = _RANDOM,
    resolution: int | None = _RES,
    seed: int = typer.Option(0, "--seed", **_SEED_RANGE, help="Seed for protocols and bootstrap."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for CIs (0: none)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Protocol option PROTOCOL.KEY=VALUE, e.g. fewshot.repeats=3 (repeatable)."
    ),
    volume_pool: str = typer.Option(
        "mean", "--volume-pool", help="3D datasets: pool slice features per volume by mean or max."
    ),
    batch_size: int = _BATCH,
    num_workers: int | None = _WORKERS,
    device: str = _DEVICE,
    no_image_cache: bool = _NO_IMAGE_CACHE,
    as_json: bool = _JSON,
) -> None:
    """Evaluate a backbone on a dataset; one results row per (protocol, metric).

    On 3D datasets rows are volumes: knn, linear, logreg and fewshot read slice features pooled by
    --volume-pool; mil attends over each volume's slices.
    """
    from radprobe.api import evaluate
    from radprobe.core.runtime import under_torchrun
    from radprobe.run.config import parse_overrides

    writable_dir(out, "--out")
    check_run_dir(out)  # before extracting features, not after
    cfg = _config(
        backbone=backbone,
        dataset=dataset,
        protocols=_parse_protocols(protocol),
        out=out,
        weights=weights,
        allow_partial_weights=allow_partial_weights,
        pretrained=not random_init,
        resolution=resolution,
        seed=seed,
        n_boot=bootstrap,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=not as_json,
        options=parse_overrides(overrides),
        volume_pool=volume_pool,
        image_cache=not no_image_cache,
    )
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
        cfg.device = _data_parallel(cfg)
    summary = evaluate(**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, warn=_warn)
    if not _speaks():
        return
    if as_json:
        _print_json(summary.to_dict())
        return
    hit = "feature cache hit (no forward pass)" if summary.cache_hit else "features extracted and cached"
    console.print(f"{summary.backbone} on {summary.dataset}: {hit}", highlight=False)
    headline = [r for r in summary.rows if ":" not in r["metric"]]
    console.print(_results_table(headline, title=f"run {summary.run_id} → {out}"))
    if len(headline) < len(summary.rows):
        console.print(
            f"+ {len(summary.rows) - len(headline)} per-class rows (auroc:<class>, ...): "
            f"radprobe results {out}",
            highlight=False,
        )
    for line in _row_warnings(summary.rows):
        _warn(line)


def _row_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' metric warnings (a class left out of a macro average, ...), each once, with its protocol."""
    seen: dict[str, None] = {}
    for r in rows:
        for w in r.get("warnings") or []:
            seen.setdefault(f"{r['protocol']}: {w}", None)
    return list(seen)


def _data_parallel(cfg: Any) -> str:
    """``eval`` under torchrun trains one model on all ranks: trained protocols only."""
    from radprobe.finetune import distributed
    from radprobe.protocols import registry

    frozen = [p for p in cfg.protocols if registry.get(p).family != "trained"]
    if frozen:
        raise RadprobeError(
            f"--protocol {','.join(frozen)} under torchrun: `eval` trains one model data-parallel, so "
            "it takes trained protocols only; run frozen ones with `torchrun ... study run`"
        )
    return distributed.join(cfg.device)


def _speaks() -> bool:
    """False on the data-parallel ranks other than rank 0 (they print nothing)."""
    from radprobe.finetune import distributed

    ranks = distributed.current()
    return ranks is None or ranks.main


class Fmt(str, Enum):
    table = "table"
    csv = "csv"
    md = "md"
    json = "json"


_SHOW = ["backbone", "dataset", "protocol", "metric", "value", "ci_low", "ci_high", "n", "seed", "selected"]


_HIDDEN_SELECTED = {"val_score", "trainable_params", "per_draw", "values", "train_sizes"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, dict):
        items = [
            f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}"
            for k, x in v.items()
            if k not in _HIDDEN_SELECTED and not isinstance(x, dict | list)
        ]
        return " ".join(items)
    return "" if v is None else str(v)


def _results_table(rows: list[dict[str, Any]], title: str = "") -> Table:
    t = Table(title=title)
    for c in ("backbone", "dataset", "protocol", "metric", "value", "95% CI", "n", "seed", "selected"):
        t.add_column(c, justify="right" if c in ("value", "n", "seed") else "left", overflow="fold")
    for r in rows:
        ci = f"{r['ci_low']:.3f}–{r['ci_high']:.3f}" if r.get("ci_low") is not None else ""
        shots = (r.get("hparams") or {}).get("shots")
        protocol = f"{r['protocol']} ({shots}-shot)" if isinstance(shots, int) else r["protocol"]
        t.add_row(
            r["backbone"],
            r["dataset"],
            protocol,
            r["metric"],
            f"{r['value']:.3f}",
            ci,
            str(r["n"]),
            str(r["seed"]),
            _fmt(r.get("selected") or {}),
        )
    return t


def render_results(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as CSV, Markdown or JSON text."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else _SHOW)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()})
        return buf.getvalue()
    lines = ["| " + " | ".join(_SHOW) + " |", "|" + "---|" * len(_SHOW)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in _SHOW) + " |")
    return "\n".join(lines) + "\n"


@app.command("results")
def results_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory holding results.db."),
    fmt: Fmt = typer.Option(Fmt.table, "--format", "-f", help="table, csv, md or json."),
    output: Path | None = typer.Option(None, "--output", help="Write to this file instead of stdout."),
) -> None:
    """Show or export the results of a run."""
    from radprobe.results import ResultStore
    from radprobe.utils import atomic_write_text

    if not (run_dir / "results.db").is_file():
        raise RadprobeError(
            f"{run_dir}: no results.db here; expected a run directory written by `radprobe eval`"
        )
    with ResultStore(run_dir, create=False) as store:
        rows = store.rows()
    if fmt == Fmt.table:
        if output is not None:
            raise RadprobeError("--output needs --format csv, md or json")
        console.print(_results_table(rows, title=f"{len(rows)} rows in {run_dir}"))
        return
    text = render_results(rows, fmt.value)
    if output is not None:
        writable_file(output, "--output")
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)


@app.command("compare")
def compare_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory holding results.db."),
    a: str = typer.Option(..., "--a", help="First backbone name."),
    b: str = typer.Option(..., "--b", help="Second backbone name."),
    protocol: str = typer.Option("knn", "--protocol", "-p", help="Protocol both were evaluated with."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset (needed if the run has several)."
    ),
    metric: str | None = typer.Option(None, "--metric", help="Metric (default: the task's headline)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", **_SEED_RANGE, help="Seed for the bootstrap."),
    as_json: bool = _JSON,
) -> None:
    """Paired bootstrap test of backbone A against B on the same test samples."""
    from dataclasses import asdict

    from radprobe.results.compare import compare_backbones

    res = compare_backbones(run_dir, a, b, protocol, dataset, metric, n_boot=bootstrap, seed=seed)
    if as_json:
        _print_json(asdict(res))
        return
    console.print(
        f"{res.metric}: {a} {res.a:.4f} vs {b} {res.b:.4f} — difference {res.diff:+.4f} "
        f"[95% CI {res.ci_low:+.4f}, {res.ci_high:+.4f}], p = {res.p_value:.4g} "
        f"(paired patient bootstrap x{res.n_boot}, n = {res.n})",
        highlight=False,
    )


_STUDY = typer.Argument(..., help="Study YAML file or builtin:<name>.")
_SET = typer.Option(
    [], "--set", help="Override KEY.PATH=VALUE, e.g. protocols.linear.epochs=20 (repeatable)."
)


@study_app.command("plan")
def study_plan_cmd(
    study: str = _STUDY,
    overrides: list[str] = _SET,
    jobs: bool = typer.Option(False, "--jobs", help="List every job, not just the matrix."),
    as_json: bool = _JSON,
) -> None:
    """Show the expanded matrix, the feature extractions it needs and missing datasets, without running."""
    from collections import Counter

    from radprobe.run.study import load_study, run_dir_of
    from radprobe.run.study_state import plan

    cfg = load_study(study, overrides)
    p = plan(cfg, run_dir_of(cfg, None))
    p["references"] = _reference_jobs(p)
    if as_json:
        _print_json(p)
        return
    states = Counter(j["status"] for j in p["jobs"])
    console.print(
        f"study {p['study']}: {len(cfg.backbones)} backbones x {len(cfg.datasets)} datasets x "
        f"{len(cfg.protocols)} protocols x {len(cfg.seeds)} seed(s) → {len(p['jobs'])} jobs "
        f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}), {len(p['extractions'])} extractions",
        highlight=False,
    )
    matrix = Table(title="jobs per dataset and protocol")
    protos = list(cfg.protocols)
    matrix.add_column("dataset")
    matrix.add_column("local")
    for proto in protos:
        matrix.add_column(proto, justify="right")
    per = Counter((j["dataset"], j["protocol"]) for j in p["jobs"])
    for d in p["datasets"]:
        present = "yes" if d["present"] else "[red]missing[/]"
        matrix.add_row(d["spec"], present, *(str(per.get((d["spec"], q), "")) for q in protos))
    console.print(matrix)
    console.print("backbones: " + ", ".join(b.name for b in cfg.backbones), highlight=False)
    if jobs:
        t = Table(title="jobs")
        for c in ("backbone", "dataset", "protocol", "options", "seed", "status"):
            t.add_column(c)
        for j in p["jobs"]:
            opts = json.dumps(j["options"]) if j["options"] else ""
            t.add_row(j["backbone"]["name"], j["dataset"], j["protocol"], opts, str(j["seed"]), j["status"])
        console.print(t)


@study_app.command("run")
def study_run_cmd(
    study: str = _STUDY,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory (default: the study's out)."),
    overrides: list[str] = _SET,
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed job."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (groups run in parallel)."),
    executor: str = typer.Option(
        "auto",
        "--executor",
        help="local, torchrun (one rank per GPU; launch with `torchrun --nproc_per_node N -m radprobe "
        "study run ...`), ray, or auto (torchrun when launched by torchrun, else local).",
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster (default: RAY_ADDRESS, else a local instance)."
    ),
    ray_cpus: int = typer.Option(1, "--ray-cpus", min=1, help="CPUs per Ray task."),
    ray_gpus: float | None = typer.Option(
        None, "--ray-gpus", min=0, help="GPUs per Ray task (default 1 if any)."
    ),
    as_json: bool = _JSON,
) -> None:
    """Run every unfinished job of a study; rerunning skips finished jobs and retries failed ones."""
    from dataclasses import asdict

    from radprobe.core.runtime import under_torchrun
    from radprobe.run.executors import LocalExecutor, RayExecutor, TorchrunExecutor
    from radprobe.run.study import load_study, run_dir_of, run_study

    if executor == "auto":
        executor = "torchrun" if under_torchrun() else "local"
    if executor not in ("local", "torchrun", "ray"):
        raise RadprobeError(f"--executor {executor!r}: expected local, torchrun, ray or auto")
    if workers > 1 and executor != "local":
        raise RadprobeError(f"--workers {workers}: only with --executor local (torchrun, ray: per rank/task)")
    cfg = load_study(study, overrides)
    run_dir = run_dir_of(cfg, out)
    writable_dir(run_dir, "--out")
    check_run_dir(run_dir)  # before run_study rewrites study.yaml there
    runner: Any
    if executor == "torchrun":
        runner = TorchrunExecutor()
        if cfg.device.startswith("cuda:") and runner.local_world > 1:
            raise RadprobeError(
                f"device {cfg.device} under torchrun: every rank would use that one GPU; "
                "use device: cuda (rank r takes GPU LOCAL_RANK)"
            )
    elif executor == "ray":
        runner = RayExecutor(ray_address, ray_cpus, ray_gpus)
    else:
        runner = LocalExecutor(workers)
    speaks = getattr(runner, "main", True)  # under torchrun only rank 0 prints the summary

    def log(msg: str) -> None:
        if not as_json:
            console.print(msg, highlight=False)

    outcome = run_study(
        cfg,
        run_dir,
        fail_fast=fail_fast,
        progress=not as_json and workers == 1 and executor == "local",
        log=log,
        executor=runner,
    )
    if not speaks:
        if outcome.failed:
            raise typer.Exit(1)
        return
    if as_json:
        _print_json({"run_dir": str(run_dir), **asdict(outcome)})
    else:
        console.print(
            f"{run_dir}: {outcome.done} job(s) run, {outcome.skipped} done already or by another runner, "
            f"{outcome.failed} failed, {outcome.rows} rows written",
            highlight=False,
        )
    if outcome.failed:
        raise typer.Exit(1)


def _reference_jobs(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Each published cell of a dataset the study runs, with the job that would reproduce it (or
    null and why not)."""
    from radprobe.report.references import load_references, producing_job

    names = {d["spec"].split(":", 1)[0] for d in plan["datasets"]}
    out = []
    for ref in load_references():
        wanted = ref.match.get("dataset")
        if not set(wanted if isinstance(wanted, list) else [wanted]) & names:
            continue
        key, why = producing_job(ref, plan["jobs"])
        out.append({"source": ref.source_key, "cell": ref.cell, "reported": ref.reported, "job_key": key,
                    "reason": why or None})  # fmt: skip
    return out


@study_app.command("status")
def study_status_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory of a study."), as_json: bool = _JSON
) -> None:
    """Done / running / interrupted / failed / pending jobs, with an ETA."""
    from radprobe.run.study_state import status

    st = status(run_dir)
    if as_json:
        _print_json(st)
        return
    eta = f", ETA {st['eta_s']:.0f} s" if st["eta_s"] else ""
    console.print(
        f"{run_dir}: {st['total']} jobs — {st['done']} done, {st['running']} running, "
        f"{st['interrupted']} interrupted, {st['failed']} failed, {st['pending']} pending{eta}",
        highlight=False,
    )
    for f in st["failed_jobs"]:
        console.print(
            f"  failed {f['backbone']} · {f['dataset']} · {f['protocol']} · seed {f['seed']}: "
            f"{' '.join(f['error'])}",
            highlight=False,
        )


def _feature_cache() -> Any:
    from radprobe.config import cache_dir
    from radprobe.features.cache import FeatureCache

    return FeatureCache(cache_dir() / "features")


def _caches() -> list[Any]:
    """The feature cache and the decoded-image cache beside it (``(images)`` rows in listings)."""
    from radprobe.config import cache_dir
    from radprobe.features.images import ImageCache

    return [_feature_cache(), ImageCache(cache_dir() / "images")]


def _cache_entries() -> tuple[list[Any], dict[Path, Any]]:
    """Every entry of both caches, oldest first, and the cache each one's folder belongs to."""
    entries, owner = [], {}
    for cache in _caches():
        for e in cache.entries():
            entries.append(e)
            owner[e.path] = cache
    return sorted(entries, key=lambda e: e.created), owner


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def _entry_table(entries: list[Any], title: str) -> Table:
    import datetime as dt

    t = Table(title=title)
    for col in ("key", "backbone", "weights", "dataset", "split", "rows", "size", "created"):
        t.add_column(col, justify="right" if col in ("rows", "size") else "left")
    for e in entries:
        when = dt.datetime.fromtimestamp(e.created).strftime("%Y-%m-%d %H:%M")
        weights = e.weights[:17] + ("" if e.precision == "fp32" else f" {e.precision}")
        t.add_row(e.key[:12], e.backbone, weights, e.dataset, e.split, str(e.rows), _size(e.bytes), when)
    return t


_BACKBONE_FILTER = typer.Option(None, "--backbone", "-b", help="Only entries of this backbone name.")
_DATASET_FILTER = typer.Option(None, "--dataset", "-d", help="Only entries of this dataset name.")


@cache_app.command("list")
def cache_list_cmd(
    backbone: str | None = _BACKBONE_FILTER, dataset: str | None = _DATASET_FILTER, as_json: bool = _JSON
) -> None:
    """Feature cache entries (under RADPROBE_CACHE/features) and decoded-image entries (RADPROBE_CACHE/
    images, backbone "(images)"), oldest first, with their sizes."""
    from radprobe.features.cache import select_prune

    cache, images = _caches()
    entries = select_prune(_cache_entries()[0], backbone=backbone, dataset=dataset)
    if as_json:
        _print_json(
            {
                "root": str(cache.root),
                "images_root": str(images.root),
                "entries": [e.to_dict() for e in entries],
            }
        )
        return
    total = _size(sum(e.bytes for e in entries))
    console.print(_entry_table(entries, f"{len(entries)} entries, {total} in {cache.root}"))


@cache_app.command("prune")
def cache_prune_cmd(
    backbone: str | None = _BACKBONE_FILTER,
    dataset: str | None = _DATASET_FILTER,
    older_than: float | None = typer.Option(
        None, "--older-than", min=0, help="Days since an entry was written."
    ),
    max_gb: float | None = typer.Option(
        None, "--max-gb", min=0, help="Remove the oldest matching entries until the cache fits this size."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
    as_json: bool = _JSON,
) -> None:
    """Remove cache entries by backbone, dataset, age or total size (a later run re-extracts them)."""
    from radprobe.features.cache import select_prune

    if backbone is None and dataset is None and older_than is None and max_gb is None:
        raise RadprobeError("cache prune: name --backbone, --dataset, --older-than or --max-gb")
    entries, owner = _cache_entries()
    gone = select_prune(
        entries,
        backbone=backbone,
        dataset=dataset,
        older_than_s=None if older_than is None else older_than * 86400,
        max_bytes=None if max_gb is None else int(max_gb * 2**30),
    )
    leftovers: list[Path] = []
    if not dry_run:
        for e in gone:
            owner[e.path].remove(e.key)
        # what interrupted extractions left behind
        leftovers = [p for cache in _caches() for p in cache.clean_stale()]
    freed = sum(e.bytes for e in gone)
    if as_json:
        _print_json(
            {
                "dry_run": dry_run,
                "removed": [e.to_dict() for e in gone],
                "bytes": freed,
                "leftovers_removed": [str(p) for p in leftovers],
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    extra = f"; {len(leftovers)} leftover temp folder(s) of interrupted runs" if leftovers else ""
    console.print(f"{verb} {len(gone)} entries, {_size(freed)}{extra}", highlight=False)


def _register_rooms() -> None:
    from radprobe.cli.report import register

    register(app)


_register_rooms()


def _is_click(exc: BaseException, name: str) -> bool:
    """Whether ``exc`` is click's exception class ``name`` (or a subclass), from click itself or from
    the copy typer bundles (``typer._click``) — typer versions differ in which one they raise."""
    return any(
        c.__name__ == name and c.__module__.split(".")[0] in ("click", "typer") for c in type(exc).__mro__
    )


def _usage_line(exc: Any) -> str:
    """A click usage error as one line: the message, the commands a group accepts, where help is."""
    message = " ".join(str(exc.format_message()).split()).replace("Value error, ", "").rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return f"error: {message}"
    command = ctx.command
    # A group's plain usage error is an unknown or missing command: name the ones it has.
    if type(exc).__name__ == "UsageError" and hasattr(command, "list_commands"):
        message = f"{message}; expected one of: {', '.join(command.list_commands(ctx))}"
    return f"error: {ctx.command_path}: {message} (see '{ctx.command_path} --help')"


def _handle(exc: Exception, debug: bool) -> int:
    """The exit code for an exception that left the app; re-raises what is not a user's error."""
    if _is_click(exc, "Exit"):
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if _is_click(exc, "Abort"):
        print("aborted", file=sys.stderr)
        return 130
    if _is_click(exc, "NoArgsIsHelpError"):
        # The group's help; typer's rich help prints itself to stdout and leaves the message empty.
        text = str(exc.format_message())  # type: ignore[attr-defined]
        if text.strip():
            print(text, file=sys.stderr)
        return 2
    if _is_click(exc, "ClickException") and not debug:
        print(_usage_line(exc), file=sys.stderr)
        return 2 if _is_click(exc, "UsageError") else int(getattr(exc, "exit_code", 1))
    if isinstance(exc, RadprobeError) and not debug:
        # the library names a setting as it knows it; the command line puts the flag in front
        print(f"error: {exc.for_cli() if isinstance(exc, OptionError) else exc}", file=sys.stderr)
        return 2
    raise exc


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one line and exit 2 (tracebacks only with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="radprobe", standalone_mode=False)
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return _handle(e, debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
