"""Training and inference loops shared by every segmentation protocol.

A model maps a batch of inputs (cached patch grids, or images for the U-Net) to logits at any
resolution; logits are upsampled bilinearly to the target size for the loss (MONAI DiceCELoss:
softmax Dice over all classes, batch-wise, plus cross-entropy) and to each case's original mask
size for prediction. AdamW with a cosine schedule; ``max(epochs * steps_per_epoch, min_steps)``
steps, so a 1-shot training set still gets a useful number of updates. Initial weights and batch
order are seeded, so each learning rate of a sweep sees the same batches from the same start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radprobe.core.runtime import peak_memory_mb
from radprobe.segmentation.data import SegSplit

Inputs = Any  # dict[int, Tensor] of grids, or a Tensor of images
Fetch = Callable[[np.ndarray], Inputs]


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    epochs: int
    min_steps: int
    batch_size: int
    weight_decay: float
    seed: int
    device: str = "cpu"


@dataclass
class TrainStats:
    steps: int
    seconds: float
    imgs_per_s: float
    peak_mem_mb: float
    final_loss: float


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` read in sorted order (sequential on a memory map), returned in ``rows``' order."""
    return np.asarray(array[np.sort(rows)])[np.argsort(np.argsort(rows))]


def grid_fetch(features: dict[int, np.ndarray], layers: list[int], device: str) -> Fetch:
    """Rows of cached grids -> {layer: float32 tensor} on ``device``."""

    def fetch(rows: np.ndarray) -> dict[int, torch.Tensor]:
        return {
            layer: torch.from_numpy(read_rows(features[layer], rows).astype(np.float32)).to(device)
            for layer in layers
        }

    return fetch


def concat_fetch(first: Fetch, second: Fetch, n_first: int) -> Fetch:
    """Rows ``< n_first`` from ``first``, the others (less ``n_first``) from ``second``, in order."""

    def fetch(rows: np.ndarray) -> Inputs:
        a, b = rows < n_first, rows >= n_first
        xa, xb = first(rows[a]), second(rows[b] - n_first)

        def merge(ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
            out = ta.new_empty((len(rows), *ta.shape[1:]))
            out[torch.from_numpy(np.flatnonzero(a)).to(out.device)] = ta
            out[torch.from_numpy(np.flatnonzero(b)).to(out.device)] = tb
            return out

        return {k: merge(xa[k], xb[k]) for k in xa} if isinstance(xa, dict) else merge(xa, xb)

    return fetch


def image_fetch(images: np.ndarray, device: str) -> Fetch:
    """Rows of resized images -> float32 tensor on ``device``."""

    def fetch(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(images[rows], dtype=np.float32)).to(device)

    return fetch


def dice_ce_loss() -> nn.Module:
    """The loss of every segmentation head: MONAI DiceCELoss on logits and (B, 1, H, W) class maps."""
    from monai.losses import DiceCELoss

    # batch=True pools Dice over the batch: slices without a class don't each count as a perfect 1
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)


def train(
    model: nn.Module,
    fetch: Fetch,
    targets: np.ndarray,
    rows: np.ndarray,
    s: TrainSettings,
) -> TrainStats:
    """Train ``model`` in place on ``rows`` (indices into ``targets`` and the fetch source)."""
    device = torch.device(s.device)
    model.to(device).train()
    loss_fn = dice_ce_loss()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    bs = max(1, min(s.batch_size, len(rows)))
    per_epoch = math.ceil(len(rows) / bs)
    total = max(s.epochs * per_epoch, s.min_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
    rng = np.random.default_rng(s.seed)
    size = targets.shape[-1]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, seen, last = 0, 0, float("nan")
    t0 = time.perf_counter()
    while step < total:
        order = rows[rng.permutation(len(rows))]
        for i in range(0, len(order), bs):
            if step >= total:
                break
            batch = order[i : i + bs]
            if len(batch) < bs and per_epoch > 1:
                continue  # a tail batch of one slice makes BatchNorm statistics noisy
            x = fetch(batch)
            y = torch.from_numpy(targets[batch].astype(np.int64)).to(device)[:, None]
            last = optimize(model, opt, sched, x, y, (size, size), loss_fn)
            step += 1
            seen += len(batch)
    return finish(model, fetch, rows, bs, device, step, seen, time.perf_counter() - t0, last)


def optimize(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    x: Inputs,
    y: torch.Tensor,
    size: tuple[int, ...],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> float:
    """One step: logits upsampled bilinearly to the target ``size``, the loss, its gradient, the
    optimizer and schedule stepped; returns the loss."""
    logits = model(x)
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    loss = loss_fn(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def finish(
    model: nn.Module,
    fetch: Fetch,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    steps: int,
    seen: int,
    seconds: float,
    last: float,
) -> TrainStats:
    """Exact BatchNorm statistics over the training rows, eval mode, and the run's accounting."""
    precise_bn(model, fetch, rows, batch_size)
    model.eval()
    return TrainStats(steps, seconds, seen / seconds if seconds > 0 else 0.0, peak_memory_mb(device), last)


@torch.no_grad()
def precise_bn(model: nn.Module, fetch: Fetch, rows: np.ndarray, batch_size: int) -> None:
    """Replace BatchNorm running statistics by exact averages over the training rows.

    The features are frozen, so exact statistics are cheap, and they remove the train/eval mismatch
    that an exponential average leaves after a few hundred steps (or a 1-shot training set).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(0, len(rows), batch_size):
        model(fetch(rows[i : i + batch_size]))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom


def upsampling(model: nn.Module, split: SegSplit) -> str:
    """How ``model``'s logits reach ``split``'s masks: bilinearly, or, scored at the input resolution,
    as the head upsamples in training (the released heads: bilinear, or bicubic for the up decoder)."""
    return getattr(model, "upsample", "bilinear") if split.at_input else "bilinear"


def to_labels(logits: torch.Tensor, hw: tuple[int, ...], mode: str = "bilinear") -> torch.Tensor:
    """(B, C, h, w) logits -> (B, H, W) class maps at ``hw`` (``mode`` upsampling, then argmax), on CPU."""
    logits = F.interpolate(logits.float(), size=tuple(hw), mode=mode, align_corners=False)
    # max(1).indices is argmax(1) (first maximum, NaN as maximum), several times faster on a CPU
    return logits.max(1).indices.to(torch.uint8 if logits.shape[1] <= 256 else torch.int16).cpu()


Predictor = Callable[[nn.Module, Fetch, SegSplit], list[np.ndarray]]


@torch.no_grad()
def predict_in_train_mode(
    model: nn.Module, fetch: Fetch, split: SegSplit, batch_size: int, seed: int
) -> list[np.ndarray]:
    """Predicted class maps as Baharoon et al.'s notebooks predict: without ``model.eval()``, so
    BatchNorm normalises each batch by its own statistics and dropout stays on (seeded), in batches of
    ``batch_size`` rows in split order, the last one short. The model's weights and running
    statistics are left as they were."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    shapes = [c.shape[-2:] for c in split.cases for _ in range(c.rows.stop - c.rows.start)]
    rows_out: list[np.ndarray] = []
    device = next(model.parameters()).device
    mode = upsampling(model, split)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, split.n_rows, batch_size):
            logits = model(fetch(np.arange(i, min(i + batch_size, split.n_rows))))
            rows_out += [to_labels(z[None], shapes[i + k], mode)[0].numpy() for k, z in enumerate(logits)]
    model.load_state_dict(saved)
    model.eval()
    return split.assemble(rows_out)


@torch.no_grad()
def predict(model: nn.Module, fetch: Fetch, split: SegSplit, chunk: int = 16) -> list[np.ndarray]:
    """Predicted class maps of every case of ``split``, each at its original mask shape."""
    model.eval()
    out = []
    for case in split.cases:
        rows = np.arange(case.rows.start, case.rows.stop)
        hw = case.shape[-2:]
        parts = []
        for i in range(0, len(rows), chunk):
            parts.append(to_labels(model(fetch(rows[i : i + chunk])), hw, upsampling(model, split)))
        pred = torch.cat(parts).numpy()
        out.append(pred if len(case.shape) == 3 else pred[0])
    return out
