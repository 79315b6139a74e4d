"""``preset=paper`` for the models trained from scratch (``seg-unet``, ``seg-transunet``).

Baharoon et al. train their U-Net (``unet.ipynb``) and TransUNet (``transunet.ipynb``) with the same
cells (cited as unet cell:line; transunet.ipynb has them one cell later from its cell 2 on, which
builds R50-ViT-L_16; repository MohammedSB/DINOv2ForRadiology at cb91e01, paths from its root):

* one model per learning rate of {1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1}, 50 epochs, batch 8
  (1:6-8), each scored on validation (2:31-55);
* ``SGD(momentum=0.9, weight_decay=0)`` and ``CosineAnnealingLR(epoch_length * epochs, eta_min=0)``
  stepped every iteration (2:7-8, 24); ``DiceLoss(softmax=True, to_onehot_y=True)`` (1:28);
* the final model: a new one, 100 epochs at lr 1e-3 on train + val (3:1-23, 4:1-18; the
  validation images with the training transforms, 3:4-8). The swept lr is not carried over. Its
  cosine keeps ``epoch_length`` of the training split alone (1:27, not recomputed), so over the
  longer train + val epochs the schedule reaches 0 and rises again, as ``CosineAnnealingLR`` does;
* loaders without a sampler (``sampler_type=None``), so batches come in dataset order, unshuffled,
  the last one short (``dinov2/data/loaders.py:224-241``, ``dinov2/eval/utils.py:636-650``);
* inputs: gray stacked to 3 channels (``dinov2/data/datasets/mc.py:73``), resized to 448, min-max
  per image and channel, ImageNet mean / std; in training, ``RandomVerticalFlip(0.25)`` twice (the
  "hflip" line builds a vertical flip too) and ``RandomRotation(90)`` (nearest, fill 0) on image and
  mask with one seed (``dinov2/data/transforms.py:117-151``, ``dinov2/data/datasets/mc.py:104-111``).

radprobe selects the best validation macro Dice of the sweep (recorded as ``selected.lr``); few-shot
draws keep that model (there is no train + val refit of a few-shot set). The notebooks predict val
and test without ``model.eval()``: ``predict_mode="train"`` (the preset) does the same, BatchNorm on
each batch of 8 in split order and dropout on; ``"eval"`` predicts in eval mode with exact BatchNorm
statistics of the training rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from radprobe.segmentation import fused, online
from radprobe.segmentation.train import (
    Fetch,
    Predictor,
    TrainStats,
    finish,
    optimize,
    predict,
    predict_in_train_mode,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNET = "milesial Pytorch-UNet (transposed-conv up steps, bilinear=False)"


@dataclass(frozen=True)
class ScratchSettings:
    """SGD with momentum and a per-step cosine to 0 whose period is ``cosine_steps`` (None: the run)."""

    lr: float
    epochs: int
    min_steps: int
    batch_size: int
    seed: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    cosine_steps: int | None = None
    augment: bool = True
    device: str = "cpu"


def cosine(step: int, period: int) -> float:
    """``CosineAnnealingLR(period, eta_min=0)``'s factor at ``step``, past the period too (it rises)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / period))


class PaperInput(nn.Module):
    """The released input pipeline around ``net``: gray repeated to 3 channels, min-max per image and
    channel, then ImageNet mean / std (``RescaleImage``, ``make_normalize_transform``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        lo, hi = x.amin((-2, -1), keepdim=True), x.amax((-2, -1), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-6)  # a constant image is 0, not the released NaN
        return self.net((x - self.mean) / self.std)


def augment_images(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (square) image and its mask together: a vertical flip with p = 0.25, again, then a rotation
    by an angle uniform in [-90, 90] degrees about the centre, nearest neighbour, outside filled 0."""
    B = len(x)
    flip = (rng.random(B) < online.FLIP_P) ^ (rng.random(B) < online.FLIP_P)
    return online.turn(x, y, flip, rng.uniform(-online.DEGREES, online.DEGREES, B))


def train_scratch(
    model: nn.Module, fetch: Fetch, targets: np.ndarray, rows: np.ndarray, s: ScratchSettings
) -> TrainStats:
    """Train ``model`` in place as the notebooks do: ``rows`` in order every epoch (the last batch
    short), MONAI's softmax Dice loss per image at the target size, SGD and the cosine of ``s``."""
    device = torch.device(s.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    bs = max(1, min(s.batch_size, len(rows)))
    total = max(s.epochs * math.ceil(len(rows) / bs), s.min_steps, 1)
    period = s.cosine_steps or total
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine(k, period))
    rng = np.random.default_rng(s.seed)
    size = targets.shape[-2:]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step, seen, last = 0, 0, float("nan")
    t0 = time.perf_counter()
    while step < total:
        for i in range(0, len(rows), bs):
            if step >= total:
                break
            batch = rows[i : i + bs]
            x = fetch(batch)
            y = torch.from_numpy(targets[batch].astype(np.int64)).to(device)
            if s.augment:
                x, y = augment_images(x, y, rng)
            last = optimize(model, opt, sched, x, y, size, _dice)
            step += 1
            seen += len(batch)
    return finish(model, fetch, rows, bs, device, step, seen, time.perf_counter() - t0, last)


def _dice(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return fused.dice_loss(logits[:, :, None], y)  # one head: MONAI's DiceLoss


def paper_sweep(
    data: Any,
    build: Callable[[], nn.Module],
    fetch: dict[str, Fetch],
    train_idx: np.ndarray | None,
    opts: dict[str, Any],
    seed: int,
) -> tuple[nn.Module, dict[str, Any], TrainStats]:
    """One model per lr from the same initial weights, the best validation macro Dice kept (first of
    equals); with ``opts["refit"]`` and the whole training split, a new model trains on train + val
    at ``refit_lr`` (None: the selected lr) for ``refit_epochs`` (None: ``epochs``), its cosine period
    the training split's epochs, as released. The model returned predicts the test split."""
    rows = data.train.rows(train_idx)
    bs = max(1, min(opts["batch_size"], len(rows)))

    def settings(lr: float, epochs: int, period: int | None = None) -> ScratchSettings:
        return ScratchSettings(
            lr, epochs, opts["min_steps"], opts["batch_size"], seed,
            weight_decay=opts["weight_decay"], cosine_steps=period, device=data.device,
        )  # fmt: skip

    def train_one(model: nn.Module, lr: float) -> TrainStats:
        return train_scratch(model, fetch["train"], data.train.targets, rows, settings(lr, opts["epochs"]))

    pick = predictor(opts, seed)
    model, selected, stats = fused.sequential_sweep(data, build, fetch, seed, opts["lrs"], train_one, pick)
    lr = selected["lr"]
    if opts.get("refit") and train_idx is None:
        tv_fetch, tv_targets, tv_rows = fused.train_plus_val(data, fetch)
        r_lr, r_epochs = opts.get("refit_lr") or lr, opts.get("refit_epochs") or opts["epochs"]
        period = max(r_epochs * math.ceil(len(rows) / bs), 1)
        (model,) = fused.init_heads(build, 1, seed)
        refit = train_scratch(model, tv_fetch, tv_targets, tv_rows, settings(r_lr, r_epochs, period))
        selected["refit"] = {
            "rows": len(tv_rows),
            "steps": refit.steps,
            "lr": r_lr,
            "epochs": r_epochs,
            "cosine_period": period,
        }
    return model, selected, stats


def predictor(opts: dict[str, Any], seed: int) -> Predictor:
    """How a run predicts: radprobe's eval mode (``predict_mode="eval"``), or as the notebooks do
    (``"train"``: BatchNorm on each batch's statistics, dropout on, batches in split order)."""
    if opts.get("predict_mode", "eval") != "train":
        return predict
    bs = int(opts["batch_size"])
    return lambda model, fetch, split: predict_in_train_mode(model, fetch, split, bs, seed)


def refit_hparams(opts: dict[str, Any]) -> dict[str, Any]:
    """What ``refit`` adds to the hparams (nothing when it is off, so default keys stay)."""
    if not opts.get("refit"):
        return {}
    lr = opts.get("refit_lr")
    out = {
        "data": "train+val (full-data runs)",
        "lr": "selected" if lr is None else lr,
        "epochs": opts.get("refit_epochs") or opts["epochs"],
    }
    if opts.get("preset") == "paper":
        out["cosine_period"] = "the training split's epochs (as released)"
    return {"refit": out}


def paper_hparams(opts: dict[str, Any], model: str) -> dict[str, Any]:
    """The hparams a ``preset=paper`` run of a from-scratch model records beside its options."""
    return {
        "preset": "paper",
        "model": model,
        "in_channels": 3,
        "input": "gray repeated to 3 channels, min-max per image and channel, ImageNet mean/std",
        "optimizer": "SGD momentum 0.9, per-step cosine to 0",
        "loss": "monai DiceLoss (softmax, background included, per image)",
        "augmentation": "vertical flip p=0.25 twice, rotation U(-90, 90) deg (nearest, fill 0), "
        "image and mask together",
        "batches": "split order, not shuffled, last batch short",
        "sweep": "one model per lr from the same start, selected on val macro Dice",
        "prediction": PREDICTION[opts.get("predict_mode", "eval")],
        **refit_hparams(opts),
    }


PREDICTION = {
    "eval": "eval mode, BatchNorm statistics of the training rows",
    "train": "train mode as released: BatchNorm on each batch of batch_size rows in split order, dropout on",
}
