"""The training loop every trained protocol shares.

AdamW (``optimizer=sgd``: SGD with momentum); the learning rate warms up linearly for
``warmup_epochs`` and then follows a cosine to zero, set per optimizer step from the step count (so
resuming needs no scheduler object). Micro-batches accumulate ``accum_steps`` at a time; the gradient
norm is clipped; on CUDA the forward pass runs under bf16 (``amp_dtype=fp16``: fp16) autocast. After
every epoch the model is scored on validation (the task's headline metric; segmentation: macro
foreground Dice of the predicted masks at their original size, per image or per reassembled volume;
a grid of heads: each head's AUROC, the best head predicting); the best epoch's weights are kept
(``select=last``: the last epoch's) and training stops after ``patience`` epochs without
improvement. The test split is never seen here.

Resumability: each epoch starts by seeding torch's global RNG (dropout, LoRA dropout) from
(seed, epoch), and batch order and augmentation are functions of (seed, epoch, index), so an epoch
replayed after a crash is the epoch that would have run. A checkpoint is written after every epoch.

Augmentation on the device (``augment_on=device``, the default): when the training rows are stored
(decoded-image entry or resized ``pixels``) and the augmentation is the affine one, the loader
only reads stored rows and each batch is augmented and normalised on the device in one batched
resampling (:meth:`ImageSet.device_batch`), with the per-item path's draws; elsewhere, and with
``augment_on=cpu``, each item is augmented on the CPU in the loader.

``eval_mode_after``: from that epoch on the encoder trains in eval mode (no dropout, BatchNorm on
its running statistics), as the paper's released code does after its first mid-run evaluation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from radprobe.core.runtime import peak_memory_mb
from radprobe.core.sampling import derived_seed, stream_batches
from radprobe.errors import RadprobeError
from radprobe.finetune import distributed
from radprobe.finetune.checkpoint import Checkpointer, TrainState
from radprobe.finetune.data import batches_per_epoch, train_loader
from radprobe.finetune.methods import Built, TrainModel
from radprobe.finetune.options import ADDED_OPTIONS, OUTPUT_OPTIONS, TASK_OPTIONS, TrainOptions
from radprobe.finetune.predict import Split, autocast, precision, unpack, val_score
from radprobe.progress import make_progress

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


# Called with the number of finished epochs right after each checkpoint is written. Tests use it to
# simulate a crash between epochs; it is not an extension point.
after_checkpoint: Callable[[int], None] | None = None


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


@dataclass
class _Run:
    """What stays fixed over one training run: the model and its optimizer, the batches, the schedule
    and this rank's share."""

    built: Built
    net: torch.nn.Module  # the model, wrapped for data parallelism under torchrun
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    opts: TrainOptions
    device: torch.device
    seed: int
    num_workers: int
    label: str
    bs: int
    accum: int
    n_batches: int  # micro-batches per epoch
    total: int  # optimizer steps over all epochs
    warmup: int  # warmup steps
    shard: tuple[int, int] | None  # (rank, world) under torchrun
    world: int
    writes: bool  # this rank writes the checkpoints


@dataclass
class _Epoch:
    """What one epoch of training did: each micro-batch's loss, the images seen by all ranks, seconds."""

    losses: list[float]
    seen: int
    train_s: float


def fit(
    built: Built,
    train: Split,
    val: Split | None,
    task: str,
    opts: TrainOptions,
    *,
    seed: int,
    device: torch.device,
    checkpoints: Checkpointer,
    num_workers: int = 0,
    label: str = "",
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> TrainState:
    """Train ``built`` on ``train``, select on ``val``; leaves the model holding the best epoch's weights
    (``select=last``: the last epoch's). ``val=None`` (a refit) trains without validation and keeps
    the last epoch.

    Under torchrun (:mod:`radprobe.finetune.distributed`) the ranks train one model together.
    """
    run = _setup(built, opts, device, len(train.images), seed, num_workers, label)
    train.images.batched = opts.augment_on == "device" and train.images.batchable
    state = _start_state(run, checkpoints, warn)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with make_progress(progress and run.writes) as bar:
        task_id = bar.add_task(
            label, total=opts.epochs * run.n_batches * run.bs, completed=state.epoch * run.n_batches * run.bs
        )
        while not state.finished and state.epoch < opts.epochs:
            t_epoch = time.perf_counter()
            done = _train_epoch(run, train, state, bar, task_id)
            scored = None
            if val is not None:
                scored = val_score(
                    built, val, task, run.bs, device, opts.amp, num_workers, run.shard, opts.amp_dtype
                )
            _record_epoch(run, state, checkpoints, done, scored)
            state.peak_mem_mb = max(state.peak_mem_mb, peak_memory_mb(device))
            state.wall_time_s += time.perf_counter() - t_epoch
            if run.writes:
                checkpoints.save(built.model, run.optimizer, state)
            distributed.barrier()  # the other ranks may read these files (resume, best weights)
            if after_checkpoint is not None:
                after_checkpoint(state.epoch)
    if run.writes:  # the other data-parallel ranks are done: rank 0 alone scores the test split
        checkpoints.load_best(built.model, state.best_file)
    return state


def _setup(
    built: Built,
    opts: TrainOptions,
    device: torch.device,
    n_train: int,
    seed: int,
    num_workers: int,
    label: str,
) -> _Run:
    """Move the model to ``device`` (wrapped for the torchrun ranks), make its optimizer, plan the steps."""
    model = built.model.to(device)
    ranks = distributed.current()
    bs, accum = int(opts.batch_size or 1), opts.accum_steps
    if ranks is not None and bs % ranks.world:
        raise RadprobeError(
            f"batch_size {bs}: must be a multiple of the {ranks.world} torchrun ranks (equal shares)"
        )
    net = distributed.wrap(model, device)
    optimizer: torch.optim.Optimizer
    if opts.optimizer == "sgd":
        optimizer = torch.optim.SGD(built.groups, lr=opts.lr, momentum=opts.momentum)
    else:
        optimizer = torch.optim.AdamW(built.groups, lr=opts.lr, betas=(0.9, 0.999))
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    if opts.sampler == "stream":
        bs = min(bs, n_train)  # the paper's code: the whole set when it is smaller than a batch
    n_batches = stream_batches(n_train, bs) if opts.sampler == "stream" else batches_per_epoch(n_train, bs)
    steps_per_epoch = math.ceil(n_batches / accum)
    return _Run(
        built=built,
        net=net,
        optimizer=optimizer,
        params=[p for g in optimizer.param_groups for p in g["params"]],
        opts=opts,
        device=device,
        seed=seed,
        num_workers=num_workers,
        label=label,
        bs=bs,
        accum=accum,
        n_batches=n_batches,
        total=opts.epochs * steps_per_epoch,
        warmup=round(opts.warmup_epochs * steps_per_epoch),
        shard=None if ranks is None else (ranks.rank, ranks.world),
        world=1 if ranks is None else ranks.world,  # rows per epoch count every rank's equal share
        writes=ranks is None or ranks.main,
    )


def _start_state(run: _Run, checkpoints: Checkpointer, warn: Callable[[str], None] | None) -> TrainState:
    """A fresh loop state, or the one (with model and optimizer) restored from the last checkpoint."""
    state = TrainState()
    resume = checkpoints.exists()
    distributed.agree(resume, f"a checkpoint in {checkpoints.dir}")
    if resume:
        state = checkpoints.load(run.built.model, run.optimizer, run.device)
        if warn is not None and not state.finished:
            warn(f"{run.label}: resuming from the checkpoint after epoch {state.epoch} in {checkpoints.dir}")
    return state


def _train_epoch(run: _Run, train: Split, state: TrainState, bar: Progress, task_id: TaskID) -> _Epoch:
    """Epoch ``state.epoch`` over ``train``: micro-batches accumulated into optimizer steps."""
    epoch, opts, device = state.epoch, run.opts, run.device
    torch.manual_seed(derived_seed("torch", run.seed, epoch))
    model = run.built.model
    _train_mode(model, opts, epoch)
    losses: list[float] = []
    seen = 0
    t0 = time.perf_counter()
    loader = train_loader(
        train.images,
        run.bs,
        epoch,
        run.seed,
        run.num_workers,
        shard=run.shard,
        stream=opts.sampler == "stream",
        pin_memory=train.images.batched and device.type == "cuda",
    )
    for j, batch in enumerate(loader):
        group_start = (j // run.accum) * run.accum
        in_group = min(run.accum, run.n_batches - group_start)
        if train.images.batched:
            batch = train.images.device_batch(batch, device)
        x, rows, y = unpack(batch, train, device)
        with autocast(device, opts.amp, opts.amp_dtype):
            logits = run.net(x)
        loss = model.head.loss(logits, y)
        (loss / in_group).backward()
        losses.append(float(loss.detach()))
        seen += len(rows) * run.world
        if j + 1 - group_start == in_group:
            _step(run, state)
        bar.update(
            task_id,
            advance=len(rows) * run.world,
            description=f"{run.label} · epoch {epoch + 1}/{opts.epochs} · loss {np.mean(losses):.4f}"
            f" · lr {run.optimizer.param_groups[-1]['lr']:.2e}",
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return _Epoch(losses, seen, time.perf_counter() - t0)


def _train_mode(model: TrainModel, opts: TrainOptions, epoch: int) -> None:
    """Train mode for epoch ``epoch``; from ``eval_mode_after`` on, the encoder in eval mode.

    As released, the paper's first mid-run evaluation (after 5 epochs) calls ``.eval()`` on the
    feature model (backbone with its adapters) and nothing sets train mode again; its heads are not
    switched. The mode depends on the epoch alone, so a resumed run is in the mode it left.
    """
    model.train()
    if opts.eval_mode_after is not None and epoch >= opts.eval_mode_after:
        model.encoder.eval()


def _step(run: _Run, state: TrainState) -> None:
    """One optimizer step at the scheduled learning rate, on the clipped accumulated gradients."""
    factor = lr_factor(state.step, run.total, run.warmup)
    for g in run.optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
    if run.opts.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.params, run.opts.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1


def _record_epoch(
    run: _Run,
    state: TrainState,
    checkpoints: Checkpointer,
    done: _Epoch,
    scored: tuple[float, float] | None,
) -> None:
    """Count a finished epoch into ``state``: the kept weights so far, the history, whether to stop.

    ``scored``: the validation (score, loss), or None when training without validation.
    """
    opts = run.opts
    state.epoch += 1
    state.train_time_s += done.train_s
    state.train_images += done.seen
    score = -math.inf if scored is None else scored[0]
    improved = scored is None or opts.select == "last" or state.best_epoch == 0 or score > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
        state.best_file = checkpoints.save_best(run.built.model, state.epoch, write=run.writes)
    else:
        state.bad_epochs += 1
    entry = {"epoch": state.epoch, "train_loss": distributed.mean(float(np.mean(done.losses)))}
    if scored is not None:
        entry.update(val_loss=scored[1], val_score=score)
    state.history.append({**entry, "imgs_per_s": done.seen / done.train_s if done.train_s > 0 else 0.0})
    if opts.patience and state.bad_epochs >= opts.patience:
        state.finished, state.stop_reason = True, f"no improvement for {opts.patience} epochs"
    elif state.epoch >= opts.epochs:
        state.finished, state.stop_reason = True, "max epochs"


def remove_checkpoints(directory: Path) -> None:
    """Delete a finished run's checkpoint files (``keep_checkpoints=false``)."""
    for p in directory.glob("*.safetensors"):
        p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def hparams_of(
    protocol: str, opts: TrainOptions, details: dict[str, Any], device: torch.device, task: str
) -> dict[str, Any]:
    """Everything that shapes the training result (and so the checkpoint key).

    Options added after the first trained release are left out at their defaults, so runs that do
    not use them keep their keys; momentum is recorded whenever SGD uses it.
    """
    other = TASK_OPTIONS["classification" if task == "segmentation" else "segmentation"]
    always = {"preset"} if protocol in ("lora", "dora") else set()
    if opts.optimizer == "sgd":
        always.add("momentum")
    if opts.head_grid != "none":
        other = (*other, "lr", "pool")  # the grid sets every head's lr and input
    out = {
        k: v
        for k, v in asdict(opts).items()
        if k not in OUTPUT_OPTIONS
        and k not in other
        and (k in always or k not in ADDED_OPTIONS or v != ADDED_OPTIONS[k])
    }
    if "targets" in details:
        out["targets"] = details["targets"]
    out["precision"] = precision(device, opts.amp, opts.amp_dtype)
    return out
