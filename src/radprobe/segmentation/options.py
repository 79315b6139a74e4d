"""Options of the segmentation protocols, checked before anything runs: each value's type and range,
and few-shot sizes against the training split. One-line errors name the option and what it takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from radprobe.errors import OptionError, RadprobeError
from radprobe.segmentation import transunet

# Baharoon et al.'s released segmentation run (MohammedSB/DINOv2ForRadiology,
# dinov2/eval/segmentation/segmentation.py): lrs and defaults l.179-192, SGD without weight decay
# l.433, refit on train + val l.477-546. ``preset=paper`` fills these in; options given win.
PAPER_LRS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1)
_PAPER = {
    "lrs": list(PAPER_LRS),
    "epochs": 10,
    "min_steps": 0,
    "batch_size": 128,
    "weight_decay": 0.0,
    "refit": True,
    # flips and rotations of each image before the backbone (mc.py:104-111, transforms.py:117-151),
    # and the InfiniteSampler (l.454-457): full batches from one stream of permutations
    "augment": "images",
    "sampler": "stream",
}
AUGMENT = ("images", "grids", "none")
SAMPLERS = ("stream", "epoch")
# Their from-scratch baselines (unet.ipynb, transunet.ipynb; segmentation/scratch.py): 7 lrs x 50
# epochs, batch 8 (cell 1:6-8), SGD without weight decay (2:7), then a new model trained 100 epochs at
# lr 1e-3 on train + val (3:1-2). The U-Net is milesial's, 64 ... 1024 wide (dinov2/models/unet.py).
_SCRATCH = {
    "lrs": list(PAPER_LRS),
    "epochs": 50,
    "min_steps": 0,
    "batch_size": 8,
    "weight_decay": 0.0,
    "refit": True,
    "refit_lr": 1e-3,
    "refit_epochs": 100,
    # val and test are predicted without model.eval() (unet.ipynb cells 2:37-49, 4:48-60)
    "predict_mode": "train",
}
_HEADS = {"seg-linear": _PAPER, "seg-updecoder": _PAPER}  # frozen-feature heads
# transunet.ipynb cell 2: CONFIGS_ViT_seg["R50-ViT-L_16"], built as released (transunet.PAPER_SIZE)
_FROM_SCRATCH = {
    "seg-unet": {**_SCRATCH, "channels": [64, 128, 256, 512, 1024]},
    "seg-transunet": {**_SCRATCH, "layout": "paper", **transunet.PAPER_SIZE},
}
PAPER_PRESETS: dict[str, dict[str, Any]] = {**_HEADS, **_FROM_SCRATCH}


def no_paper_preset(proto: str) -> OptionError:
    """The one line for ``preset=paper`` on a segmentation protocol the paper never ran."""
    return OptionError(
        "--set",
        f"{proto}.preset='paper': the paper ran no {proto}; paper presets: {', '.join(PAPER_PRESETS)}",
    )


def _fail(proto: str, key: str, value: Any, expected: str) -> RadprobeError:
    return OptionError("--set", f"{proto}.{key}={value!r}: expected {expected}")


def _number(proto: str, key: str, v: Any, lo: float, integer: bool, what: str) -> Any:
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)  # YAML reads 1e-3 (no dot) as a string
        if integer and x != int(x):
            raise ValueError
    except (TypeError, ValueError):
        raise _fail(proto, key, v, what) from None
    if not np.isfinite(x) or x < lo:
        raise _fail(proto, key, v, what)
    return int(x) if integer else x


def resolve_options(
    proto: str, runner: Callable[..., Any], given: dict[str, Any], n_train: int | None = None
) -> dict[str, Any]:
    """Defaults of ``runner`` overridden by ``given``, each value checked; one-line errors name the
    option. ``n_train`` (the training split's cases, when known) bounds the few-shot sizes. Option
    names are checked before, by ``radprobe.protocols.registry.check_options``, the only caller."""
    sig = inspect.signature(runner)
    opts = {k: p.default for k, p in sig.parameters.items() if k != "data"}
    preset = given.get("preset")
    if preset is not None:
        if preset != "paper":
            raise _fail(proto, "preset", preset, "'paper' or none")
        if proto not in PAPER_PRESETS:
            raise no_paper_preset(proto)
        opts.update(PAPER_PRESETS[proto])
    opts.update(given)
    out: dict[str, Any] = {}
    for k, v in opts.items():
        if k == "lrs":
            vals = v if isinstance(v, list | tuple) else [v]
            if not vals:
                raise _fail(proto, k, v, "one or more positive learning rates")
            out[k] = [_number(proto, k, x, 1e-12, False, "positive learning rates") for x in vals]
        elif k in ("epochs", "min_steps", "overlays"):
            out[k] = _number(proto, k, v, 0, True, "a non-negative integer")
        elif k in ("batch_size", "repeats"):
            out[k] = _number(proto, k, v, 1, True, "a positive integer")
        elif k == "res_units":
            out[k] = _number(proto, k, v, 0, True, "a non-negative integer")
        elif k == "refit_lr":
            out[k] = None if v is None else _number(proto, k, v, 1e-12, False, "a positive learning rate")
        elif k == "refit_epochs":
            out[k] = None if v is None else _number(proto, k, v, 1, True, "a positive integer")
        elif k == "weight_decay":
            out[k] = _number(proto, k, v, 0, False, "a non-negative number")
        elif k == "channels" and proto == "seg-unet":
            vals = v if isinstance(v, list | tuple) else None
            if not vals or len(vals) < 2:
                raise _fail(proto, k, v, "a list of at least 2 channel counts, e.g. [16,32,64,128,256]")
            out[k] = [_number(proto, k, x, 1, True, "positive channel counts") for x in vals]
        elif k == "channels":
            out[k] = _number(proto, k, v, 2, True, "an integer >= 2")
        elif k == "shots":
            if v is None:
                out[k] = None
                continue
            vals = v if isinstance(v, list | tuple) else [v]
            shots = sorted(
                {_number(proto, k, x, 1, True, "positive integers, e.g. [1,2,4,8,16]") for x in vals}
            )
            if not shots:
                raise _fail(proto, k, v, "positive integers, e.g. [1,2,4,8,16]")
            if n_train is not None and shots[-1] > n_train:
                raise OptionError(
                    "--set",
                    f"{proto}.shots: {shots[-1]}-shot needs {shots[-1]} training cases; "
                    f"the training split has {n_train}",
                )
            out[k] = shots
        elif k in transunet.OPTIONS:
            out[k] = transunet.check_option(proto, k, v, opts)
        elif k == "preset":
            out[k] = v
        elif k == "augment":
            if v not in AUGMENT:
                raise _fail(proto, k, v, " or ".join(repr(a) for a in AUGMENT))
            out[k] = v
        elif k == "predict_mode":
            if v not in ("eval", "train"):
                raise _fail(proto, k, v, "'eval' or 'train'")
            out[k] = v
        elif k == "sampler":
            if v not in SAMPLERS:
                raise _fail(proto, k, v, " or ".join(repr(a) for a in SAMPLERS))
            out[k] = v
        elif k in ("save_predictions", "refit"):
            if not isinstance(v, bool):
                raise _fail(proto, k, v, "true or false")
            out[k] = v
        else:
            out[k] = v
    _check_combinations(proto, given, out)
    if out.get("epochs", 1) == 0 and out.get("min_steps", 1) == 0:
        raise OptionError("--set", f"{proto}.epochs / min_steps: both are 0, so nothing would be trained")
    return out


def _check_combinations(proto: str, given: dict[str, Any], out: dict[str, Any]) -> None:
    """Options that would be silently ignored: the refit's lr / epochs without a refit, and MONAI's
    residual units on the paper preset's milesial U-Net."""
    for k in ("refit_lr", "refit_epochs"):
        if given.get(k) is not None and not out.get("refit"):
            raise OptionError("--set", f"{proto}.{k}: takes effect with refit=true (or preset=paper)")
    for k, plain in (("augment", "none"), ("sampler", "epoch"), ("predict_mode", "eval")):
        if out.get(k, plain) != plain and out.get("preset") != "paper":
            raise OptionError("--set", f"{proto}.{k}={out[k]!r}: takes effect with preset=paper")
    if "res_units" in given and out.get("preset") == "paper":
        raise OptionError(
            "--set", f"{proto}.res_units: a MONAI U-Net option; preset=paper trains milesial's U-Net"
        )
