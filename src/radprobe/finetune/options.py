"""Options of the trained protocols, parsed and checked before anything runs.

Every protocol shares :class:`TrainOptions` (schedule, batch, augmentation, head, early stopping)
and adds its own fields. ``--set lora.rank=16`` arrives here as ``{"rank": 16}``; an unknown key or a
value of the wrong type or range raises one :class:`RadprobeError` line naming it and what is allowed.

``preset=paper`` (finetune and lora) fills the options the user did not set with the trained runs of
Baharoon et al. (arXiv 2312.02366) as their released code ran them; docs/paper-fidelity-trained.md
lists each choice with its source line. Options added since the first trained release
(``ADDED_OPTIONS``) stay out of a run's hparams, and so of its key, while at their defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from radprobe.errors import OptionError
from radprobe.utils import check_scalar

POOLS = ("cls", "mean", "cls+mean")
CLASS_WEIGHTS = ("none", "balanced")
SEG_HEADS = ("linear", "decoder")
OPTIMIZERS = ("adamw", "sgd")
AMP_DTYPES = ("bf16", "fp16")
SAMPLERS = ("epoch", "stream")
SELECTIONS = ("best", "last")
HEAD_GRIDS = ("none", "paper")
LORA_BIASES = ("none", "lora_only", "all")
CROPS = ("affine", "torchvision")
AUGMENT_ON = ("device", "cpu")

# Baharoon et al. (arXiv 2312.02366), MohammedSB/DINOv2ForRadiology at cb91e01: what its trained
# classification runs share (dinov2/eval/classification/linear.py; line numbers in the comments).
PAPER_TRAIN: dict[str, Any] = {
    "optimizer": "sgd",  # l.502: SGD, momentum 0.9, weight decay 0
    "momentum": 0.9,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,  # l.503: CosineAnnealingLR(max_iter, eta_min=0), stepped every iteration
    "grad_clip": 0.0,  # l.335-341: no clipping
    "backbone_lr": 1e-5,  # l.188, 473, 489
    "epochs": 10,  # l.180 (val_epochs unset: the search trains as long as the refit)
    "batch_size": 128,  # l.182; the whole set when smaller (l.437)
    "sampler": "stream",  # l.452-453, 508: InfiniteSampler, ceil(n / batch) full batches an epoch
    "head_grid": "paper",  # l.187-190, 457-464: 16 heads on the shared backbone, losses summed (l.333)
    "select": "last",  # l.374-383: heads scored on val after the last iteration; no best epoch
    "patience": 0,
    "refit": True,  # l.535-601: the chosen head retrained on train + val
    "amp_dtype": "fp16",  # l.445 with eval/setup.py:63-66 (the configs' fp16), no GradScaler
    "augment": True,  # l.425, data/transforms.py:84-87: RandomResizedCrop(0.75-1) + flip
    "crop": "torchvision",  # ... of the decoded image, bicubic
    "crop_scale": 0.75,
    "crop_ratio": 4 / 3,  # torchvision's default ratio (3/4, 4/3)
    "hflip": True,
    "rotate": 0.0,
    "intensity": 0.0,
    # l.186, 359-370: a validation pass every 5 epochs, logged only; its evaluate() calls
    # feature_model.eval() (eval/utils.py:361) and nothing sets train mode again (only
    # ModelWithIntermediateLayers.__init__ does, eval/utils.py:313-320)
    "eval_mode_after": 5,
}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # l.471-474: the whole backbone in one group at backbone_lr, no layer-wise decay
    "finetune": {"paper": {**PAPER_TRAIN, "layer_decay": 1.0}},
    # l.477-484: LoraConfig(r=48, lora_alpha=16, target_modules=[qkv, fc1, fc2], lora_dropout=0.1,
    # bias="lora_only")
    "lora": {
        "paper": {
            **PAPER_TRAIN,
            "rank": 48,
            "alpha": 16.0,
            "dropout": 0.1,
            "targets": ["qkv", "fc1", "fc2"],
            "lora_bias": "lora_only",
        }
    },
}
# Options added after the first trained release, with the default that keeps earlier behaviour.
# At that default they are left out of hparams, so existing runs keep their keys and rows.
ADDED_OPTIONS: dict[str, Any] = {
    "optimizer": "adamw",
    "momentum": 0.9,
    "amp_dtype": "bf16",
    "sampler": "epoch",
    "select": "best",
    "head_grid": "none",
    "refit": False,
    "crop_ratio": None,
    "crop": "affine",
    "lora_bias": "none",
    "recompute": True,  # dora: the same numbers either way
    "preset": None,  # lora and dora have always recorded it
    "eval_mode_after": None,
    "augment_on": "device",
}


def _opt(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """A dataclass field carrying its help text and the checks ``parse_options`` applies."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainOptions:
    """Options every trained protocol takes."""

    epochs: int = _opt(10, "maximum training epochs", low=1)
    batch_size: int | None = _opt(None, "images per step (default: --batch-size)", low=1)
    accum_steps: int = _opt(1, "micro-batches accumulated per optimizer step", low=1)
    lr: float = _opt(1e-3, "peak learning rate of the head", low=0, low_open=True)
    backbone_lr: float | None = _opt(
        None, "peak learning rate of the trainable backbone-side parameters (method default)", low=0
    )
    weight_decay: float = _opt(
        0.05, "weight decay, AdamW's decoupled or SGD's L2 (not applied to biases, norms, tokens)", low=0
    )
    warmup_epochs: float = _opt(1.0, "linear warmup length in epochs, then cosine to zero", low=0)
    patience: int = _opt(5, "stop after this many epochs without a better validation score (0: never)", low=0)
    grad_clip: float = _opt(1.0, "clip the global gradient norm (0: off)", low=0)
    grad_checkpointing: bool = _opt(False, "recompute block activations in backward to save memory")
    amp: bool = _opt(True, "bf16 autocast on CUDA (ignored on CPU)")
    class_weights: str = _opt("none", "class-imbalance weighting of the loss", choices=CLASS_WEIGHTS)
    pool: str = _opt("cls", "head input", choices=POOLS)
    seg_head: str = _opt(
        "linear",
        "segmentation head: seg-linear's BatchNorm + 1x1 conv on the last block's patch grid, or "
        "seg-decoder's light decoder fusing four levels",
        choices=SEG_HEADS,
    )
    decoder_channels: int = _opt(128, "width of the seg_head=decoder decoder", low=2)
    augment: bool = _opt(True, "radiology-aware augmentation of training images")
    hflip: bool = _opt(False, "random horizontal flips (off: chest X-ray laterality matters)")
    crop_scale: float = _opt(0.85, "smallest area fraction of the random resized crop", low=0.05, high=1)
    rotate: float = _opt(10.0, "largest random rotation in degrees", low=0, high=180)
    intensity: float = _opt(0.1, "brightness/contrast jitter amplitude", low=0, high=1)
    keep_checkpoints: bool = _opt(True, "keep checkpoints/<key>/ after the run (reruns are then instant)")
    save_predictions: bool = _opt(False, "segmentation: write the test predictions under <out>/predictions/")
    overlays: int = _opt(3, "segmentation: test cases drawn as overlay PNGs under <out>/overlays/", low=0)
    optimizer: str = _opt("adamw", "adamw (betas 0.9, 0.999), or sgd with momentum", choices=OPTIMIZERS)
    momentum: float = _opt(0.9, "SGD momentum (optimizer=sgd)", low=0, high=1)
    amp_dtype: str = _opt(
        "bf16", "autocast dtype on CUDA: bf16, or fp16 without loss scaling (amp=true)", choices=AMP_DTYPES
    )
    sampler: str = _opt(
        "epoch",
        "epoch: a new permutation each epoch, the last incomplete batch dropped; stream: one endless "
        "stream of permutations cut into ceil(n / batch) full batches an epoch (DINOv2's InfiniteSampler)",
        choices=SAMPLERS,
    )
    select: str = _opt(
        "best", "keep the weights of the best validation epoch, or of the last", choices=SELECTIONS
    )
    head_grid: str = _opt(
        "none",
        "none: one linear head (lr, pool); paper: Baharoon et al.'s 16 linear heads (lr 1e-3, 5e-3, "
        "1e-2, 5e-2 x last 1 or 4 class tokens x with or without the patch mean) trained together on "
        "the backbone, the best on validation AUROC kept",
        choices=HEAD_GRIDS,
    )
    refit: bool = _opt(
        False, "train a new head of the selected kind on train + val, the trained backbone frozen"
    )
    crop_ratio: float | None = _opt(
        None,
        "largest aspect ratio of the random resized crop, drawn in [1/r, r] (default: 0.9 to 1.1)",
        low=1,
    )
    crop: str = _opt(
        "affine",
        "affine: crop, rotation and flip in one bilinear resampling of the resized image, then jitter; "
        "torchvision: RandomResizedCrop (crop_scale to 1, ratio 1/crop_ratio to crop_ratio, default "
        "3/4 to 4/3) of the decoded image, bicubic, then a flip with p 0.5 if hflip; no rotation or "
        "jitter (rows stored resized or with masks keep the affine path)",
        choices=CROPS,
    )
    eval_mode_after: int | None = _opt(
        None,
        "keep the backbone side (not the head) in eval mode from this epoch on, as the paper's first "
        "mid-run evaluation left it: dropout (LoRA's too) and drop path off, BatchNorm on its running "
        "statistics; checkpointing that runs in train mode only (transformers backbones, DoRA's "
        "recompute) then stops saving memory (default: never)",
        low=1,
    )
    augment_on: str = _opt(
        "device",
        "device: training rows stored resized (decoded-image cache, volume slices) get the affine "
        "augmentation in one batched resampling on the training device, the per-item draws; other "
        "rows, and cpu, are augmented one at a time in the loader (the same numbers: bit for bit on a "
        "CPU, to float rounding on CUDA)",
        choices=AUGMENT_ON,
    )
    preset: str | None = _opt(
        None,
        "paper: Baharoon et al.'s trained runs (finetune, lora); explicit options win",
        choices=(None, "paper"),
    )

    # The backbone learning rate when ``backbone_lr`` is not given.
    default_backbone_lr = 1e-4


@dataclass
class FinetuneOptions(TrainOptions):
    layer_decay: float = _opt(
        0.75,
        "layer-wise lr decay: block i of L gets backbone_lr * decay**(L + 1 - i)",
        low=0,
        high=1,
        low_open=True,
    )


@dataclass
class LoraOptions(TrainOptions):
    rank: int = _opt(8, "LoRA rank r", low=1)
    alpha: float = _opt(16.0, "LoRA alpha (the update is scaled by alpha / r)", low=0, low_open=True)
    dropout: float = _opt(0.1, "dropout on the LoRA branch input", low=0, high=1)
    targets: list[str] | None = _opt(  # noqa: RUF009 (None default; _opt only attaches help and checks)
        None, "module names (or name suffixes) to adapt (default: attention qkv/proj and MLP fc1/fc2)"
    )
    lora_bias: str = _opt(
        "none",
        "biases that train (peft's LoraConfig bias): none, lora_only (those of the adapted layers), all",
        choices=LORA_BIASES,
    )

    default_backbone_lr = 5e-4


@dataclass
class DoraOptions(LoraOptions):
    recompute: bool = _opt(
        True,
        "recompute DoRA's magnitude step in backward instead of keeping two tensors the size of each "
        "adapted layer's output (same losses and gradients; less memory, a little more compute)",
    )


@dataclass
class BitfitOptions(TrainOptions):
    default_backbone_lr = 1e-3


@dataclass
class VptOptions(TrainOptions):
    tokens: int = _opt(10, "prompt tokens per prompted layer", low=1)
    deep: bool = _opt(True, "new prompts before every block (deep) or only before the first (shallow)")
    prompt_dropout: float = _opt(0.0, "dropout on the prompt tokens", low=0, high=1)

    default_backbone_lr = 1e-3


@dataclass
class PartialOptions(TrainOptions):
    blocks: int = _opt(2, "train the last k blocks (CNNs: stages) and the final norm", low=1)


# Options that only mean something for one kind of task: setting one for the other is an error.
TASK_OPTIONS = {
    "classification": ("pool", "class_weights", "head_grid", "refit"),
    "segmentation": ("seg_head", "decoder_channels", "save_predictions", "overlays"),
}
# Options that change what is written, not what is trained: left out of the training key.
OUTPUT_OPTIONS = ("keep_checkpoints", "save_predictions", "overlays")

OPTION_TYPES: dict[str, type[TrainOptions]] = {
    "finetune": FinetuneOptions,
    "lora": LoraOptions,
    "dora": DoraOptions,
    "bitfit": BitfitOptions,
    "vpt": VptOptions,
    "partial": PartialOptions,
}


def option_names(protocol: str) -> list[str]:
    return [f.name for f in dataclasses.fields(OPTION_TYPES[protocol])]


def _coerce(proto: str, f: dataclasses.Field, value: Any) -> Any:
    where = f"{proto}.{f.name}={value!r}"
    kind = str(f.type)
    if value is None:
        if "None" not in kind:
            raise OptionError("--set", f"{where}: a value is required")
        return None
    if kind.startswith("list"):
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            raise OptionError("--set", f"{where}: expected one or more names, e.g. qkv,proj")
        return list(items)
    scalar = {"bool": bool, "int": int, "float": float}.get(kind.split(" | ")[0], str)
    value = check_scalar(value, scalar, where)
    return float(value) if scalar is float else value


def _check(proto: str, f: dataclasses.Field, value: Any) -> None:
    m = f.metadata
    where = f"{proto}.{f.name}={value!r}"
    if m.get("choices") is not None and value not in m["choices"]:
        allowed = ", ".join(str(c) for c in m["choices"] if c is not None)
        raise OptionError("--set", f"{where}: expected one of {allowed}")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    low, high = m.get("low"), m.get("high")
    if low is not None and (value < low or (m.get("low_open") and value == low)):
        raise OptionError("--set", f"{where}: expected a value {'>' if m.get('low_open') else '>='} {low}")
    if high is not None and value > high:
        raise OptionError("--set", f"{where}: expected a value <= {high}")


def parse_options(protocol: str, raw: dict[str, Any], batch_size: int) -> TrainOptions:
    """Checked, fully resolved options of ``protocol`` from ``--set`` values.

    Presets fill the keys the user did not set; ``batch_size`` (the ``--batch-size`` flag) fills
    ``batch_size`` and the method's default fills ``backbone_lr``.
    """
    cls = OPTION_TYPES[protocol]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            raise OptionError(
                "--set", f"{protocol}.{name}: unknown option; {protocol} takes {', '.join(fields)}"
            )
    values = {name: _coerce(protocol, fields[name], v) for name, v in raw.items()}
    for name, v in values.items():
        _check(protocol, fields[name], v)
    preset = values.get("preset")
    if preset is not None:
        if preset not in PRESETS.get(protocol, {}):
            raise OptionError(
                "--set",
                f"{protocol}.preset={preset}: the paper (Baharoon et al.) did not run {protocol}; "
                f"its trained runs are finetune and lora",
            )
        values = {**PRESETS[protocol][preset], **values}
    _check_head_grid(protocol, values)
    values = _check_crop(protocol, values)
    opts = cls(**values)
    if opts.batch_size is None:
        opts.batch_size = batch_size
    if opts.backbone_lr is None:
        opts.backbone_lr = cls.default_backbone_lr
    return opts


def _check_head_grid(protocol: str, values: dict[str, Any]) -> None:
    """One line when an option of the single head is given beside the head grid, which ignores it."""
    if values.get("head_grid", "none") == "none":
        return
    for name, ignored in (("lr", None), ("pool", None), ("class_weights", "none")):
        if name in values and values[name] != ignored:
            raise OptionError(
                "--set",
                f"{protocol}.{name}={values[name]!r}: head_grid={values['head_grid']} sets every head's "
                "learning rate and input, and its loss has no class weights",
            )


def _check_crop(protocol: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with rotation and jitter off under torchvision's crop, which draws neither; one
    line when either is asked of it."""
    if values.get("crop", "affine") == "affine":
        return values
    for name in ("rotate", "intensity"):
        if values.get(name, 0.0):
            raise OptionError(
                "--set",
                f"{protocol}.{name}={values[name]!r}: crop=torchvision draws a crop and a flip only; "
                f"set {name}=0 or crop=affine",
            )
    return {"rotate": 0.0, "intensity": 0.0, **values}


def describe_options(protocol: str) -> list[dict[str, Any]]:
    """Name, default and help of every option of ``protocol`` (for docs and ``--help`` texts)."""
    out = []
    for f in dataclasses.fields(OPTION_TYPES[protocol]):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append({"name": f.name, "default": default, "help": f.metadata.get("help", "")})
    return out


def check_task_options(options: dict[str, dict[str, Any]], dataset: str, task: str) -> None:
    """One line when an option applies to the other kind of dataset (e.g. seg_head on classification)."""
    kind = "segmentation" if task == "segmentation" else "classification"
    for proto, kw in options.items():
        if kind == "segmentation" and kw.get("preset") is not None:
            raise OptionError(
                "--set",
                f"{proto}.preset={kw['preset']}: the paper trained classification heads only; "
                f"{dataset} is a {task} dataset",
            )
        for name in kw:
            other = next((k for k, names in TASK_OPTIONS.items() if k != kind and name in names), None)
            if other is not None:
                raise OptionError(
                    "--set", f"{proto}.{name}: applies to {other} datasets; {dataset} is a {task} dataset"
                )
