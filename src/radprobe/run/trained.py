"""The trained family (finetune and the PEFT methods): train, select on val, score test.

Everything is validated first — protocols, options, device, dataset (segmentation: every mask),
backbone and each method's fit to the backbone — and nothing is written to ``cfg.out`` before that
passes. Each protocol then trains a fresh copy of the backbone, checkpointing to
``<out>/checkpoints/<train key>/`` every epoch (a rerun of the same command resumes there, or goes
straight to scoring if training had finished), scores the test split exactly once with the best
validation epoch's weights, and writes one row per metric.

Classification rows are those of the frozen protocols, and the test predictions are saved for
``radprobe compare``. Segmentation trains the segmentation room's seg-linear or seg-decoder head on
the live backbone's patch grids with the same Dice + cross-entropy loss, at the same input
resolution, selects on validation macro Dice, and writes the frozen ``seg-*`` protocols' rows
(Dice / IoU / HD95 per class with patient-bootstrap CIs) and overlays. Segmentation augmentation
moves each mask with its image (geometric ops on both, intensity jitter on the image). 3D datasets
are handled as the frozen path handles them: training rows are the slices along the dataset's axis
(each volume decoded once, slices kept resized in memory), and validation and test predictions are
reassembled per volume, which is the case that is selected on and scored.

The checkpoint directory is keyed by the training spec (everything but ``n_boot``), so changing the
number of bootstrap resamples re-scores without retraining; the rows' ``eval_key`` adds ``n_boot``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radprobe.core.runtime import env_info, peak_memory_mb, resolve_device
from radprobe.errors import RadprobeError
from radprobe.finetune import distributed
from radprobe.finetune.checkpoint import Checkpointer
from radprobe.finetune.data import Augment, ImageSet
from radprobe.finetune.heads import ClassificationHead, Head, class_weights, segmentation_head
from radprobe.finetune.methods import Built, build_model, check_method, unreached_parameters
from radprobe.finetune.options import OUTPUT_OPTIONS, TASK_OPTIONS, TrainOptions, parse_options
from radprobe.finetune.train import Split, fit, precision, predict, predict_masks, remove_checkpoints
from radprobe.metrics import bootstrap_metrics
from radprobe.protocols import registry
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import Predictions, predictions_path
from radprobe.results.rows import Subject, base_row, ci_method, eval_key
from radprobe.run.config import EvalConfig, EvalSummary
from radprobe.utils import digest

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone, BackboneInfo
    from radprobe.data import Dataset
    from radprobe.segmentation.data import SegSplit

CLASSIFICATION_TASKS = registry.CLASSIFICATION
SPLITS = ("train", "val", "test")
Warn = Callable[[str], None] | None


def _env(device: torch.device) -> dict[str, Any]:
    ranks = distributed.current()
    # imgs/s counts every rank's images; peak memory is rank 0's
    return env_info(str(device), data_parallel_ranks=1 if ranks is None else ranks.world)


@dataclass
class Plan:
    """A validated trained evaluation: dataset, a first backbone, and each protocol's options."""

    cfg: EvalConfig
    dataset: Dataset
    backbone: Backbone | None  # handed to the first protocol; later ones build their own
    device: torch.device
    options: dict[str, TrainOptions]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolution: int | None = None  # None: the backbone's own
    seg: dict[str, SegSplit] = field(default_factory=dict)  # segmentation: each split's cases and masks
    seg_hparams: dict[str, Any] = field(default_factory=dict)  # what seg rows record about the inputs

    @property
    def segmentation(self) -> bool:
        return bool(self.seg)

    def take_backbone(self) -> Backbone:
        """The validated backbone once, then fresh (identical) builds: each protocol changes its own."""
        if self.backbone is not None:
            bb, self.backbone = self.backbone, None
            return bb
        return _create_backbone(self.cfg, self.resolution)


def _create_backbone(cfg: EvalConfig, resolution: int | None) -> Backbone:
    from radprobe.backbones import create_backbone

    return create_backbone(
        cfg.backbone,
        weights=cfg.weights,
        allow_partial_weights=cfg.allow_partial_weights,
        pretrained=cfg.pretrained,
        resolution=resolution,
    )


def _check_task_options(cfg: EvalConfig, task: str) -> None:
    kind = "segmentation" if task == "segmentation" else "classification"
    for proto, kw in cfg.options.items():
        for name in kw:
            other = next((k for k, names in TASK_OPTIONS.items() if k != kind and name in names), None)
            if other is not None:
                raise RadprobeError(
                    f"--set {proto}.{name}: applies to {other} datasets; {cfg.dataset} is a {task} dataset"
                )


def validate(cfg: EvalConfig, dataset: Dataset | None = None) -> Plan:
    """Check everything a trained evaluation needs; raises :class:`RadprobeError`, writes nothing.
    ``dataset``: the loaded ``cfg.dataset``, if at hand."""
    from radprobe.data import load_dataset

    if not cfg.protocols:
        raise RadprobeError("--protocol: expected at least one protocol name")
    trained = registry.names("trained")
    for p in cfg.protocols:
        if p not in trained:
            raise RadprobeError(
                f"--protocol {p}: unknown trained protocol; expected one of {', '.join(trained)}"
            )
    if len(set(cfg.protocols)) != len(cfg.protocols):
        raise RadprobeError(f"--protocol {','.join(cfg.protocols)}: a protocol is listed twice")
    for proto in cfg.options:
        if proto not in cfg.protocols:
            raise RadprobeError(
                f"--set {proto}.…: protocol {proto!r} is not being run (running: {', '.join(cfg.protocols)})"
            )
    if cfg.n_boot < 0:
        raise RadprobeError(f"--bootstrap {cfg.n_boot}: expected a non-negative number of resamples")
    options = {p: parse_options(p, cfg.options.get(p, {}), cfg.batch_size) for p in cfg.protocols}
    device = torch.device(resolve_device(cfg.device))
    dataset = dataset if dataset is not None else load_dataset(cfg.dataset)
    segmentation = dataset.task == "segmentation"
    if not segmentation and dataset.task not in CLASSIFICATION_TASKS:
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; trained protocols support classification "
            f"({', '.join(CLASSIFICATION_TASKS)}) and segmentation"
        )
    if not segmentation and dataset.ndim != 2:
        raise RadprobeError(
            f"dataset {cfg.dataset} is {dataset.ndim}D; trained protocols classify 2D images "
            "(3D datasets: segmentation only, slice by slice)"
        )
    _check_task_options(cfg, dataset.task)
    for s in SPLITS:
        if not dataset.split(s):
            raise RadprobeError(f"dataset {cfg.dataset} has no {s!r} split")
    resolution, resolution_source = cfg.resolution, ""
    if segmentation:
        from radprobe.run.segment import seg_resolution

        if importlib.util.find_spec("monai") is None:
            raise RadprobeError(
                f"--protocol {cfg.protocols[0]}: segmentation needs MONAI (losses, HD95); "
                "pip install 'monai>=1.3'"
            )
        # the frozen seg protocols' resolution, so trained and frozen rows see the same pixels
        resolution, resolution_source = seg_resolution(cfg.backbone, cfg.resolution)
    backbone = _create_backbone(cfg, resolution)
    seg: dict[str, SegSplit] = {}
    seg_hparams: dict[str, Any] = {}
    if segmentation:
        from radprobe.run.segment import common_hparams
        from radprobe.segmentation.data import load_split, uniform_spacing

        # every mask is checked now, so a bad one fails before anything is trained or written
        pre = backbone.preprocess
        volumes = dataset.ndim == 3
        seg = {
            # a volume's slices are kept resized (as the backbone resizes them), so training reads
            # slices from memory instead of decoding the whole volume for each slice
            s: load_split(
                dataset,
                s,
                pre.resolution,
                keep_masks=s != "train",
                keep_images=volumes,
                interpolation=pre.interpolation,
            )
            for s in SPLITS
        }
        uniform_spacing(seg.values())
        seg_hparams = common_hparams(dataset, seg["test"], pre.resolution, resolution_source)
        # recorded apart from the ``intensity`` jitter option, which shares the frozen rows' key name
        seg_hparams["input_intensity"] = seg_hparams.pop("intensity")
    details = {}
    with torch.random.fork_rng(devices=[]):  # heads drawn here must not shift the caller's RNG
        for p in cfg.protocols:
            details[p] = check_method(p, backbone, options[p])
            # one forward/backward on a copy: the method's own parameters must receive gradients
            unused, error = unreached_parameters(
                p, backbone, make_head(dataset, backbone, options[p]), options[p]
            )
            if error:
                raise RadprobeError(error)
            details[p]["unused"] = unused
    return Plan(cfg, dataset, backbone, device, options, details, resolution, seg, seg_hparams)


def make_head(dataset: Dataset, backbone: Backbone, opts: TrainOptions) -> Head:
    """The task's head: a linear classifier, or the segmentation room's seg-linear / seg-decoder head."""
    if dataset.task == "segmentation":
        return segmentation_head(backbone, len(dataset.classes), opts.seg_head, opts.decoder_channels)
    labels = dataset.labels(dataset.split("train"))
    weights = (
        class_weights(labels, dataset.task, len(dataset.classes))
        if opts.class_weights == "balanced"
        else None
    )
    return ClassificationHead(backbone.info.embed_dim, len(dataset.classes), dataset.task, opts.pool, weights)


def hparams_of(
    protocol: str, opts: TrainOptions, details: dict[str, Any], device: torch.device, task: str
) -> dict[str, Any]:
    """Everything that shapes the training result (and so the checkpoint key)."""
    other = TASK_OPTIONS["classification" if task == "segmentation" else "segmentation"]
    out = {k: v for k, v in asdict(opts).items() if k not in OUTPUT_OPTIONS and k not in other}
    if "targets" in details:
        out["targets"] = details["targets"]
    out["precision"] = precision(device, opts.amp)
    return out


def _split(plan: Plan, backbone: Backbone, name: str, augment: Augment | None) -> Split:
    ds = plan.dataset
    recs = ds.split(name)
    seg = plan.seg.get(name)
    if seg is None:
        return Split(ImageSet(ds, recs, backbone.preprocess, augment, plan.cfg.seed), ds.labels(recs))
    # training masks travel with their images through augmentation; val/test targets are indexed
    masks = seg.targets if name == "train" else None
    images = ImageSet(ds, recs, backbone.preprocess, augment, plan.cfg.seed, masks, seg.images)
    return Split(images, seg.targets, seg)


def _cases(split: Split) -> int:
    # segmentation counts cases (images or volumes) like the frozen seg rows; its targets are rows
    return len(split.seg) if split.seg is not None else len(split.targets)


@dataclass
class Scored:
    """One metric of the test split, ready to become a row."""

    name: str
    value: float
    ci_low: float | None
    ci_high: float | None
    ci_method: str
    warnings: list[str]


def _score_classification(
    plan: Plan, built: Built, test: Split, opts: TrainOptions, key: str
) -> list[Scored]:
    """Test scores with patient-bootstrap CIs; saves the predictions for ``radprobe compare``."""
    cfg, ds = plan.cfg, plan.dataset
    scores, _ = predict(built, test, int(opts.batch_size or 1), plan.device, opts.amp, cfg.num_workers)
    groups = ds.patients(ds.split("test"))
    metrics = bootstrap_metrics(
        test.targets, scores, ds.task, groups=groups, n_boot=cfg.n_boot, seed=cfg.seed
    )
    Predictions(
        sample_ids=np.asarray([r.sample_id for r in ds.split("test")]),
        groups=groups,
        labels=test.targets,
        scores=scores,
    ).save(predictions_path(cfg.out, key))
    ci = ci_method(cfg.n_boot)
    return [
        Scored(
            m.name,
            m.value,
            m.ci_low if cfg.n_boot else None,
            m.ci_high if cfg.n_boot else None,
            ci,
            list(m.warnings),
        )
        for m in metrics
    ]


def _score_segmentation(
    plan: Plan,
    built: Built,
    test: Split,
    opts: TrainOptions,
    protocol: str,
    info: BackboneInfo,
    key: str,
) -> list[Scored]:
    """Dice / IoU / HD95 per class with patient-bootstrap CIs, as the frozen seg protocols write them;
    saves the per-case scores for ``radprobe compare``."""
    from radprobe.metrics.segmentation import CaseTable, case_scores, summarize
    from radprobe.segmentation.output import slug
    from radprobe.segmentation.protocols import SegData, write_outputs

    cfg, ds = plan.cfg, plan.dataset
    assert test.seg is not None and test.seg.masks is not None
    preds, _ = predict_masks(built, test, int(opts.batch_size or 1), plan.device, opts.amp, cfg.num_workers)
    C = len(ds.classes)
    cases = [
        case_scores(p, m, C, c.spacing) for p, m, c in zip(preds, test.seg.masks, test.seg.cases, strict=True)
    ]
    metrics, warns = summarize(
        cases,
        ds.classes,
        test.seg.patients(),
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        unit=plan.seg_hparams["hd95_unit"],
    )
    ids = [c.sample_id for c in test.seg.cases]
    CaseTable.of(cases, ids, test.seg.patients(), ds.classes).save(predictions_path(cfg.out, key))
    data = SegData(
        dataset=ds,
        train=plan.seg["train"],
        val=plan.seg["val"],
        test=test.seg,
        size=int(test.targets.shape[-1]),
        seed=cfg.seed,
        device=str(plan.device),
        info=info,
        out=Path(cfg.out),
        tag=slug(f"{info.name}-{info.weights_digest[:8]}"),
    )
    write_outputs(
        protocol, data, preds, {"save_predictions": opts.save_predictions, "overlays": opts.overlays}
    )
    ci = ci_method(cfg.n_boot)
    return [
        Scored(m.name, m.value, m.ci_low, m.ci_high, ci if m.ci_low is not None else "", warns)
        for m in metrics
    ]


def train_protocol(
    plan: Plan, protocol: str, run_id: str, warn: Warn = None
) -> tuple[list[ResultRow], Built]:
    """Train, select and score one protocol; returns its rows (predictions are saved)."""
    cfg, ds = plan.cfg, plan.dataset
    opts, details = plan.options[protocol], plan.details[protocol]
    backbone = plan.take_backbone()
    info = backbone.info
    torch.manual_seed(int(digest({"init": cfg.seed, "protocol": protocol}, 15), 16))  # head, prompts
    unused = details.get("unused", [])
    head = make_head(ds, backbone, opts)
    built = build_model(protocol, backbone, head, opts, unused=unused)
    hparams = hparams_of(protocol, opts, details, plan.device, ds.task)
    if plan.segmentation:
        hparams.update(plan.seg_hparams, layers=list(head.grid_layers))
    subject = Subject(
        info.name, info.weights_digest, ds, cfg.seed, {"preprocess": backbone.preprocess.to_dict()}
    )
    train_key = eval_key(subject, protocol, hparams)
    key = eval_key(subject, protocol, hparams, cfg.n_boot)
    augment = (
        Augment(crop_scale=opts.crop_scale, rotate=opts.rotate, intensity=opts.intensity, hflip=opts.hflip)
        if opts.augment
        else None
    )
    train, val = _split(plan, backbone, "train", augment), _split(plan, backbone, "val", None)
    ckpt_dir = Path(cfg.out) / "checkpoints" / train_key
    state = fit(
        built,
        train,
        val,
        ds.task,
        opts,
        seed=cfg.seed,
        device=plan.device,
        checkpoints=Checkpointer(ckpt_dir, train_key),
        num_workers=cfg.num_workers,
        label=f"{info.name} · {protocol}",
        progress=cfg.progress,
        warn=warn,
    )
    distributed.barrier()  # every rank holds the best weights before rank 0 may remove them
    if (ranks := distributed.current()) is not None and not ranks.main:
        return [], built  # rank 0 scores the test split and writes the rows
    # Training is over: the model sees the test split for the first and only time here.
    test = _split(plan, backbone, "test", None)
    t_test = time.perf_counter()
    if plan.segmentation:
        scored = _score_segmentation(plan, built, test, opts, protocol, info, key)
    else:
        scored = _score_classification(plan, built, test, opts, key)
    test_s = time.perf_counter() - t_test
    if not opts.keep_checkpoints:
        remove_checkpoints(ckpt_dir)
    base = base_row(
        subject,
        run_id,
        eval_key=key,
        protocol=protocol,
        n=_cases(test),
        n_train=_cases(train),
        n_val=_cases(val),
        n_test=_cases(test),
        resolution=backbone.preprocess.resolution,
        # seg rows also record n_boot there, like the frozen seg rows (the training key leaves it out)
        hparams={**hparams, "n_boot": cfg.n_boot} if plan.segmentation else hparams,
        selected=_selected(plan, state, built),
        params=built.params,
        trainable_params=built.trainable_params,
        # training and validation time over all sessions of this run, plus scoring the test split
        wall_time_s=state.wall_time_s + test_s,
        imgs_per_s=state.train_images / state.train_time_s if state.train_time_s else 0.0,
        peak_mem_mb=max(state.peak_mem_mb, peak_memory_mb(plan.device)),
        env=_env(plan.device),
    )
    notes = (
        [f"{len(unused)} backbone parameters the forward pass never reaches were kept frozen: {unused[:3]}"]
        if unused
        else []
    )
    rows = [
        ResultRow(
            **base,
            metric=m.name,
            value=m.value,
            ci_low=m.ci_low,
            ci_high=m.ci_high,
            ci_method=m.ci_method,
            warnings=notes + m.warnings,
        )
        for m in scored
    ]
    return rows, built


def _selected(plan: Plan, state: Any, built: Built) -> dict[str, Any]:
    """What training chose on validation, and what it cost in trainable parameters."""
    params, trainable = built.params, built.trainable_params
    selected = {
        "epoch": state.best_epoch,
        "val_score": state.best_score,
        "epochs_run": state.epoch,
        "early_stopped": state.stop_reason != "max epochs",
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / params,
        "history": state.history,  # per epoch: train_loss, val_loss, val_score, imgs_per_s
    }
    if plan.segmentation:
        selected["val_dice"] = state.best_score  # the frozen seg protocols' name for it
    return selected


def run(plan: Plan, store: ResultStore, run_id: str, warn: Warn = None) -> EvalSummary:
    """Train each protocol of ``plan`` in turn and write its rows; one result row per (protocol, metric)."""
    cfg, ds = plan.cfg, plan.dataset
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=_backbone_name(plan),
        dataset=ds.name,
        cache_hit=False,
        splits={
            s: {"n": len(ds.split(s)), **({"rows": plan.seg[s].n_rows} if plan.segmentation else {})}
            for s in SPLITS
        },
    )
    for protocol in cfg.protocols:
        # training seeds torch's global RNG; the caller's stream is left as it was
        with torch.random.fork_rng(devices=_rng_devices(plan.device)):
            rows, built = train_protocol(plan, protocol, run_id, warn)
        del built  # free the trained copy before the next protocol builds its own
        store.write(rows)
        summary.rows.extend(asdict(r) for r in rows)
    return summary


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _backbone_name(plan: Plan) -> str:
    assert plan.backbone is not None
    return plan.backbone.info.name
