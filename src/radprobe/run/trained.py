"""The trained family (finetune and the PEFT methods): train, select on val, score test.

Everything is validated first — protocols, options, device, dataset (segmentation: every mask),
backbone and each method's fit to the backbone — and nothing is written to ``cfg.out`` before that
passes. Each protocol then trains a fresh copy of the backbone, checkpointing to
``<out>/checkpoints/<train key>/`` every epoch (a rerun of the same command resumes there, or goes
straight to scoring if training had finished), scores the test split exactly once with the best
validation epoch's weights (``select=last``: the last epoch's; ``refit``: those of a new head of the
selected kind trained on train + val, the trained backbone frozen), and writes one row per metric.

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

__all__ = ["Plan", "run", "train_protocol", "validate"]

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from radprobe.core.runtime import env_info, peak_memory_mb
from radprobe.features.image_source import decoded_split
from radprobe.finetune import distributed
from radprobe.finetune.checkpoint import Checkpointer, TrainState
from radprobe.finetune.data import Augment, ImageSet, JoinedEntry, ResizedCrop, describe
from radprobe.finetune.heads import Head, HeadGrid, make_head, paper_grid
from radprobe.finetune.methods import Built, TrainModel, build_model, param_groups
from radprobe.finetune.options import TrainOptions
from radprobe.finetune.predict import Split, predict, predict_masks
from radprobe.finetune.train import fit, hparams_of, remove_checkpoints
from radprobe.protocols import registry
from radprobe.results import ResultRow, ResultStore
from radprobe.results.predictions import predictions_path
from radprobe.results.rows import Scored, Subject, base_row, eval_key, metric_rows
from radprobe.run.config import EvalSummary, image_cache
from radprobe.run.scoring import score_cases, score_classification, scored_cases
from radprobe.run.trained_plan import Plan, validate
from radprobe.utils import digest

if TYPE_CHECKING:
    from radprobe.backbones.base import Backbone, BackboneInfo

CLASSIFICATION_TASKS = registry.CLASSIFICATION
SPLITS = ("train", "val", "test")
Warn = Callable[[str], None] | None


def _env(device: torch.device) -> dict[str, Any]:
    ranks = distributed.current()
    # imgs/s counts every rank's images; peak memory is rank 0's
    return env_info(str(device), data_parallel_ranks=1 if ranks is None else ranks.world)


def _decoded(plan: Plan, backbone: Backbone, name: str) -> Any:
    """The split's decoded-image entry (2D), so training decodes each image once for all its epochs
    and protocols; None without the image cache."""
    cache = image_cache(plan.cfg)
    if cache is None or plan.dataset.ndim != 2:
        return None
    return decoded_split(cache, plan.dataset, name, backbone.preprocess, plan.cfg.num_workers or 0)


def _split(plan: Plan, backbone: Backbone, name: str, augment: Augment | ResizedCrop | None) -> Split:
    ds = plan.dataset
    if name == "train+val":  # a refit's training set (classification only)
        recs = ds.split("train") + ds.split("val")
        joined = None
        if not isinstance(augment, ResizedCrop):  # torchvision's crop reads the originals
            joined = JoinedEntry.of([_decoded(plan, backbone, s) for s in ("train", "val")])
        images = ImageSet(ds, recs, backbone.preprocess, augment, plan.cfg.seed, decoded=joined)
        return Split(images, ds.labels(recs))
    recs = ds.split(name)
    seg = plan.seg.get(name)
    if seg is None:
        # torchvision's crop reads the original images: a resized entry would go unread
        decoded = None if isinstance(augment, ResizedCrop) else _decoded(plan, backbone, name)
        images = ImageSet(ds, recs, backbone.preprocess, augment, plan.cfg.seed, decoded=decoded)
        return Split(images, ds.labels(recs))
    # training masks travel with their images through augmentation; val/test targets are indexed
    masks = seg.targets if name == "train" else None
    # 2D: the split's decoded-image entry (read every epoch, augmented on the device); 3D: the slices
    decoded = _decoded(plan, backbone, name) if seg.images is None else None
    images = ImageSet(ds, recs, backbone.preprocess, augment, plan.cfg.seed, masks, seg.images, decoded)
    return Split(images, seg.targets, seg)


def _cases(split: Split) -> int:
    # segmentation counts cases (images or volumes) like the frozen seg rows; its targets are rows
    return len(split.seg) if split.seg is not None else len(split.targets)


def _score_classification(
    plan: Plan, built: Built, test: Split, opts: TrainOptions, key: str
) -> list[Scored]:
    """Test scores with patient-bootstrap CIs; saves the predictions for ``radprobe compare``."""
    cfg, ds = plan.cfg, plan.dataset
    scores, _ = predict(
        built,
        test,
        int(opts.batch_size or 1),
        plan.device,
        opts.amp,
        cfg.num_workers or 0,
        amp_dtype=opts.amp_dtype,
    )
    recs = ds.split("test")
    return score_classification(
        test.targets,
        scores,
        ds.task,
        ds.patients(recs),
        [r.sample_id for r in recs],
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        path=predictions_path(cfg.out, key),
        class_names=ds.classes,
    )


def _score_segmentation(
    plan: Plan, built: Built, test: Split, opts: TrainOptions, protocol: str, info: BackboneInfo, key: str
) -> list[Scored]:
    """Dice / IoU / HD95 per class with patient-bootstrap CIs, as the frozen seg protocols write them;
    saves the per-case scores for ``radprobe compare``."""
    from radprobe.metrics.segmentation import case_scores
    from radprobe.segmentation.output import slug
    from radprobe.segmentation.protocols import SegData, write_outputs

    cfg, ds = plan.cfg, plan.dataset
    assert test.seg is not None and test.seg.masks is not None
    preds, _ = predict_masks(
        built,
        test,
        int(opts.batch_size or 1),
        plan.device,
        opts.amp,
        cfg.num_workers or 0,
        amp_dtype=opts.amp_dtype,
    )
    C = len(ds.classes)
    cases = [
        case_scores(p, m, C, c.spacing) for p, m, c in zip(preds, test.seg.masks, test.seg.cases, strict=True)
    ]
    metrics, warns = score_cases(
        cases,
        ds.classes,
        test.seg.patients(),
        [c.sample_id for c in test.seg.cases],
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        unit=plan.seg_hparams["hd95_unit"],
        path=predictions_path(cfg.out, key),
    )
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
    return scored_cases(metrics, warns, cfg.n_boot)


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
    augment = _augment(opts)
    if isinstance(augment, ResizedCrop):  # exact on decoded images; seg rows carry masks: affine
        hparams["augmentation"] = describe(augment, resized_rows=plan.segmentation)
    subject = Subject(
        info.name, info.weights_digest, ds, cfg.seed, {"preprocess": backbone.preprocess.to_dict()}
    )
    train_key = eval_key(subject, protocol, hparams)
    key = eval_key(subject, protocol, hparams, cfg.n_boot)
    train, val = _split(plan, backbone, "train", augment), _split(plan, backbone, "val", None)
    ckpt_dir = Path(cfg.out) / "checkpoints" / train_key
    label = f"{info.name} · {protocol}"
    fit_kw: dict[str, Any] = dict(
        seed=cfg.seed, device=plan.device, num_workers=cfg.num_workers or 0, progress=cfg.progress, warn=warn
    )
    state = fit(
        built, train, val, ds.task, opts, checkpoints=Checkpointer(ckpt_dir, train_key), label=label, **fit_kw
    )
    # what the method trains, counted before a refit freezes the backbone
    counts = (built.params, built.trainable_params)
    head, refit = built.model.head, None
    if opts.refit:
        built, refit = _refit(plan, backbone, built, opts, ckpt_dir, train_key, label, fit_kw)
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
        remove_checkpoints(ckpt_dir / "refit")
        remove_checkpoints(ckpt_dir)
    base = base_row(
        subject,
        run_id,
        n=_cases(test),
        n_train=_cases(train),
        n_val=_cases(val),
        n_test=_cases(test),
        resolution=backbone.preprocess.resolution,
        params=counts[0],
        trainable_params=counts[1],
        # training and validation time over all sessions of this run, plus scoring the test split
        wall_time_s=state.wall_time_s + (refit.wall_time_s if refit is not None else 0.0) + test_s,
        imgs_per_s=state.train_images / state.train_time_s if state.train_time_s else 0.0,
        peak_mem_mb=max(state.peak_mem_mb, peak_memory_mb(plan.device)),
        # where training rows were augmented (device: batched on the training device; the refit's
        # train + val rows are decoded per item): the same numbers to float rounding, so not a key
        env={**_env(plan.device), "augment_path": train.images.augment_path},
    )
    notes = (
        [f"{len(unused)} backbone parameters the forward pass never reaches were kept frozen: {unused[:3]}"]
        if unused
        else []
    )
    if opts.head_grid == "paper":
        notes += paper_grid(max(1, info.num_blocks), info.patch_size is not None)[1]
    # seg rows also record n_boot in hparams, like the frozen seg rows (the training key leaves it out)
    row_hparams = {**hparams, "n_boot": cfg.n_boot} if plan.segmentation else hparams
    selected = _selected(plan, state, counts, head, refit)
    return metric_rows(base, key, protocol, scored, row_hparams, selected, notes), built


def _augment(opts: TrainOptions) -> Augment | ResizedCrop | None:
    if not opts.augment:
        return None
    if opts.crop == "torchvision":
        ratio = (3 / 4, 4 / 3) if opts.crop_ratio is None else (1 / opts.crop_ratio, opts.crop_ratio)
        return ResizedCrop(scale=(opts.crop_scale, 1.0), ratio=ratio, hflip=0.5 if opts.hflip else 0.0)
    ratio = {} if opts.crop_ratio is None else {"ratio": (1 / opts.crop_ratio, opts.crop_ratio)}
    return Augment(
        crop_scale=opts.crop_scale, rotate=opts.rotate, intensity=opts.intensity, hflip=opts.hflip, **ratio
    )


def _refit(
    plan: Plan,
    backbone: Backbone,
    built: Built,
    opts: TrainOptions,
    ckpt_dir: Path,
    train_key: str,
    label: str,
    fit_kw: dict[str, Any],
) -> tuple[Built, TrainState]:
    """A new head of the selected kind trained on train + val; the trained backbone stays frozen.

    As the paper's code refits (linear.py:535-601): the tuned backbone is kept and not optimized,
    the head starts afresh at the selected head's lr, and the last epoch's weights are scored.
    """
    ds, cfg = plan.dataset, plan.cfg
    head = built.model.head
    choice = head.choice if isinstance(head, HeadGrid) else None
    torch.manual_seed(int(digest({"init": cfg.seed, "refit": train_key}, 15), 16))
    if choice is not None:
        new_head: Head = HeadGrid(backbone.info.embed_dim, len(ds.classes), ds.task, [choice])
    else:
        new_head = make_head(ds, backbone, opts)
    for p in built.model.encoder.parameters():
        p.requires_grad_(False)
    model = TrainModel(built.model.encoder, new_head, frozen_encoder=True)
    refit = Built(model, param_groups(model, opts, "refit"), built.details)
    train = _split(plan, backbone, "train+val", _augment(opts))
    state = fit(
        refit,
        train,
        None,
        ds.task,
        replace(opts, select="last", patience=0),
        checkpoints=Checkpointer(ckpt_dir / "refit", f"{train_key}/refit"),
        label=f"{label} · refit",
        **fit_kw,
    )
    return refit, state


def _selected(
    plan: Plan, state: Any, counts: tuple[int, int], head: Head, refit: TrainState | None = None
) -> dict[str, Any]:
    """What training chose on validation (``head``: the searched head), and what it cost in
    trainable parameters (``counts``: total and trainable)."""
    params, trainable = counts
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
    if isinstance(head, HeadGrid):
        selected["head"] = asdict(head.choice)
    if refit is not None:
        selected["refit"] = {"epochs_run": refit.epoch, "history": refit.history}
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
