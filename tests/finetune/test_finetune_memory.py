"""What LoRA and DoRA hold for backward: exact byte counts, and options that change memory only."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from ft_helpers import BACKBONE
from torch import nn

from radprobe.backbones import create_backbone
from radprobe.finetune import build_model, parse_options
from radprobe.finetune.heads import ClassificationHead
from radprobe.finetune.memory import held_for_backward

BATCH = 4


def _model(protocol: str, **extra: Any) -> nn.Module:
    torch.manual_seed(0)
    bb = create_backbone(BACKBONE)
    head = ClassificationHead(bb.info.embed_dim, 3, "multilabel", "cls")
    opts = parse_options(protocol, {"rank": 4, **extra}, BATCH)
    return build_model(protocol, bb, head, opts).model.train()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 64, 64, generator=g), (torch.rand(BATCH, 3, generator=g) < 0.5).float()


def _step(model: nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    """One training step's loss and gradients, with the dropout masks drawn from a fixed seed."""
    x, y = _batch()
    torch.manual_seed(7)
    loss = model.head.loss(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_step(a: nn.Module, b: nn.Module) -> None:
    (la, ga), (lb, gb) = _step(a), _step(b)
    assert la == pytest.approx(lb, abs=1e-6)
    assert ga.keys() == gb.keys() and any(".lora_magnitude_vector." in n or "lora_A" in n for n in ga)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6, rtol=0), n


def _held(model: nn.Module) -> int:
    torch.manual_seed(7)
    return held_for_backward(model, _batch()[0])


def _adapted(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "lora_A") and isinstance(m.base_layer, nn.Linear)]


def _tokens(model: nn.Module) -> int:
    """Rows each adapted Linear sees in one batch (images x tokens)."""
    net = model.encoder.model
    return BATCH * (net.patch_embed.num_patches + net.num_prefix_tokens)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dora_recompute_keeps_losses_and_gradients(dropout: float) -> None:
    _assert_same_step(_model("dora", dropout=dropout, recompute=False), _model("dora", dropout=dropout))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dora_recompute_holds_what_lora_holds_but_the_outputs_it_recomputes_from(dropout: float) -> None:
    """peft's DoRA keeps two output-sized tensors per adapted layer for the magnitude's gradient;
    recomputed, it holds LoRA's bytes less A's rank-r outputs (recomputed too), plus, at dropout 0,
    each layer's output (the recompute starts from it; with dropout peft recomputes it from x)."""
    lora, dora = _model("lora", dropout=dropout), _model("dora", dropout=dropout)
    layers, rows = _adapted(dora), _tokens(dora)
    expected = _held(lora) - sum(rows * m.r["default"] * 4 for m in layers)
    if dropout == 0:
        expected += sum(rows * m.base_layer.out_features * 4 for m in layers)
    assert _held(dora) == expected
    assert _held(_model("dora", dropout=dropout, recompute=False)) > expected


def test_lora_dropout_zero_keeps_no_dropped_copy() -> None:
    """At dropout 0 peft puts Identity where the dropout was: nothing but A's own input is saved."""
    plain, dropped = _model("lora", dropout=0.0), _model("lora", dropout=0.1)
    assert all(isinstance(m.lora_dropout["default"], nn.Identity) for m in _adapted(plain))
    assert all(isinstance(m.lora_dropout["default"], nn.Dropout) for m in _adapted(dropped))
    assert _held(plain) < _held(dropped)


@pytest.mark.parametrize("protocol", ["lora", "dora"])
def test_grad_checkpointing_with_adapters_and_dropout_changes_memory_only(protocol: str) -> None:
    """The blocks recomputed in backward replay the same dropout masks; only block inputs stay held."""
    plain, ckpt = _model(protocol, dropout=0.1), _model(protocol, dropout=0.1, grad_checkpointing=True)
    assert _held(ckpt) < _held(plain) / 4
    _assert_same_step(plain, ckpt)
