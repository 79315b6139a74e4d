"""Declarative studies: backbones x datasets x protocols x seeds from one YAML file (read and checked
by :mod:`.study_config`).

A study expands into jobs, one per (backbone, dataset, protocol, seed), each keyed by a digest of
its complete spec. Jobs sharing a backbone and dataset form a group: the model is loaded and the
features extracted (or found in the cache) once per group. Each job's rows and its "done" mark are
committed in one transaction, so a study killed at any point and rerun ends with exactly the rows
of an uninterrupted run; finished jobs are skipped, failed and interrupted ones retried.
"""

from __future__ import annotations

import io
import os
import socket
import sqlite3
import tarfile
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from radprobe.errors import RadprobeError
from radprobe.protocols import registry
from radprobe.results import ResultStore
from radprobe.results.store import DB_NAME, LEASE_S
from radprobe.run.study_config import BackboneEntry, DatasetEntry, StudyConfig
from radprobe.run.study_config import load_study as load_study  # studies are loaded and run from here
from radprobe.utils import atomic_write_text, digest


@dataclass(frozen=True)
class Job:
    """One evaluation of a study."""

    backbone: BackboneEntry
    dataset: str
    protocol: str
    options: dict[str, Any]
    seed: int
    bootstrap: int
    n_blocks: int
    resolution: int | None = None
    volume_pool: str = "mean"

    def spec(self) -> dict[str, Any]:
        spec = {
            "backbone": self.backbone.key_fields(),
            "dataset": self.dataset,
            "protocol": self.protocol,
            "options": self.options,
            "seed": self.seed,
            "bootstrap": self.bootstrap,
            "n_blocks": self.n_blocks,
            "resolution": self.resolution,
        }
        if self.volume_pool != "mean":  # keys of studies written before the option stay valid
            spec["volume_pool"] = self.volume_pool
        return spec

    @property
    def key(self) -> str:
        return digest(self.spec(), 24)

    @property
    def group(self) -> tuple[str, str, int | None]:
        return (digest(self.backbone.key_fields(), 12), self.dataset, self.resolution)

    @property
    def frozen(self) -> bool:
        return registry.get(self.protocol).family == "frozen"


def dataset_spec(study: StudyConfig, entry: DatasetEntry) -> str:
    """The entry's spec with ``{data_root}`` filled in."""
    if "{data_root}" not in entry.spec:
        return entry.spec
    root = study.data_root or os.environ.get("RADPROBE_DATA") or "data"
    return entry.spec.replace("{data_root}", root.rstrip("/"))


def backbone_free(protocol: str) -> bool:
    """Reference protocols that train their own model: one job per dataset, whatever the backbones."""
    return registry.get(protocol).consumes == "images"


def expand(study: StudyConfig) -> list[Job]:
    """Every job of the study, grouped by backbone then dataset."""
    jobs = [
        Job(
            b,
            dataset_spec(study, d),
            p,
            d.options_of(p, opts),
            seed,
            study.bootstrap,
            study.n_blocks,
            b.resolution or d.resolution,
            study.volume_pool,
        )
        for b in study.backbones
        for d in study.datasets
        if d.backbones is None or b.name in d.backbones
        for p, opts in study.protocols.items()
        if d.protocols is None or p in d.protocols
        if not backbone_free(p) or b == _first_backbone(study, d)
        for seed in study.seeds
    ]
    return list({j.key: j for j in jobs}.values())  # a dataset listed twice runs each job once


def _first_backbone(study: StudyConfig, d: Any) -> Any:
    """The backbone a dataset's backbone-free jobs (models from scratch) are listed under."""
    return next(b for b in study.backbones if d.backbones is None or b.name in d.backbones)


def run_dir_of(study: StudyConfig, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if study.out:
        return Path(study.out)
    return Path("runs") / study.name


@dataclass
class StudyOutcome:
    done: int
    failed: int
    skipped: int
    rows: int


def _error_text(e: BaseException) -> str:
    if isinstance(e, RadprobeError):
        return str(e)
    return "".join(traceback.format_exception_only(e)).strip()


@contextmanager
def _heartbeat(run_dir: Path, job_key: str, pid: int, host: str) -> Iterator[None]:
    """Renew this process's lease on a job while it runs (a thread with its own connection)."""
    stop = threading.Event()

    def beat() -> None:
        with ResultStore(run_dir) as store:
            while not stop.wait(LEASE_S / 4):
                with suppress(sqlite3.Error):
                    store.beat(job_key, pid, host)

    thread = threading.Thread(target=beat, name=f"lease-{job_key[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _run_group(
    study: StudyConfig,
    run_dir: Path,
    jobs: list[Job],
    fail_fast: bool,
    progress: bool,
    log: Callable[[str], None],
) -> StudyOutcome:
    """Run one (backbone, dataset, resolution) group: features extracted once for its frozen jobs.

    Each job is claimed first, so runners sharing the run directory split the work; a job another
    live runner holds is skipped here."""
    from radprobe.run.evaluate import prepare

    out = StudyOutcome(0, 0, 0, 0)
    run_id = uuid.uuid4().hex[:12]
    owner = (os.getpid(), socket.gethostname())
    b = jobs[0].backbone
    prep: Any = None
    prep_error = ""
    with ResultStore(run_dir) as store:
        for j in jobs:
            if not store.claim_job(j.key, *owner):
                out.skipped += 1
                continue
            if j.frozen and prep is None and not prep_error:
                try:
                    prep = prepare(_config(study, run_dir, jobs[0], progress, protocols=[]), warn=log)
                except Exception as e:  # the group's frozen jobs fail; the study goes on
                    prep_error = f"preparing {b.name} on {j.dataset}: {_error_text(e)}"
                    if fail_fast:
                        _failed(store, j, prep_error, out, log)
                        raise
            if j.frozen and prep_error:
                _failed(store, j, prep_error, out, log)
                continue
            t0 = time.perf_counter()
            try:
                with _heartbeat(run_dir, j.key, *owner):
                    n = _run_job(study, run_dir, j, prep, run_id, progress, log, store, t0)
            except Exception as e:
                msg = str(e) if isinstance(e, RadprobeError) else traceback.format_exc(limit=3)
                _failed(store, j, msg, out, log)
                if fail_fast:
                    raise
                continue
            out.rows += n
            out.done += 1
            log(f"done: {b.name} · {short_spec(j.dataset)} · {j.protocol} · seed {j.seed} ({n} rows)")
    return out


def _config(study: StudyConfig, run_dir: Path, job: Job, progress: bool, **kw: Any) -> Any:
    """The evaluation of a job's group (backbone, dataset, resolution) with the study's settings."""
    from radprobe.run.config import EvalConfig

    b = job.backbone
    return EvalConfig(
        backbone=b.name,
        dataset=job.dataset,
        out=run_dir,
        weights=b.weights,
        allow_partial_weights=b.allow_partial_weights,
        pretrained=b.pretrained,
        resolution=job.resolution,
        batch_size=study.batch_size,
        num_workers=study.num_workers,
        image_cache=study.image_cache,
        device=study.device,
        n_blocks=study.n_blocks,
        progress=progress,
        **kw,
    )


def _run_job(
    study: StudyConfig,
    run_dir: Path,
    j: Job,
    prep: Any,
    run_id: str,
    progress: bool,
    log: Callable[[str], None],
    store: ResultStore,
    t0: float,
) -> int:
    """Run one claimed job and commit its rows with its "done" mark; returns the rows written."""
    from radprobe.run.evaluate import evaluate, run_protocol

    if j.frozen:
        rows = run_protocol(prep, j.protocol, j.options, j.seed, j.bootstrap, run_id, run_dir, j.volume_pool)
        for r in rows:
            r.job_key = j.key
        return store.finish_job(j.key, rows, time.perf_counter() - t0)
    cfg = _config(
        study,
        run_dir,
        j,
        progress,
        protocols=[j.protocol],
        options={j.protocol: j.options} if j.options else {},
        seed=j.seed,
        n_boot=j.bootstrap,
    )
    summary = evaluate(cfg, warn=log)
    return store.finish_job(j.key, [], time.perf_counter() - t0, adopt_run_id=summary.run_id)


def _failed(store: ResultStore, j: Job, msg: str, out: StudyOutcome, log: Callable[[str], None]) -> None:
    store.fail_job(j.key, msg)
    out.failed += 1
    what = f"{j.backbone.name} · {short_spec(j.dataset)} · {j.protocol} · seed {j.seed}"
    log(f"failed: {what}: {msg.splitlines()[-1]}")


def short_spec(spec: str) -> str:
    """A dataset spec as a log line shows it: the last two parts of its path (``csv:…/mri/manifest.csv``),
    not the cache folders above them; options and synthetic names stay as written."""
    scheme, sep, rest = spec.partition(":")
    path, q, options = rest.partition("?")
    parts = Path(path).parts
    if not sep or len(parts) <= 2:
        return spec
    return f"{scheme}:…/{'/'.join(parts[-2:])}{q}{options}"


@dataclass
class GroupTask:
    """A picklable unit of work for executors: one group of jobs of a study."""

    study: StudyConfig
    run_dir: Path
    jobs: list[Job]
    fail_fast: bool
    progress: bool

    @property
    def key(self) -> str:
        """The same on every process that expands the same study: names the task across ranks."""
        return digest([j.key for j in self.jobs], 16)

    @property
    def weight(self) -> int:
        """A rough cost for scheduling: a trained job costs about as much as ten frozen ones."""
        return sum(1 if j.frozen else 10 for j in self.jobs)

    def __call__(self, log: Callable[[str], None] = print) -> StudyOutcome:
        return _run_group(self.study, self.run_dir, self.jobs, self.fail_fast, self.progress, log)

    def run_detached(self, log: Callable[[str], None] = print) -> tuple[StudyOutcome, bytes]:
        """Run into a private run directory (for a machine that cannot reach the run's own) and
        return the outcome with that directory packed as a tar, for :meth:`land` where the run is."""
        with tempfile.TemporaryDirectory(prefix="radprobe-shard-") as tmp:
            shard = Path(tmp) / "run"
            with ResultStore(shard) as store:
                store.add_jobs((j.key, j.spec()) for j in self.jobs)
            outcome = _run_group(self.study, shard, self.jobs, self.fail_fast, False, log)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                for path in sorted(shard.rglob("*")):
                    if path.is_file() and not path.name.startswith(DB_NAME + "-"):  # WAL/SHM: checkpointed
                        tar.add(path, arcname=str(path.relative_to(shard)))
            return outcome, buf.getvalue()

    def land(self, packed: bytes) -> None:
        """Put a packed shard from :meth:`run_detached` into the run directory: its files first
        (each by rename), then its rows and job states in one transaction, so no row ever names a
        file that is not there yet."""
        with tempfile.TemporaryDirectory(prefix=".shard-", dir=self.run_dir) as tmp:
            with tarfile.open(fileobj=io.BytesIO(packed), mode="r") as tar:
                tar.extractall(tmp, filter="data")
            root = Path(tmp)
            for path in sorted(root.rglob("*")):
                if path.is_file() and path.name != DB_NAME:
                    dest = self.run_dir / path.relative_to(root)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, dest)
            with ResultStore(self.run_dir) as store:
                store.merge(root)


def _preflight(study: StudyConfig) -> None:
    """Refuse, before anything is run or written (one line, exit 2), a dataset that names files
    outside its root and a protocol that cannot run on a dataset it is asked to; any other dataset
    problem (a missing folder) fails that dataset's jobs, as it always has."""
    from radprobe.data import OutsideRootError
    from radprobe.data.dataset import build
    from radprobe.run.evaluate import view_for

    for i, d in enumerate(study.datasets):
        spec = dataset_spec(study, d)
        try:
            dataset, _ = build(spec, save=False)
        except OutsideRootError:
            raise
        except Exception:  # reported by the dataset's jobs
            continue
        for p in d.protocols or study.protocols:
            view = view_for(dataset, registry.get(p).family)
            try:
                registry.check_fit(p, spec, view.task, view.ndim)
                if view.ndim == 3 and registry.views_needed(p, d.options_of(p, study.protocols.get(p, {}))):
                    raise RadprobeError(f"{p}: augmented training views are drawn on 2D images; {spec} is 3D")
            except RadprobeError as e:
                raise RadprobeError(f"datasets.{i}: {e}") from None


def run_study(
    study: StudyConfig,
    run_dir: Path,
    *,
    fail_fast: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    executor: Any = None,
) -> StudyOutcome:
    """Run every unfinished job; finished ones are skipped."""
    from radprobe.run.executors import LocalExecutor

    _preflight(study)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "study.yaml", yaml.safe_dump(study.model_dump(), sort_keys=False))
    jobs = expand(study)
    with ResultStore(run_dir) as store:
        store.add_jobs((j.key, j.spec()) for j in jobs)
        finished = {j["job_key"] for j in store.jobs() if j["status"] == "done"}
    todo = [j for j in jobs if j.key not in finished]
    groups: dict[tuple[str, str, int | None], list[Job]] = {}
    for j in todo:
        groups.setdefault(j.group, []).append(j)
    executor = executor or LocalExecutor()
    tasks = [GroupTask(study, run_dir, g, fail_fast, progress) for g in groups.values()]
    outcomes = executor.run(tasks, log)
    total = StudyOutcome(0, 0, len(jobs) - len(todo), 0)
    for o in outcomes:
        if o is None:  # a group another process (torchrun rank 0) had finished already
            continue
        total.done += o.done
        total.failed += o.failed
        total.rows += o.rows
    return total
