"""The segmentation protocols: seg-linear, seg-decoder (frozen features) and seg-unet (from scratch).

Each runner takes a :class:`SegData` plus keyword options (``--set seg-linear.lrs=[1e-3,1e-2]``) and
returns a :class:`SegResult`. Common options:

    lrs              learning rates of the sweep; the one with the best validation macro Dice wins
                     (the test split is only predicted with the selected model)
    epochs           passes over the training rows (images or slices) per learning rate
    min_steps        at least this many optimizer steps (few-shot training sets are tiny)
    batch_size       rows per step
    weight_decay     AdamW weight decay
    shots            None: the whole training split. An int or list from {1, 2, 4, 8, 16, ...}:
                     few-shot, training on that many training cases (images or volumes, from
                     distinct patients while possible); validation and test stay whole
    repeats          few-shot draws per shots value
    save_predictions write the test predictions (PNG / NIfTI) under ``<out>/predictions/``
    overlays         number of test cases drawn as overlay PNGs under ``<out>/overlays/``

Few-shot runs write one row set per shots value (``hparams.shots``): the mean over draws with a
t-interval over draws (a patient bootstrap of the single draw when ``repeats=1``). Predictions and
overlays are written for full-data runs only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from radprobe.backbones.base import BackboneInfo
from radprobe.data import Dataset
from radprobe.metrics.segmentation import CaseScores, case_scores
from radprobe.segmentation import fused, output, scratch
from radprobe.segmentation.data import SegSplit, draw_cases, to_original
from radprobe.segmentation.heads import (
    LightDecoder,
    LinearHead,
    UNetModel,
    decoder_plan,
    linear_layer,
)
from radprobe.segmentation.milesial_unet import MilesialUNet
from radprobe.segmentation.online import Pixels
from radprobe.segmentation.train import (
    Fetch,
    Predictor,
    TrainSettings,
    TrainStats,
    grid_fetch,
    image_fetch,
    predict,
    train,
)
from radprobe.segmentation.transunet import TRANSUNET_NAME

UNET_NAME = "monai:unet"  # the "backbone" of seg-unet rows and outputs: nothing pretrained is used
# protocols trained from scratch: the "backbone" name of their rows and outputs, and their overlay label
SCRATCH_MODELS = {"seg-unet": (UNET_NAME, "monai U-Net"), "seg-transunet": (TRANSUNET_NAME, "TransUNet")}


@dataclass
class SegData:
    """Everything a segmentation protocol reads: the three splits and how they were made."""

    dataset: Dataset
    train: SegSplit
    val: SegSplit
    test: SegSplit
    size: int  # square input resolution = training target size
    seed: int = 0
    device: str = "cpu"
    info: BackboneInfo | None = None  # the frozen backbone (None when only seg-unet runs)
    out: Path | None = None  # run directory for predictions / overlays
    tag: str = ""  # file-name prefix of outputs (backbone slug)
    nsd_tolerance_mm: float | None = None  # None: the default NSD tolerance of the unit (scoring only)
    backbone: Any = None  # the frozen backbone itself, for heads trained on augmented images
    pixels: dict[str, Pixels] = field(default_factory=dict)  # split -> resized images (augment="images")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    @property
    def is_vit(self) -> bool:
        return self.info is not None and self.info.patch_size is not None


@dataclass
class Fit:
    """One trained model's test scores (a full-data run, or one few-shot draw)."""

    shots: int | None
    draw: int
    scores: list[CaseScores]
    selected: dict[str, Any]
    stats: TrainStats
    train_cases: int


@dataclass
class SegResult:
    protocol: str
    hparams: dict[str, Any]
    fits: list[Fit]
    trainable_params: int
    warnings: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- common loop


def _seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(2**31 - 1))


def _sweep(
    data: SegData,
    build: Callable[[], nn.Module],
    fetch: dict[str, Fetch],
    train_idx: np.ndarray | None,
    opts: dict[str, Any],
    seed: int,
) -> tuple[nn.Module, dict[str, Any], TrainStats]:
    """Train one model per learning rate; keep the one with the best validation macro Dice (with
    ``opts["refit"]`` and the whole training split: retrained at that lr on train + val)."""
    rows = data.train.rows(train_idx)

    def settings(lr: float) -> TrainSettings:
        return TrainSettings(
            lr=lr,
            epochs=opts["epochs"],
            min_steps=opts["min_steps"],
            batch_size=opts["batch_size"],
            weight_decay=opts["weight_decay"],
            seed=seed,
            device=data.device,
        )

    def train_one(model: nn.Module, lr: float) -> TrainStats:
        return train(model, fetch["train"], data.train.targets, rows, settings(lr))

    model, selected, stats = fused.sequential_sweep(data, build, fetch, seed, opts["lrs"], train_one)
    lr = selected["lr"]
    if opts.get("refit") and train_idx is None:
        tv_fetch, tv_targets, tv_rows = fused.train_plus_val(data, fetch)
        (model,) = fused.init_heads(build, 1, seed)
        s = replace(settings(opts.get("refit_lr") or lr), epochs=opts.get("refit_epochs") or opts["epochs"])
        refit = train(model, tv_fetch, tv_targets, tv_rows, s)
        selected["refit"] = {"rows": len(tv_rows), "steps": refit.steps}
    return model, selected, stats


def _run(
    proto: str,
    data: SegData,
    build: Callable[[], nn.Module],
    fetch: dict[str, Fetch],
    opts: dict[str, Any],
    hparams: dict[str, Any],
    sweep: Callable[..., tuple[nn.Module, dict[str, Any], TrainStats]] | None = None,
    predictor: Callable[[int], Predictor] | None = None,
) -> SegResult:
    """Train (a sweep per full-data run or few-shot draw: ``_sweep`` unless ``sweep`` is given) and
    score the test split."""
    C = len(data.classes)
    test_masks = data.test.masks
    assert test_masks is not None
    fits: list[Fit] = []
    outputs: list[str] = []
    trainable = 0
    plan: list[tuple[int | None, int, np.ndarray | None]] = []
    if opts["shots"] is None:
        plan.append((None, 0, None))
    else:
        patients = data.train.patients()
        for n in opts["shots"]:
            for r in range(opts["repeats"]):
                plan.append((n, r, draw_cases(patients, n, np.random.default_rng([data.seed, n, r]))))
    for shots, r, idx in plan:
        seed = _seed(data.seed, shots or 0, r)
        model, selected, stats = (sweep or _sweep)(data, build, fetch, idx, opts, seed)
        trainable = selected["trainable_params"]
        preds = (predictor(seed) if predictor is not None else predict)(model, fetch["test"], data.test)
        scores = [
            case_scores(p, m, C, c.spacing, nsd_tolerance=data.nsd_tolerance_mm)
            for p, m, c in zip(preds, test_masks, data.test.cases, strict=True)
        ]
        if idx is not None:
            selected["train_cases"] = [data.train.cases[i].sample_id for i in idx]
        if shots is None and data.out is not None:
            outputs += write_outputs(proto, data, preds, opts)
        n_train = len(data.train) if idx is None else len(idx)
        fits.append(Fit(shots, r, scores, selected, stats, n_train))
    return SegResult(proto, hparams, fits, trainable, outputs=outputs)


def write_outputs(proto: str, data: SegData, preds: list[np.ndarray], opts: dict[str, Any]) -> list[str]:
    """Test predictions (``save_predictions``) and the first ``overlays`` overlays, at each case's own
    size; returns the paths."""
    assert data.out is not None and data.test.masks is not None
    test, preds = to_original(data.test, preds)
    assert test.masks is not None
    scratch = SCRATCH_MODELS.get(proto)
    prefix = f"{output.slug(scratch[0]) if scratch else data.tag}__{proto}"
    written = []
    if opts["save_predictions"]:
        folder = data.out / "predictions" / prefix
        orient = getattr(getattr(data.dataset, "read", None), "orient", "canonical")
        for case, pred in zip(test.cases, preds, strict=True):
            written.append(str(output.save_prediction(folder, case, pred, orient)))
    for case, gt, pred in list(zip(test.cases, test.masks, preds, strict=True))[: opts["overlays"]]:
        path = data.out / "overlays" / f"{prefix}__{output.slug(case.sample_id)}.png"
        who = scratch[1] if scratch else data.info.name if data.info is not None else ""
        output.overlay_case(path, data.dataset, case, gt, pred, f"{who} · {proto} · {case.sample_id}")
        written.append(str(path))
    return written


def _grid_fetches(data: SegData, layers: list[int]) -> dict[str, Fetch]:
    out = {}
    for s in (data.train, data.val, data.test):
        missing = [la for la in layers if la not in s.features]
        if missing:
            raise RuntimeError(f"split {s.name} has no cached grids for layers {missing}")
        out[s.name] = grid_fetch(s.features, layers, data.device)
    return out


def _common(opts: dict[str, Any]) -> dict[str, Any]:
    keep = ("lrs", "epochs", "min_steps", "batch_size", "weight_decay", "repeats")
    return {k: opts[k] for k in keep if k in opts and (k != "repeats" or opts.get("shots"))}


# ---------------------------------------------------------------------------- the runners


def seg_linear(
    data: SegData,
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2),
    epochs: int = 30,
    min_steps: int = 200,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    preset: str | None = None,
    refit: bool = False,
    augment: str = "none",
    sampler: str = "epoch",
    shots: int | Sequence[int] | None = None,
    repeats: int = 3,
    save_predictions: bool = False,
    overlays: int = 3,
) -> SegResult:
    """BatchNorm + 1x1 conv on the last block's patch grid, bilinear upsampling (DINOv2 linear).

    ``preset="paper"`` (Baharoon et al.; docs/paper-fidelity.md): the 1x1 conv without BatchNorm,
    SGD, Dice loss, the released flips and rotations of each training image before the backbone
    (``augment="images"``; ``"grids"`` turns the cached grids instead, ``"none"``), DINOv2's stream
    sampler, every lr trained together, refit on train + val. ``refit``: retrain the selected lr on
    train + val before the test split is predicted."""
    opts = dict(locals())
    opts.pop("data")
    if data.info is None:
        raise RuntimeError("seg-linear needs a frozen backbone")
    layer = linear_layer(data.info.num_blocks)
    dim = int(data.train.features[layer].shape[1])
    C = len(data.classes)
    paper = preset == "paper"
    hparams = {**_common(opts), "layers": [layer], "head": "batchnorm + 1x1 conv"}
    hparams.update(fused.paper_hparams(opts, "1x1 conv (no batchnorm)"))
    return _run(
        "seg-linear",
        data,
        lambda: LinearHead(layer, dim, C, bn=not paper),
        _grid_fetches(data, [layer]),
        opts,
        hparams,
        sweep=fused.paper_sweep if paper else None,
    )


def seg_decoder(
    data: SegData,
    lrs: Sequence[float] = (3e-4, 1e-3, 3e-3),
    epochs: int = 30,
    min_steps: int = 200,
    batch_size: int = 16,
    weight_decay: float = 1e-4,
    channels: int = 128,
    shots: int | Sequence[int] | None = None,
    repeats: int = 3,
    save_predictions: bool = False,
    overlays: int = 3,
) -> SegResult:
    """DPT-style light decoder fusing four frozen levels (see :class:`LightDecoder`)."""
    opts = dict(locals())
    opts.pop("data")
    if data.info is None:
        raise RuntimeError("seg-decoder needs a frozen backbone")
    layers, scales = decoder_plan(data.info.num_blocks, data.is_vit)
    dims = [int(data.train.features[la].shape[1]) for la in layers]
    C = len(data.classes)
    hparams = {
        **_common(opts),
        "channels": channels,
        "layers": layers,
        "scales": scales,
        "head": "DPT-style light decoder",
    }
    return _run(
        "seg-decoder",
        data,
        lambda: LightDecoder(layers, dims, scales, C, channels),
        _grid_fetches(data, sorted(set(layers))),
        opts,
        hparams,
    )


def seg_unet(
    data: SegData,
    # two learning rates and 50 epochs keep the from-scratch reference affordable on a CPU;
    # raise them (--set seg-unet.epochs=100) for a stronger reference on a GPU
    lrs: Sequence[float] = (1e-3, 3e-3),
    epochs: int = 50,
    min_steps: int = 300,
    batch_size: int = 16,
    weight_decay: float = 1e-5,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    res_units: int = 2,
    preset: str | None = None,
    refit: bool = False,
    refit_lr: float | None = None,
    refit_epochs: int | None = None,
    predict_mode: str = "eval",
    shots: int | Sequence[int] | None = None,
    repeats: int = 3,
    save_predictions: bool = False,
    overlays: int = 3,
) -> SegResult:
    """MONAI 2D UNet trained from scratch on the images (no augmentation), the reference row.

    ``preset="paper"``: milesial's U-Net (``channels``: its widths) trained as Baharoon et al.'s
    ``unet.ipynb`` (:mod:`.scratch`). ``refit``: retrain on train + val before the test split is
    predicted, at ``refit_lr`` (None: the selected lr) for ``refit_epochs`` (None: ``epochs``)."""
    opts = dict(locals())
    opts.pop("data")
    splits = (data.train, data.val, data.test)
    if any(s.images is None for s in splits):
        raise RuntimeError("seg-unet needs the images loaded")
    fetch = {s.name: image_fetch(s.images, data.device) for s in splits}  # type: ignore[arg-type]
    in_ch = int(data.train.images.shape[1])  # type: ignore[union-attr]
    mean, std = _image_stats(data.train.images)  # type: ignore[arg-type]
    C = len(data.classes)
    if preset == "paper":
        hparams = {**_common(opts), "channels": list(channels), **scratch.paper_hparams(opts, scratch.UNET)}
        build = lambda: scratch.PaperInput(MilesialUNet(3, C, channels))  # noqa: E731
        pick = lambda seed: scratch.predictor(opts, seed)  # noqa: E731
        return _run("seg-unet", data, build, fetch, opts, hparams, sweep=scratch.paper_sweep, predictor=pick)
    hparams = {
        **_common(opts),
        "channels": list(channels),
        "res_units": res_units,
        "in_channels": in_ch,
        "model": "monai.networks.nets.UNet (2D)",
        "augmentation": "none",
        **scratch.refit_hparams(opts),
    }
    return _run(
        "seg-unet", data, lambda: UNetModel(in_ch, C, channels, res_units, mean, std), fetch, opts, hparams
    )


def _image_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of the training images (float64 accumulation over float16 rows)."""
    n, total, sq = 0, 0.0, 0.0
    for i in range(0, len(images), 256):
        x = np.asarray(images[i : i + 256], dtype=np.float64)
        n += x.size
        total += float(x.sum())
        sq += float((x * x).sum())
    mean = total / max(n, 1)
    std = float(np.sqrt(max(sq / max(n, 1) - mean * mean, 1e-12)))
    return mean, max(std, 1e-3)
