"""Shared settings of the fine-tuning tests: the tiny model, an easy dataset, fast options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radprobe.run.evaluate import EvalConfig

BACKBONE = "test:vit-tiny"
# The easiest synthetic task for a random-init ViT: a bright nodule (abnormal) or not. 210/30/60 images.
DATASET = "synthetic:cls2d-binary"
# Per-method backbone-side learning rates that make the tiny random-init ViT learn in a few epochs.
FAST_BACKBONE_LR = {
    "finetune": 3e-3,
    "partial": 3e-3,
    "lora": 1e-2,
    "dora": 1e-2,
    "bitfit": 3e-2,
    "vpt": 3e-2,
}


def fast_options(protocol: str, **extra: Any) -> dict[str, Any]:
    """Options that train quickly and deterministically on the tiny ViT."""
    out: dict[str, Any] = {
        "epochs": 6,
        "lr": 1e-2,
        "backbone_lr": FAST_BACKBONE_LR[protocol],
        "warmup_epochs": 0.5,
        "weight_decay": 0.0,
        "augment": False,
        "pool": "cls+mean",
        "patience": 0,
    }
    if protocol in ("lora", "dora"):
        out.update(rank=4, dropout=0.0)
    if protocol == "partial":
        out["blocks"] = 1
    out.update(extra)
    return out


def make_cfg(out: Path, protocols: list[str], options: dict[str, dict[str, Any]], **kw: Any) -> EvalConfig:
    base: dict[str, Any] = {
        "backbone": BACKBONE,
        "dataset": DATASET,
        "batch_size": 16,
        "n_boot": 20,
        "progress": False,
    }
    base.update(kw)
    return EvalConfig(protocols=protocols, out=out, options=options, **base)
