"""Every protocol of radprobe, in one place: its name, family, what it consumes, which datasets it
fits, its options (with defaults and ranges) and its runner.

Families:

- ``frozen``: classification heads on cached pooled features (``knn``, ``linear``, ``logreg``,
  ``fewshot``) or on each volume's slice features (``mil``); runners take a
  :class:`~radprobe.protocols.base.ProtocolInput`.
- ``segmentation``: heads on cached patch grids (``seg-linear``, ``seg-decoder``, ``seg-updecoder``)
  and models trained from scratch on the images (``seg-unet``, ``seg-transunet``); runners take a
  :class:`~radprobe.segmentation.protocols.SegData`.
- ``trained``: the backbone trains with a head (``finetune`` and the PEFT methods); one training loop
  serves them all, parameterised by the method, so their runner is the method's name.

Every path that takes a protocol name (``eval``, study files, ``--set``, the report) resolves it here:
:func:`get`, :func:`check_options` and :func:`describe` are the only ways in.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import annotated_types as at

from radprobe.errors import OptionError, RadprobeError
from radprobe.finetune import options as train_options
from radprobe.protocols import fewshot, knn, linear, logreg, mil
from radprobe.segmentation import baselines, score_options, updecoder
from radprobe.segmentation import options as seg_options
from radprobe.segmentation import protocols as seg
from radprobe.utils import check_scalar

if TYPE_CHECKING:
    from radprobe.backbones.base import Preprocess

CLASSIFICATION = ("binary", "multiclass", "multilabel")
SEGMENTATION = ("segmentation",)


@dataclass(frozen=True)
class ProtocolSpec:
    """One protocol: what it is, what it reads and where it applies."""

    name: str
    family: str  # frozen | segmentation | trained
    consumes: str  # pooled features | slice bags | patch grids | images | live model
    summary: str
    tasks: tuple[str, ...]
    ndims: tuple[int, ...]
    runner: Callable[..., Any] | None = None  # None: the trained loop, parameterised by ``name``
    # how many augmented views of each training image a run with these options reads
    views: Callable[[dict[str, Any]], int] | None = None
    # the preprocessing of the features a run with these options reads, from the backbone's own
    preprocess: Callable[[dict[str, Any], Preprocess], Preprocess] | None = None

    def fits(self, dataset: str, task: str, ndim: int) -> str | None:
        """Why this protocol cannot run on ``dataset``, a ``task`` dataset of ``ndim`` dimensions
        (None: it can)."""
        if task not in self.tasks:
            wants = (
                "a segmentation dataset (images with masks)"
                if self.tasks == SEGMENTATION
                else f"a classification dataset ({', '.join(CLASSIFICATION)})"
            )
            return f"needs {wants}; {dataset} is a {task} dataset"
        if self.family == "trained" and task in CLASSIFICATION and ndim != 2:
            return (
                f"classifies 2D images (3D datasets: segmentation only, slice by slice); {dataset} is {ndim}D"
            )
        if ndim not in self.ndims:
            return f"needs a 3D dataset (it attends over each volume's slices); {dataset} is {ndim}D"
        return None


_BOTH = (2, 3)
_TRAINED_SUMMARY = {
    "finetune": "end-to-end fine-tuning with layer-wise lr decay",
    "lora": "LoRA adapters (peft) on attention and MLP projections",
    "dora": "DoRA: weight-decomposed LoRA (peft)",
    "bitfit": "train the biases only",
    "vpt": "visual prompt tuning (learned prompt tokens)",
    "partial": "train the last k blocks",
}

_SPECS = [
    ProtocolSpec(
        "knn",
        "frozen",
        "pooled features",
        "k-nearest neighbours, k and T chosen on val",
        CLASSIFICATION,
        _BOTH,
        knn.run,
        preprocess=knn.eval_preprocess,
    ),
    ProtocolSpec(
        "linear",
        "frozen",
        "pooled features",
        "linear heads over lr x blocks x avgpool, chosen on val",
        CLASSIFICATION,
        _BOTH,
        linear.run,
        linear.train_views,
    ),
    ProtocolSpec(
        "logreg",
        "frozen",
        "pooled features",
        "L2 logistic regression, C chosen on val",
        CLASSIFICATION,
        _BOTH,
        logreg.run,
    ),
    ProtocolSpec(
        "fewshot",
        "frozen",
        "pooled features",
        "knn / linear / logreg on n-shot draws",
        CLASSIFICATION,
        _BOTH,
        fewshot.run,
        fewshot.train_views,
    ),
    ProtocolSpec(
        "mil",
        "frozen",
        "slice bags",
        "attention MIL over each volume's slice features",
        CLASSIFICATION,
        (3,),
        mil.run,
    ),
    ProtocolSpec(
        "seg-linear",
        "segmentation",
        "patch grids",
        "a linear head on the last block's patch grid",
        SEGMENTATION,
        _BOTH,
        seg.seg_linear,
    ),
    ProtocolSpec(
        "seg-decoder",
        "segmentation",
        "patch grids",
        "a light multi-level decoder on patch grids",
        SEGMENTATION,
        _BOTH,
        seg.seg_decoder,
    ),
    ProtocolSpec(
        "seg-updecoder",
        "segmentation",
        "patch grids",
        "the paper's UNet decoder on the last five blocks' patch grids (ViTs)",
        SEGMENTATION,
        _BOTH,
        updecoder.seg_updecoder,
    ),
    ProtocolSpec(
        "seg-unet",
        "segmentation",
        "images",
        "a MONAI U-Net trained from scratch (reference)",
        SEGMENTATION,
        _BOTH,
        seg.seg_unet,
    ),
    ProtocolSpec(
        "seg-transunet",
        "segmentation",
        "images",
        "TransUNet (CNN + ViT encoder, cascaded upsampler) trained from scratch",
        SEGMENTATION,
        _BOTH,
        baselines.seg_transunet,
    ),
    *(
        ProtocolSpec(m, "trained", "live model", _TRAINED_SUMMARY[m], (*CLASSIFICATION, *SEGMENTATION), _BOTH)
        for m in train_options.OPTION_TYPES
    ),
]
PROTOCOLS: dict[str, ProtocolSpec] = {s.name: s for s in _SPECS}
FAMILIES = ("frozen", "segmentation", "trained")


def names(family: str | None = None) -> list[str]:
    """Protocol names, in registry order (``family``: only that family's)."""
    return [n for n, s in PROTOCOLS.items() if family is None or s.family == family]


def get(name: str) -> ProtocolSpec:
    """The spec of protocol ``name``; unknown names raise one line listing every protocol."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise RadprobeError(f"unknown protocol {name!r}; expected one of: {', '.join(PROTOCOLS)}") from None


def get_protocol(name: str) -> Callable[..., Any]:
    """The runner of a frozen protocol (knn, linear, logreg, fewshot, mil)."""
    spec = get(name)
    if spec.family != "frozen" or spec.runner is None:
        raise RadprobeError(f"protocol {name!r} is a {spec.family} protocol, not a frozen-feature one")
    return spec.runner


def views_needed(name: str, options: dict[str, Any]) -> int:
    """Augmented views of each training image that protocol ``name`` reads with ``options`` (0: none)."""
    spec = get(name)
    return spec.views(options) if spec.views is not None else 0


def eval_preprocess(name: str, options: dict[str, Any], preprocess: Preprocess) -> Preprocess:
    """The preprocessing of the features protocol ``name`` reads with ``options`` (e.g. the paper's
    kNN centre crop); the backbone's own ``preprocess`` for most."""
    spec = get(name)
    return spec.preprocess(options, preprocess) if spec.preprocess is not None else preprocess


def check_fit(name: str, dataset: str, task: str, ndim: int) -> None:
    """One line when protocol ``name`` cannot run on this dataset (before anything is extracted)."""
    why = get(name).fits(dataset, task, ndim)
    if why:
        raise OptionError("--protocol", f"{name}: {why}", setting="protocols")


def check_options(name: str, options: dict[str, Any], *, n_train: int | None = None) -> dict[str, Any]:
    """Protocol ``name``'s ``options`` checked before anything runs: unknown keys, wrong types and
    values out of range are one line naming the option and what it takes.

    Frozen protocols: a single value where a list is taken becomes a one-item list, and an integral
    float (``1e2``) an int where an int is taken; everything else passes on as given (so result keys
    do not change). Segmentation options come back resolved with their defaults (``n_train`` also
    checks few-shot sizes against the training split); trained options are checked and passed on.
    """
    spec = get(name)
    if spec.family == "trained":
        train_options.parse_options(name, options, batch_size=1)
        return dict(options)
    assert spec.runner is not None
    params = [p for p in inspect.signature(spec.runner).parameters if p != "data"]
    if spec.family == "segmentation":
        params += list(score_options.SCORING_OPTIONS)
    for key in options:
        if key not in params:
            if key == "preset" and spec.family == "segmentation":
                raise seg_options.no_paper_preset(name)
            raise OptionError("--set", f"{name}.{key}: unknown option; {name} takes {', '.join(params)}")
    if spec.family == "segmentation":
        own, scoring = score_options.split_scoring(options)
        resolved = seg_options.resolve_options(name, spec.runner, own, n_train)
        return {**resolved, **score_options.resolve_scoring(name, scoring, resolved.get("preset"))}
    hints = typing.get_type_hints(spec.runner, include_extras=True)
    return {k: _coerce(v, hints[k], f"{name}.{k}={v!r}") if k in hints else v for k, v in options.items()}


def describe(name: str) -> list[dict[str, Any]]:
    """Every option of ``name``: its name, default, type and help (``radprobe protocols``)."""
    spec = get(name)
    if spec.family == "trained":
        return [{**o, "type": o.get("type", "")} for o in train_options.describe_options(name)]
    assert spec.runner is not None
    hints = typing.get_type_hints(spec.runner, include_extras=True)
    out = []
    for p in inspect.signature(spec.runner).parameters.values():
        if p.name == "data":
            continue
        default = list(p.default) if isinstance(p.default, tuple) else p.default
        out.append({"name": p.name, "default": default, "type": _type_text(hints.get(p.name)), "help": ""})
    if spec.family == "segmentation":
        out += [
            {
                "name": k,
                "default": v,
                "type": score_options.SCORING_TYPES[k],
                "help": score_options.SCORING_HELP[k],
            }
            for k, v in score_options.SCORING_OPTIONS.items()
        ]
    return out


def _type_text(hint: Any) -> str:
    text = str(hint).replace("typing.", "").replace("collections.abc.", "")
    return text.replace("Annotated[", "").replace("annotated_types.", "")


def _bounds(value: Any, metadata: tuple[Any, ...], where: str) -> None:
    for m in metadata:
        for attr, ok, word in (
            ("ge", lambda a, b: a >= b, ">="),
            ("gt", lambda a, b: a > b, ">"),
            ("le", lambda a, b: a <= b, "<="),
            ("lt", lambda a, b: a < b, "<"),
        ):
            bound = getattr(m, attr, None)
            if isinstance(m, at.BaseMetadata) and bound is not None and not ok(value, bound):
                raise OptionError("--set", f"{where}: expected a value {word} {bound}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        value = _coerce(value, args[0], where)
        if value is not None and not isinstance(value, bool) and isinstance(value, int | float):
            _bounds(value, args[1:], where)
        return value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    if origin is typing.Literal:
        if value not in args:
            raise OptionError("--set", f"{where}: expected one of {', '.join(map(str, args))}")
        return value
    if origin in (abc.Sequence, list, tuple):
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values:
            raise OptionError("--set", f"{where}: expected at least one value")
        return [_coerce(v, args[0] if args else Any, where) for v in values]
    return check_scalar(value, hint, where) if hint in (bool, int, float, str) else value
