"""Each trained protocol learns, trains only its own parameters, and counts them right.

All six methods are trained once (module fixture) on synthetic:cls2d-binary with the tiny random-init
ViT, then inspected. Base weights are compared bit for bit with a fresh build of the same seeded
backbone: the seed study's LoRA never trained because its features were computed under no_grad, so
"the adapters changed and nothing else did" is the property that matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from ft_helpers import (
    BACKBONE,
    DIM,
    backbone_side_trainable,
    changed_base_weights,
    fast_options,
    make_cfg,
    module_run,
)
from torch import nn

from radprobe.backbones import create_backbone
from radprobe.finetune import build_model
from radprobe.finetune.heads import ClassificationHead
from radprobe.finetune.methods import unreached_parameters
from radprobe.finetune.options import parse_options
from radprobe.protocols.registry import names
from radprobe.run.trained import train_protocol, validate

METHODS = tuple(names("trained"))

HEAD = 2 * DIM * 2 + 2  # binary head on cls+mean: 2 DIM x 2 + 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with module_run(tmp_path_factory) as out:
        cfg = make_cfg(out, list(METHODS), {p: fast_options(p) for p in METHODS})
        plan = validate(cfg)
        yield {p: train_protocol(plan, p, "test-run") for p in METHODS}


def _expected_trainable_names(protocol: str, names: list[str]) -> set[str]:
    if protocol == "finetune":
        return set(names)
    if protocol == "bitfit":
        return {n for n in names if n.endswith("bias")}
    if protocol == "partial":  # blocks=1: the last block and the final norm
        return {n for n in names if n.startswith(("model.blocks.1.", "model.norm."))}
    return set()  # lora, dora, vpt: no base weight trains


@pytest.mark.parametrize("protocol", METHODS)
def test_training_loss_falls_and_test_beats_chance(trained: dict[str, Any], protocol: str) -> None:
    rows, _ = trained[protocol]
    auroc = next(r for r in rows if r.metric == "auroc")
    hist = auroc.selected["history"]
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < 0.9 * hist[0]["train_loss"], hist
    assert auroc.value > 0.65, (protocol, auroc.value)  # chance is 0.5


@pytest.mark.parametrize("protocol", METHODS)
def test_only_the_methods_own_parameters_change(trained: dict[str, Any], protocol: str) -> None:
    _, built = trained[protocol]
    names, changed = changed_base_weights(protocol, built.model)
    should_train = _expected_trainable_names(protocol, sorted(names))
    assert changed <= should_train, sorted(changed - should_train)
    if should_train:
        assert len(changed) >= 0.8 * len(should_train)  # trained, not merely allowed to
    # the method's own new parameters moved away from their initial values
    own = {n: p for n, p in built.model.named_parameters() if p.requires_grad and not n.startswith("head.")}
    if protocol in ("lora", "dora"):
        assert own and all("lora_" in n for n in own)
        assert all(not torch.all(p == 0) for n, p in own.items() if "lora_B" in n)  # B starts at zero
    if protocol == "vpt":
        assert list(own) == ["encoder.prompts"]


def _expected_trainable(protocol: str) -> int:
    return backbone_side_trainable(protocol) + HEAD


@pytest.mark.parametrize("protocol", METHODS)
def test_trainable_parameter_counts_match_the_method(trained: dict[str, Any], protocol: str) -> None:
    rows, built = trained[protocol]
    expected = _expected_trainable(protocol)
    assert built.trainable_params == expected
    r = rows[0]
    assert r.trainable_params == expected
    assert r.selected["trainable_pct"] == pytest.approx(100 * expected / r.params)
    # every trainable parameter is in exactly one optimizer group, nothing frozen is
    in_groups = [p for g in built.groups for p in g["params"]]
    assert len({id(p) for p in in_groups}) == len(in_groups)
    assert {id(p) for p in in_groups} == {id(p) for p in built.model.parameters() if p.requires_grad}


def test_rows_carry_accounting(trained: dict[str, Any]) -> None:
    for protocol in METHODS:
        rows, _ = trained[protocol]
        assert {r.metric for r in rows} >= {"auroc", "auprc", "accuracy"}
        for r in rows:
            assert r.protocol == protocol and r.n_train == 210 and r.n_val == 30 and r.n_test == 60
            assert r.ci_low is not None and r.ci_low <= r.value <= r.ci_high, (protocol, r.metric)
            assert r.params >= r.trainable_params > 0
            assert r.imgs_per_s > 0 and r.peak_mem_mb > 0 and r.wall_time_s > 0
            assert r.selected["epochs_run"] == 6 and 1 <= r.selected["epoch"] <= 6
            assert r.hparams["epochs"] == 6 and r.hparams["precision"] == "fp32"
    ft, lora = trained["finetune"][0][0], trained["lora"][0][0]
    assert lora.trainable_params < 0.03 * ft.trainable_params  # rank 4 here


@pytest.mark.parametrize("protocol", ["lora", "dora", "bitfit", "vpt", "partial", "finetune"])
def test_gradients_reach_exactly_the_trainable_parameters(protocol: str) -> None:
    bb = create_backbone(BACKBONE)
    opts = parse_options(protocol, fast_options(protocol), 8)
    head = ClassificationHead(DIM, 2, "binary", "cls+mean")
    built = build_model(protocol, bb, head, opts)
    model = built.model.train()
    x = torch.randn(4, 3, 64, 64)
    model.head.loss(model(x), torch.tensor([0, 1, 0, 1])).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
            if "lora_A" not in n:  # A's gradient is B^T(...), zero while B is at its zero init
                assert p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_vpt_shallow_counts_one_prompt_set_and_partial_works_on_a_cnn() -> None:
    bb = create_backbone(BACKBONE)
    opts = parse_options("vpt", {"deep": False, "tokens": 3}, 8)
    built = build_model("vpt", bb, ClassificationHead(DIM, 2, "binary"), opts)
    assert built.trainable_params == 3 * DIM + DIM * 2 + 2
    cnn = create_backbone("test:cnn-tiny")
    opts = parse_options("partial", {"blocks": 1}, 8)
    built = build_model("partial", cnn, ClassificationHead(64, 2, "binary"), opts)
    last = sum(p.numel() for n, p in cnn.model.named_parameters() if n.startswith("layer4."))
    assert built.trainable_params == last + 64 * 2 + 2
    # frozen BatchNorms keep their running statistics in train mode
    model = built.model.train()
    frozen_bn = [
        m for n, m in cnn.model.named_modules() if isinstance(m, nn.BatchNorm2d) and "layer4" not in n
    ]
    assert frozen_bn and not any(m.training for m in frozen_bn)
    assert all(
        m.training for n, m in cnn.model.named_modules() if isinstance(m, nn.BatchNorm2d) and "layer4" in n
    )
    assert model.training


def _bypassing_attention(self, x, attn_mask=None, is_causal=False):  # type: ignore[no-untyped-def]
    # reads qkv's weight directly, as some timm attentions (EVA) do: a LoRA wrapper is skipped
    b, n, c = x.shape
    w = self.qkv.weight
    qkv = F.linear(x, w, self.qkv.bias).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_adapters_a_forward_bypasses_are_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from timm.models.vision_transformer import Attention

    from radprobe.errors import RadprobeError

    monkeypatch.setattr(Attention, "forward", _bypassing_attention)
    out = tmp_path / "run"
    with pytest.raises(RadprobeError, match=r"lora: 4 of the method's parameters get no gradient.*qkv"):
        validate(make_cfg(out, ["lora"], {"lora": {"rank": 2}}))
    assert not out.exists()


def test_parameters_the_forward_never_reaches_stay_frozen() -> None:
    bb = create_backbone(BACKBONE)
    bb.model.register_parameter("spare", nn.Parameter(torch.zeros(3)))
    head = ClassificationHead(DIM, 2, "binary")
    opts = parse_options("finetune", {}, 8)
    missing, error = unreached_parameters("finetune", bb, head, opts)
    assert missing == ["encoder.model.spare"] and error is None
    assert bb.model.spare.requires_grad  # the probe worked on a copy
    built = build_model("finetune", bb, head, opts, unused=missing)
    total = sum(p.numel() for p in bb.parameters())
    assert built.trainable_params == total - 3 + DIM * 2 + 2
