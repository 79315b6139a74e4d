"""``radprobe eval --protocol finetune,lora,dora,bitfit,vpt,partial``: train, select on val, score test.

Everything is validated first — protocols, options, device, dataset, backbone and each method's fit
to the backbone — and nothing is written to ``cfg.out`` before that passes. Each protocol then trains
a fresh copy of the backbone, checkpointing to ``<out>/checkpoints/<train key>/`` every epoch (a rerun
of the same command resumes there, or goes straight to scoring if training had finished), scores the
test split exactly once with the best validation epoch's weights, and writes one row per metric plus
the test predictions (for ``radprobe compare``).

The checkpoint directory is keyed by the training spec (everything but ``n_boot``), so changing the
number of bootstrap resamples re-scores without retraining; the rows' ``eval_key`` adds ``n_boot``.
"""

from __future__ import annotations

import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import radprobe
from radprobe.errors import RadprobeError
from radprobe.finetune.checkpoint import Checkpointer
from radprobe.finetune.data import Augment, ImageSet
from radprobe.finetune.heads import ClassificationHead, Head, class_weights
from radprobe.finetune.methods import METHODS, Built, build_model, check_method, unreached_parameters
from radprobe.finetune.options import TrainOptions, parse_options
from radprobe.finetune.train import Split, fit, precision, predict, remove_checkpoints
from radprobe.metrics import bootstrap_metrics
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import Predictions, predictions_path
from radprobe.utils import digest

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone
    from radprobe.data import Dataset
    from radprobe.run.evaluate import EvalConfig, EvalSummary

CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel")
SPLITS = ("train", "val", "test")
Warn = Callable[[str], None] | None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RadprobeError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise RadprobeError(f"--device {name!r}: expected cpu, cuda, cuda:N, mps or auto")
    return torch.device(name)


def _env(device: torch.device) -> dict[str, Any]:
    return {
        "radprobe": radprobe.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "machine": platform.machine(),
    }


@dataclass
class Plan:
    """A validated trained evaluation: dataset, a first backbone, and each protocol's options."""

    cfg: EvalConfig
    dataset: Dataset
    backbone: Backbone | None  # handed to the first protocol; later ones build their own
    device: torch.device
    options: dict[str, TrainOptions]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def take_backbone(self) -> Backbone:
        """The validated backbone once, then fresh (identical) builds: each protocol changes its own."""
        if self.backbone is not None:
            bb, self.backbone = self.backbone, None
            return bb
        return _create_backbone(self.cfg)


def _create_backbone(cfg: EvalConfig) -> Backbone:
    from radprobe.backbones import create_backbone

    return create_backbone(
        cfg.backbone,
        weights=cfg.weights,
        allow_partial_weights=cfg.allow_partial_weights,
        resolution=cfg.resolution,
    )


def validate(cfg: EvalConfig) -> Plan:
    """Check everything a trained evaluation needs; raises :class:`RadprobeError`, writes nothing."""
    from radprobe.data import load_dataset

    if not cfg.protocols:
        raise RadprobeError("--protocol: expected at least one protocol name")
    for p in cfg.protocols:
        if p not in METHODS:
            raise RadprobeError(
                f"--protocol {p}: unknown trained protocol; expected one of {', '.join(METHODS)}"
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
    device = _device(cfg.device)
    dataset = load_dataset(cfg.dataset)
    if dataset.task not in CLASSIFICATION_TASKS:
        raise RadprobeError(
            f"dataset {cfg.dataset} is a {dataset.task} dataset; trained protocols support classification "
            f"({', '.join(CLASSIFICATION_TASKS)}) for now"
        )
    if dataset.ndim != 2:
        raise RadprobeError(f"dataset {cfg.dataset} is {dataset.ndim}D; trained protocols support 2D images")
    for s in SPLITS:
        if not dataset.split(s):
            raise RadprobeError(f"dataset {cfg.dataset} has no {s!r} split")
    backbone = _create_backbone(cfg)
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
    return Plan(cfg, dataset, backbone, device, options, details)


def make_head(dataset: Dataset, backbone: Backbone, opts: TrainOptions) -> Head:
    """The task's head (classification now; segmentation heads will be chosen here by task)."""
    labels = dataset.labels(dataset.split("train"))
    weights = (
        class_weights(labels, dataset.task, len(dataset.classes))
        if opts.class_weights == "balanced"
        else None
    )
    return ClassificationHead(backbone.info.embed_dim, len(dataset.classes), dataset.task, opts.pool, weights)


def hparams_of(
    protocol: str, opts: TrainOptions, details: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Everything that shapes the training result (and so the checkpoint key)."""
    out = {k: v for k, v in asdict(opts).items() if k != "keep_checkpoints"}
    if "targets" in details:
        out["targets"] = details["targets"]
    out["precision"] = precision(device, opts.amp)
    return out


def _split(plan: Plan, backbone: Backbone, name: str, augment: Augment | None) -> Split:
    ds = plan.dataset
    recs = ds.split(name)
    return Split(ImageSet(ds, recs, backbone.preprocess, augment, plan.cfg.seed), ds.labels(recs))


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
    built = build_model(protocol, backbone, make_head(ds, backbone, opts), opts, unused=unused)
    hparams = hparams_of(protocol, opts, details, plan.device)
    spec = {
        "backbone": info.name,
        "weights": info.weights_digest,
        "preprocess": backbone.preprocess.to_dict(),
        "dataset": ds.manifest_digest(),
        "splits": [ds.split_digest(s) for s in SPLITS],
        "seed": cfg.seed,
        "protocol": protocol,
        "hparams": hparams,
    }
    train_key = digest(spec, 24)
    eval_key = digest({**spec, "n_boot": cfg.n_boot}, 24)
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
    # Training is over: the test split is read for the first and only time here.
    test = _split(plan, backbone, "test", None)
    t_test = time.perf_counter()
    scores, _ = predict(built, test, int(opts.batch_size or 1), plan.device, opts.amp, cfg.num_workers)
    test_s = time.perf_counter() - t_test
    groups = ds.patients(ds.split("test"))
    metrics = bootstrap_metrics(
        test.targets, scores, ds.task, groups=groups, n_boot=cfg.n_boot, seed=cfg.seed
    )
    Predictions(
        sample_ids=np.asarray([r.sample_id for r in ds.split("test")]),
        groups=groups,
        labels=test.targets,
        scores=scores,
    ).save(predictions_path(cfg.out, eval_key))
    if not opts.keep_checkpoints:
        remove_checkpoints(ckpt_dir)
    from radprobe.features.extract import peak_memory_mb

    params, trainable = built.params, built.trainable_params
    hist = state.history
    selected = {
        "epoch": state.best_epoch,
        "val_score": state.best_score,
        "epochs_run": state.epoch,
        "early_stopped": state.stop_reason != "max epochs",
        "trainable_params": trainable,
        "trainable_pct": 100.0 * trainable / params,
        "history": hist,  # per epoch: train_loss, val_loss, val_score, imgs_per_s
    }
    base = {
        "eval_key": eval_key,
        "run_id": run_id,
        "backbone": info.name,
        "weights_digest": info.weights_digest,
        "dataset": ds.name,
        "manifest_digest": ds.manifest_digest(),
        "split_digest": ds.split_digest("test"),
        "protocol": protocol,
        "seed": cfg.seed,
        "n": len(test.targets),
        "n_train": len(train.targets),
        "n_val": len(val.targets),
        "n_test": len(test.targets),
        "task": ds.task,
        "num_classes": len(ds.classes),
        "resolution": backbone.preprocess.resolution,
        "hparams": hparams,
        "selected": selected,
        "params": params,
        "trainable_params": trainable,
        # training and validation time over all sessions of this run, plus scoring the test split
        "wall_time_s": state.wall_time_s + test_s,
        "imgs_per_s": state.train_images / state.train_time_s if state.train_time_s else 0.0,
        "peak_mem_mb": max(state.peak_mem_mb, peak_memory_mb(plan.device)),
        "env": _env(plan.device),
    }
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
            ci_low=m.ci_low if cfg.n_boot else None,
            ci_high=m.ci_high if cfg.n_boot else None,
            ci_method=f"patient bootstrap x{cfg.n_boot}, percentile 95%" if cfg.n_boot else "",
            warnings=notes + list(m.warnings),
        )
        for m in metrics
    ]
    return rows, built


def evaluate_finetune(cfg: EvalConfig, warn: Warn = None) -> EvalSummary:
    """Run every trained protocol of ``cfg``; one result row per (protocol, metric)."""
    from radprobe.run.evaluate import EvalSummary

    plan = validate(cfg)
    run_id = uuid.uuid4().hex[:12]
    ds = plan.dataset
    summary = EvalSummary(
        run_id=run_id,
        out=str(cfg.out),
        backbone=_backbone_name(plan),
        dataset=ds.name,
        cache_hit=False,
        splits={s: {"n": len(ds.split(s))} for s in SPLITS},
    )
    with ResultStore(cfg.out) as store:
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
