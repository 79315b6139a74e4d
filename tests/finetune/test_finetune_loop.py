"""The training loop's options: accumulation, gradient checkpointing, the schedule, eval mode."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ft_helpers import BACKBONE, fast_options

from radprobe.backbones import create_backbone
from radprobe.data import load_dataset
from radprobe.finetune import build_model, parse_options
from radprobe.finetune import train as train_mod
from radprobe.finetune.checkpoint import Checkpointer
from radprobe.finetune.data import ImageSet
from radprobe.finetune.heads import ClassificationHead
from radprobe.finetune.predict import Split
from radprobe.finetune.train import fit, lr_factor


def _fit_binary(built: Any, ds: Any, bb: Any, opts: Any, checkpoints: Path) -> dict[str, torch.Tensor]:
    """Train ``built`` on the binary set's train split (val for selection) on the CPU; its final weights."""
    split = {
        s: Split(ImageSet(ds, ds.split(s), bb.preprocess), ds.labels(ds.split(s))) for s in ("train", "val")
    }
    fit(
        built,
        split["train"],
        split["val"],
        "binary",
        opts,
        seed=0,
        device=torch.device("cpu"),
        checkpoints=Checkpointer(checkpoints, "k"),
        progress=False,
    )
    return {k: v.detach().clone() for k, v in built.model.state_dict().items()}


def test_schedule_warms_up_then_decays_to_zero() -> None:
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert lr_factor(0, 10, 0) == pytest.approx(1.0)


def _train(tmp: Path, batch: int, accum: int) -> dict[str, torch.Tensor]:
    ds = load_dataset("synthetic:cls2d-binary")
    bb = create_backbone(BACKBONE)
    torch.manual_seed(0)
    head = ClassificationHead(bb.info.embed_dim, 2, "binary", "cls")
    raw = fast_options("finetune", epochs=1, batch_size=batch, accum_steps=accum, grad_clip=0.0)
    opts = parse_options("finetune", raw, batch)
    built = build_model("finetune", bb, head, opts)
    return _fit_binary(built, ds, bb, opts, tmp / f"b{batch}a{accum}")


def test_accumulating_two_half_batches_equals_one_full_batch(tmp_path: Path) -> None:
    # 210 training images: 14 micro-batches of 15 (7 steps) vs 7 batches of 30 (7 steps)
    a = _train(tmp_path, 15, 2)
    b = _train(tmp_path, 30, 1)
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            # The key bias shifts every logit of a query equally, so softmax makes its gradient zero in exact
            # arithmetic; Adam scales the rounding noise left there up to full-size steps.
            dim = x.numel() // 3
            x, y = torch.cat([x[:dim], x[2 * dim :]]), torch.cat([y[:dim], y[2 * dim :]])
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("protocol", ["finetune", "vpt", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(protocol: str) -> None:
    grads = []
    for ckpt in (False, True):
        bb = create_backbone(BACKBONE)
        torch.manual_seed(0)
        head = ClassificationHead(bb.info.embed_dim, 2, "binary", "cls+mean")
        opts = parse_options(protocol, fast_options(protocol, grad_checkpointing=ckpt), 4)
        model = build_model(protocol, bb, head, opts).model.train()
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        model.head.loss(model(x), torch.tensor([0, 1, 1, 0])).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    from radprobe.errors import RadprobeError

    bb = create_backbone(BACKBONE)
    opts = parse_options("bitfit", {}, 8)
    built = build_model("bitfit", bb, ClassificationHead(64, 2, "binary"), opts)
    opt = torch.optim.AdamW(built.groups)
    from radprobe.finetune.checkpoint import TrainState

    Checkpointer(tmp_path, "run-a").save(built.model, opt, TrainState(epoch=1))
    other = copy.deepcopy(built.model)
    with pytest.raises(RadprobeError, match="belongs to another run"):
        Checkpointer(tmp_path, "run-b").load(
            other, torch.optim.AdamW(other.parameters()), torch.device("cpu")
        )
    state = Checkpointer(tmp_path, "run-a").load(built.model, opt, torch.device("cpu"))
    assert state.epoch == 1


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    from ft_helpers import make_cfg

    from radprobe.run.evaluate import evaluate

    # a learning rate too small to change the validation ranking: no epoch beats the first
    opts = {"bitfit": fast_options("bitfit", epochs=5, patience=1, lr=1e-12, backbone_lr=0.0)}
    row = evaluate(make_cfg(tmp_path, ["bitfit"], opts, n_boot=0)).rows[0]
    assert row["selected"]["epochs_run"] == 2 and row["selected"]["epoch"] == 1
    assert row["selected"]["early_stopped"] is True


def _lora_run(tmp: Path, modes: list[tuple[int, str, bool]], epoch: list[int]) -> dict[str, torch.Tensor]:
    """4 LoRA epochs (dropout 0.1, eval mode from epoch 2) from the checkpoint in ``tmp`` if any;
    each training forward of a dropout module or the head appends (epoch, name, module.training)."""
    ds = load_dataset("synthetic:cls2d-binary")
    bb = create_backbone(BACKBONE)
    torch.manual_seed(0)
    head = ClassificationHead(bb.info.embed_dim, 2, "binary", "cls")
    raw = fast_options("lora", epochs=4, batch_size=64, dropout=0.1, eval_mode_after=2)
    opts = parse_options("lora", raw, 64)
    built = build_model("lora", bb, head, opts)
    watched = [(n, m) for n, m in built.model.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert any("lora_dropout" in n for n, _ in watched)

    def spy(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            if built.model.training:  # a training forward, not validation
                modes.append((epoch[0], name, module.training))

        return hook

    for name, m in [*watched, ("head", built.model.head)]:
        m.register_forward_pre_hook(spy(name))
    return _fit_binary(built, ds, bb, opts, tmp)


def test_eval_mode_after_switches_the_encoder_not_the_head_and_survives_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epoch = [0]

    def count(done: int, crash_after: int | None = None) -> None:
        epoch[0] = done
        if done == crash_after:
            raise RuntimeError(f"killed after epoch {done}")

    monkeypatch.setattr(train_mod, "after_checkpoint", count)
    modes: list[tuple[int, str, bool]] = []
    whole = _lora_run(tmp_path / "whole", modes, epoch)
    assert {e for e, _, _ in modes} == {0, 1, 2, 3}
    # dropout (LoRA's included) on in epochs 0-1, off from epoch 2 on; the head always in train mode
    for e, name, training in modes:
        assert training == (name == "head" or e < 2), (e, name)

    epoch[0] = 0
    monkeypatch.setattr(train_mod, "after_checkpoint", lambda done: count(done, crash_after=3))
    with pytest.raises(RuntimeError, match="killed after epoch 3"):
        _lora_run(tmp_path / "resumed", [], epoch)
    monkeypatch.setattr(train_mod, "after_checkpoint", count)
    resumed: list[tuple[int, str, bool]] = []
    last = _lora_run(tmp_path / "resumed", resumed, epoch)
    assert resumed and {e for e, _, _ in resumed} == {3}
    assert resumed == [m for m in modes if m[0] == 3]
    assert last.keys() == whole.keys()
    assert all(torch.equal(last[k], whole[k]) for k in whole)
