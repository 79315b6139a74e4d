"""Shared settings of the fine-tuning tests: the tiny model, an easy dataset, fast options."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radprobe.backbones import create_backbone
from radprobe.backbones.testing import WIDTH
from radprobe.run.evaluate import EvalConfig

BACKBONE = "test:vit-tiny"
DIM, DEPTH = WIDTH, 2  # test:vit-tiny
# The easiest synthetic task for a random-init ViT: a bright nodule (abnormal) or not. 210/30/60 images.
DATASET = "synthetic:cls2d-binary"
# Organ (large, learnable) and lesion (a few pixels, below the 8-pixel patches) masks. 170/25/45 images.
SEG_DATASET = "synthetic:seg2d"
# Per-method backbone-side learning rates that make the tiny random-init ViT learn in a few epochs.
FAST_BACKBONE_LR = {
    "finetune": 3e-3,
    "partial": 3e-3,
    "lora": 3e-3,
    "dora": 3e-3,
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


def seg_options(protocol: str, **extra: Any) -> dict[str, Any]:
    """:func:`fast_options` for a segmentation dataset (no classification pooling)."""
    out = fast_options(protocol, **extra)
    out.pop("pool")
    return out


def base_state(protocol: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A trained model's original backbone weights, under a fresh backbone's names."""
    enc = model.encoder
    backbone = enc.backbone if protocol == "vpt" else enc
    return {
        k.replace(".base_layer", ""): v
        for k, v in backbone.state_dict().items()
        if "lora_" not in k  # adapters are new parameters, not base weights
    }


def lora_count(rank: int, dora: bool) -> int:
    """Adapter parameters of rank ``rank`` on every Linear layer of the tiny ViT's blocks."""
    model = create_backbone(BACKBONE).model
    lin = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    assert len(lin) == 4 * DEPTH  # qkv, proj, fc1, fc2
    return sum(rank * (m.in_features + m.out_features) + (m.out_features if dora else 0) for m in lin)


def backbone_side_trainable(protocol: str) -> int:
    """Trainable parameters outside the head under :func:`fast_options` (LoRA rank 4, 10 prompts)."""
    named = dict(create_backbone(BACKBONE).named_parameters())
    if protocol == "finetune":
        return sum(p.numel() for p in named.values())
    if protocol in ("lora", "dora"):
        return lora_count(4, protocol == "dora")
    if protocol == "bitfit":
        return sum(p.numel() for k, p in named.items() if k.endswith("bias"))
    if protocol == "vpt":
        return DEPTH * 10 * DIM  # deep prompts, 10 tokens per block
    # partial, blocks=1: the last block and the final norm
    return sum(p.numel() for k, p in named.items() if k.startswith(("model.blocks.1.", "model.norm.")))


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


class Crash(RuntimeError):
    """Stands in for a kill after a checkpoint."""


def kill_then_resume(
    tmp_path: Path, monkeypatch: Any, protocol: str, opts: dict[str, Any], after_epoch: int, **cfg_kw: Any
) -> tuple[Any, Any]:
    """An uninterrupted run, and the same run killed after ``after_epoch`` then resumed by rerunning.

    Checks on the way that the killed run scored nothing and that the rerun said it resumed.
    """
    from radprobe.finetune import train
    from radprobe.results import ResultStore
    from radprobe.run.evaluate import evaluate

    whole = evaluate(make_cfg(tmp_path / "whole", [protocol], opts, **cfg_kw))

    def crash(epoch: int) -> None:
        if epoch == after_epoch:
            raise Crash(f"killed after epoch {after_epoch}")

    out = tmp_path / "resumed"
    monkeypatch.setattr(train, "after_checkpoint", crash)
    try:
        evaluate(make_cfg(out, [protocol], opts, **cfg_kw))
    except Crash:
        pass
    else:
        raise AssertionError("the run was not killed")
    with ResultStore(out) as store:
        assert store.rows() == []
    monkeypatch.setattr(train, "after_checkpoint", None)
    notes: list[str] = []
    resumed = evaluate(make_cfg(out, [protocol], opts, **cfg_kw), warn=notes.append)
    assert any("resuming" in n and f"epoch {after_epoch}" in n for n in notes)
    values = {r["metric"]: (r["value"], r["ci_low"], r["ci_high"]) for r in whole.rows}
    assert {r["metric"]: (r["value"], r["ci_low"], r["ci_high"]) for r in resumed.rows} == values
    assert whole.rows[0]["eval_key"] == resumed.rows[0]["eval_key"]
    return whole, resumed


@contextmanager
def module_run(tmp_path_factory: Any) -> Iterator[Path]:
    """A run folder for a module-scoped fixture: its own feature cache and one torch thread."""
    import pytest

    with pytest.MonkeyPatch.context() as mp:
        # module scope: the per-test cache isolation of tests/conftest.py does not reach here
        mp.setenv("RADPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield tmp_path_factory.mktemp("run")
        finally:
            torch.set_num_threads(threads)


def changed_base_weights(protocol: str, model: nn.Module) -> tuple[set[str], set[str]]:
    """(every base weight name, the names whose values differ from a fresh build) after training."""
    fresh = create_backbone(BACKBONE).state_dict()
    after = base_state(protocol, model)
    assert set(after) == set(fresh)
    return set(fresh), {n for n in fresh if not torch.equal(fresh[n], after[n])}


def assert_peft_kept_base_weights(protocol: str, model: nn.Module) -> None:
    """After PEFT training: BitFit moved (most of) the biases and nothing else; others moved nothing."""
    names, changed = changed_base_weights(protocol, model)
    if protocol == "bitfit":
        biases = {n for n in names if n.endswith("bias")}
        assert changed <= biases and len(changed) >= 0.8 * len(biases)
    else:
        assert changed == set()
