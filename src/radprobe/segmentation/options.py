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
}
PAPER_PRESETS: dict[str, dict[str, Any]] = {"seg-linear": _PAPER, "seg-updecoder": _PAPER}


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
        elif k in ("save_predictions", "refit"):
            if not isinstance(v, bool):
                raise _fail(proto, k, v, "true or false")
            out[k] = v
        else:
            out[k] = v
    if out.get("epochs", 1) == 0 and out.get("min_steps", 1) == 0:
        raise OptionError("--set", f"{proto}.epochs / min_steps: both are 0, so nothing would be trained")
    return out
