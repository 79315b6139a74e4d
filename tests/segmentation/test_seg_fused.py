"""The paper's segmentation heads: fused sweeps equal sequential ones, the paper preset's settings,
the up decoder's shapes, and the Dice loss and grid augmentation against independent references."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radprobe.backbones.testing import WIDTH
from radprobe.errors import OptionError
from radprobe.metrics.segmentation import split_dice
from radprobe.protocols import registry
from radprobe.run.evaluate import EvalConfig, evaluate
from radprobe.segmentation import fused
from radprobe.segmentation.data import Case, SegSplit
from radprobe.segmentation.heads import LinearHead, count_trainable
from radprobe.segmentation.train import grid_fetch, predict
from radprobe.segmentation.updecoder import UpDecoder, updecoder_layers

PAPER_LRS = [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1]


def _split(
    name: str, n: int, protos: np.ndarray, rng: np.random.Generator, h: int, patch: int, depth: int = 0
) -> SegSplit:
    """Rows whose 2x2-patch blocks carry one class; each patch's features are its class prototype
    plus noise, in two layers (0 and 1) so the five-layer decoder finds every grid it reads.
    ``depth`` > 0: cases are volumes of ``depth`` consecutive rows (slices)."""
    C, dim = protos.shape
    labels = rng.integers(0, C, (n, h // 2, h // 2)).repeat(2, 1).repeat(2, 2)
    feats = {
        la: (protos[labels] + rng.normal(0, 0.3, (n, h, h, dim))).transpose(0, 3, 1, 2).astype(np.float16)
        for la in (0, 1)
    }
    targets = labels.repeat(patch, 1).repeat(patch, 2).astype(np.uint8)
    T = h * patch
    if depth:
        cases = [
            Case(f"{name}{i}", f"{name}-p{i}", None, slice(i, i + depth), (depth, T, T))  # type: ignore[arg-type]
            for i in range(0, n, depth)
        ]
        return SegSplit(name, cases, targets, [targets[c.rows] for c in cases], features=feats)
    cases = [Case(f"{name}{i}", f"{name}-p{i}", None, slice(i, i + 1), (T, T)) for i in range(n)]  # type: ignore[arg-type]
    return SegSplit(name, cases, targets, [t for t in targets], features=feats)


def grid_data(
    n_train: int = 8, n_val: int = 4, dim: int = 16, h: int = 4, patch: int = 4, C: int = 3, depth: int = 0
) -> Any:
    rng = np.random.default_rng(0)
    protos = rng.normal(0, 1, (C, dim))
    splits = {s: _split(s, n, protos, rng, h, patch, depth) for s, n in (("train", n_train), ("val", n_val))}
    return SimpleNamespace(**splits, classes=tuple(f"c{i}" for i in range(C)), device="cpu")


def _fetch(data: Any, layers: list[int]) -> dict[str, Any]:
    return {s: grid_fetch(getattr(data, s).features, layers, "cpu") for s in ("train", "val")}


def _opts(**kw: Any) -> dict[str, Any]:
    return {"lrs": PAPER_LRS, "epochs": 3, "min_steps": 0, "batch_size": 4, "weight_decay": 0.0,
            "refit": False, **kw}  # fmt: skip


def test_dice_loss_is_the_sum_of_monai_dice_losses_per_head():
    from monai.losses import DiceLoss

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 9, 9)  # B, K heads, C classes, H, W
    y = torch.randint(0, 5, (3, 9, 9))
    y[0] = 0  # an image without some classes: per-image Dice with smoothing, as MONAI
    ref = DiceLoss(softmax=True, to_onehot_y=True)
    want = sum(ref(logits[:, k], y[:, None]) for k in range(4))
    assert torch.allclose(fused.dice_loss(logits.transpose(1, 2), y), want, atol=1e-6)
    # and its closed-form gradient is autograd's through MONAI's loss
    a = logits.double().requires_grad_()
    b = logits.double().requires_grad_()
    fused.dice_loss(a.transpose(1, 2), y).backward()
    sum(ref(b[:, k], y[:, None]) for k in range(4)).backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_upsampled_dice_is_monai_on_f_interpolate_gradient_included(mode):
    from monai.losses import DiceLoss

    torch.manual_seed(1)
    z = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64)  # B, C classes, K heads, h, w (class-major)
    y = torch.randint(0, 4, (3, 20, 20))
    a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = fused.upsampled_dice_loss(a, y, 20, mode)
    up = F.interpolate(b.reshape(3, 8, 5, 5), size=(20, 20), mode=mode, align_corners=False).view(
        3, 4, 2, 20, 20
    )
    ref = DiceLoss(softmax=True, to_onehot_y=True)
    want = sum(ref(up[:, :, k], y[:, None]) for k in range(2))
    (2 * got).backward()
    (2 * want).backward()
    assert torch.allclose(got, want, atol=1e-12) and torch.allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_matmul_upsampling_is_f_interpolate(mode):
    z = torch.randn(2, 3, 4, 7, 7, dtype=torch.float64)
    want = F.interpolate(z.view(-1, 1, 7, 7), size=(30, 30), mode=mode, align_corners=False).view(
        2, 3, 4, 30, 30
    )
    assert torch.allclose(fused.upsample(z, 30, mode), want, atol=1e-12)


def test_grid_augmentation_moves_each_patch_with_its_target_pixels():
    h, patch = 4, 3
    grid = torch.arange(8 * h * h, dtype=torch.float32).view(8, 1, h, h) % (h * h)
    grid = grid.repeat(1, 2, 1, 1)  # two channels, one transform
    target = grid[:, 0].long().repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    codes = np.arange(8)
    x, y = fused.augment_d4({0: grid}, target, codes)
    assert torch.equal(y, x[0][:, 0].long().repeat_interleave(patch, 1).repeat_interleave(patch, 2))
    assert torch.equal(x[0][:, 0], x[0][:, 1])
    _, y_np = fused.augment_d4({0: grid}, target.numpy().astype(np.uint8), codes)  # targets as trained
    assert np.array_equal(y_np, y.numpy())
    g = grid[0, 0].numpy()
    expected = [np.rot90(g, k) for k in range(4)] + [np.rot90(g, k)[:, ::-1] for k in range(4)]
    for c in range(8):
        assert np.array_equal(x[0][c, 0].numpy(), expected[c])
    assert len({tuple(e.ravel()) for e in expected}) == 8  # the 8 symmetries of the square


@pytest.mark.parametrize("head", ["linear", "updecoder", "linear-3d"])
def test_fused_sweep_equals_one_lr_at_a_time(head):
    data = grid_data(dim=16 if head.startswith("linear") else 32, depth=2 if head == "linear-3d" else 0)
    C = len(data.classes)
    if head.startswith("linear"):
        layers, lrs = [1], PAPER_LRS

        def build() -> torch.nn.Module:
            return LinearHead(1, 16, C, bn=False)
    else:
        layers, lrs = updecoder_layers(2), [1e-3, 1e-2, 1e-1]

        def build() -> torch.nn.Module:
            return UpDecoder(layers, 32, C)

    fetch = _fetch(data, sorted(set(layers)))
    opts = _opts(lrs=lrs, epochs=1 if head == "updecoder" else 2)
    a, sel_a, _ = fused.paper_sweep(data, build, fetch, None, opts, seed=3, fused=True)
    b, sel_b, _ = fused.paper_sweep(data, build, fetch, None, opts, seed=3, fused=False)
    assert sel_a["sweep"] == "fused" and sel_b["sweep"] == "sequential"
    by_default = fused.paper_sweep(data, build, fetch, None, {**opts, "epochs": 0, "min_steps": 1}, seed=3)[1]
    assert by_default["sweep"] == ("sequential" if head == "updecoder" else "fused")  # on a CPU
    assert sel_a["lr"] == sel_b["lr"] and abs(sel_a["val_dice"] - sel_b["val_dice"]) < 1e-5
    for lr, d in sel_a["val_dice_by_lr"].items():
        assert abs(d - sel_b["val_dice_by_lr"][lr]) < 1e-5
    assert len(set(sel_a["val_dice_by_lr"].values())) > 1  # the lrs did train differently
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-5, rtol=1e-4), name


def test_updecoder_widths_halve_three_times_to_the_classes_and_the_map_grows_16x():
    dim, C, h = 64, 3, 4
    dec = UpDecoder([0, 1, 2, 3, 4], dim, C)
    assert [(u.up.in_channels, u.up.out_channels) for u in dec.ups] == [(64, 32), (32, 16), (16, 8), (8, 3)]
    assert [u.skip[0].in_channels for u in dec.ups] == [dim] * 4
    feats = {la: torch.randn(2, dim, h, h) for la in range(5)}
    seen = []
    for u in dec.ups:
        u.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    out = dec(feats)
    assert seen == [(2, 32, 8, 8), (2, 16, 16, 16), (2, 8, 32, 32), (2, 3, 64, 64)]
    assert out.shape == (2, C, 16 * h, 16 * h) and dec.upsample == "bicubic"
    # skips go deepest first: block -2 feeds the first up block, block -5 the last
    feats2 = dict(feats)
    feats2[0] = torch.randn(2, dim, h, h)
    seen.clear()
    dec.eval()
    a, b = dec(feats), dec(feats2)
    assert torch.equal(dec.ups[0](feats[4], feats[3]), dec.ups[0](feats2[4], feats2[3]))
    assert not torch.equal(a, b)
    assert updecoder_layers(24) == [19, 20, 21, 22, 23] and updecoder_layers(2) == [0, 0, 0, 0, 1]


def test_updecoder_overfits_its_own_training_images():
    data = grid_data(n_train=6, dim=32)
    layers = updecoder_layers(2)
    fetch = _fetch(data, [0, 1])
    (dec,) = fused.init_heads(lambda: UpDecoder(layers, 32, 3), 1, seed=0)
    s = fused.FusedSettings((0.1,), epochs=40, min_steps=0, batch_size=6, seed=0, augment=False)
    fused.train_fused([dec], fetch["train"], data.train.targets, data.train.rows(), s)
    preds = predict(dec, fetch["train"], data.train)
    assert split_dice(preds, list(data.train.targets), 3) > 0.9


def test_refit_trains_on_train_and_val_rows_with_the_selected_lr(monkeypatch):
    data = grid_data()
    calls: list[tuple[tuple[float, ...], np.ndarray, np.ndarray, Any]] = []
    real = fused.train_fused

    def spy(heads, fetch, targets, rows, s, online=None):
        assert online is None  # augment="grids"
        calls.append((s.lrs, targets.copy(), rows.copy(), fetch(rows)[1].numpy()))
        return real(heads, fetch, targets, rows, s)

    monkeypatch.setattr(fused, "train_fused", spy)
    build = lambda: LinearHead(1, 16, 3, bn=False)  # noqa: E731
    _, sel, _ = fused.paper_sweep(data, build, _fetch(data, [1]), None, _opts(refit=True), seed=0)
    (sweep_lrs, _, sweep_rows, _), (refit_lrs, targets, rows, grids) = calls
    assert sweep_lrs == tuple(PAPER_LRS) and len(sweep_rows) == 8
    assert refit_lrs == (sel["lr"],) and sel["refit"] == {"rows": 12, "steps": 3 * 3}
    assert np.array_equal(targets, np.concatenate([data.train.targets, data.val.targets]))
    # the refit head's inputs include the validation grids, in row order
    want = np.concatenate([data.train.features[1], data.val.features[1]]).astype(np.float32)
    assert np.array_equal(grids, want[rows])


def test_paper_preset_settings_and_options_given_win():
    o = registry.check_options("seg-linear", {"preset": "paper"})
    assert o["lrs"] == PAPER_LRS and o["batch_size"] == 128 and o["epochs"] == 10
    assert o["weight_decay"] == 0 and o["min_steps"] == 0 and o["refit"] is True
    o = registry.check_options("seg-updecoder", {"preset": "paper", "lrs": [0.01], "refit": False})
    assert o["lrs"] == [0.01] and o["refit"] is False and o["batch_size"] == 128
    d = registry.check_options("seg-linear", {})
    assert d["preset"] is None and d["refit"] is False and d["lrs"] == [1e-3, 3e-3, 1e-2, 3e-2]


@pytest.mark.parametrize("proto", ["seg-decoder"])  # seg-unet, seg-transunet: test_seg_baselines_paper.py
def test_paper_preset_is_refused_where_the_paper_never_ran_in_one_line(proto):
    with pytest.raises(OptionError) as e:
        registry.check_options(proto, {"preset": "paper"})
    msg = str(e.value)
    assert "\n" not in msg and f"the paper ran no {proto}" in msg and "seg-linear" in msg
    with pytest.raises(OptionError, match="expected 'paper' or none"):
        registry.check_options("seg-linear", {"preset": "dinov2"})
    with pytest.raises(OptionError, match="true or false"):
        registry.check_options("seg-linear", {"refit": "yes"})


def test_paper_sgd_momentum_and_a_linear_head_without_batchnorm(monkeypatch):
    made: list[dict[str, Any]] = []

    class SGD(torch.optim.SGD):
        def __init__(self, params: Any, **kw: Any) -> None:
            made.append(kw)
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "SGD", SGD)
    data = grid_data()
    build = lambda: LinearHead(1, 16, 3, bn=False)  # noqa: E731
    model, sel, _ = fused.paper_sweep(data, build, _fetch(data, [1]), None, _opts(epochs=1), seed=0)
    assert made[0]["momentum"] == 0.9 and made[0]["weight_decay"] == 0.0
    assert sel["trainable_params"] == count_trainable(model) == 16 * 3 + 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_eval_rows_for_the_paper_preset_and_seg_updecoder(easy2d, tmp_path: Path):
    root = easy2d(n=12)
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"folder:{root}",
        protocols=["seg-linear", "seg-updecoder"],
        out=tmp_path / "run",
        n_boot=0,
        progress=False,
        options={
            "seg-linear": {"preset": "paper", "epochs": 2, "overlays": 0},
            "seg-updecoder": {"lrs": [1e-2], "epochs": 1, "min_steps": 2, "batch_size": 4, "overlays": 0},
        },
    )
    rows = {r["protocol"]: r for r in evaluate(cfg).rows if r["metric"] == "dice_macro"}
    lin, dec = rows["seg-linear"], rows["seg-updecoder"]
    assert lin["hparams"]["preset"] == "paper" and lin["hparams"]["lrs"] == PAPER_LRS
    assert lin["hparams"]["loss"].startswith("monai DiceLoss") and "refit" in lin["hparams"]
    assert lin["selected"]["refit"]["rows"] == lin["n_train"] + lin["n_val"]
    assert lin["trainable_params"] == WIDTH * 3 + 3  # no BatchNorm
    assert dec["hparams"]["layers"] == [0, 0, 0, 0, 1] and "preset" not in dec["hparams"]
    assert dec["hparams"]["loss"].startswith("monai DiceCELoss") and 0 <= dec["value"] <= 1


def test_seg_updecoder_refuses_a_cnn_before_writing(easy2d, tmp_path: Path):
    cfg = EvalConfig(
        backbone="test:cnn-tiny",
        dataset=f"folder:{easy2d(n=6)}",
        protocols=["seg-updecoder"],
        out=tmp_path / "run",
        progress=False,
    )
    with pytest.raises(OptionError) as e:
        evaluate(cfg)
    assert "\n" not in str(e.value) and "CNN" in str(e.value) and "seg-updecoder" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_refit_option_without_the_preset_retrains_the_selected_lr_on_train_and_val(monkeypatch):
    from radprobe.segmentation import protocols

    data = grid_data()
    seen: list[tuple[float, int]] = []
    real = protocols.train

    def spy(model, fetch, targets, rows, s):
        seen.append((s.lr, len(rows)))
        return real(model, fetch, targets, rows, s)

    monkeypatch.setattr(protocols, "train", spy)
    opts = {
        "lrs": [1e-3, 1e-1],
        "epochs": 1,
        "min_steps": 2,
        "batch_size": 4,
        "weight_decay": 0.0,
        "refit": True,
    }
    _, sel, _ = protocols._sweep(data, lambda: LinearHead(1, 16, 3), _fetch(data, [1]), None, opts, seed=0)
    assert seen[:2] == [(1e-3, 8), (1e-1, 8)] and seen[2] == (sel["lr"], 12)
    assert sel["refit"]["rows"] == 12
    # a default run adds nothing to its hparams, so its result key is unchanged
    assert fused.paper_hparams({"preset": None, "refit": False}, "x") == {}


def test_paper_schedule_is_cosine_annealing_stepped_every_iteration(monkeypatch):
    # segmentation.py:438, 319: CosineAnnealingLR(optimizer, max_iter, eta_min=0), stepped per iteration
    seen: list[list[float]] = []
    real = torch.optim.SGD

    class SGD(real):
        def step(self, closure: Any = None) -> Any:
            seen.append([g["lr"] for g in self.param_groups])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "SGD", SGD)
    data = grid_data(n_train=10)
    build = lambda: LinearHead(1, 16, 3, bn=False)  # noqa: E731
    lrs = [1e-3, 1e-1]
    fused.paper_sweep(data, build, _fetch(data, [1]), None, _opts(lrs=lrs, sampler="stream"), seed=0)
    total = 3 * 3  # 3 epochs of ceil(10 / 4) batches
    assert len(seen) == total
    ref_opt = real([{"params": [torch.zeros(1)], "lr": lr} for lr in lrs], lr=lrs[0])
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, total, eta_min=0)
    for got in seen:
        np.testing.assert_allclose(got, [g["lr"] for g in ref_opt.param_groups], rtol=1e-12)
        ref_opt.step()
        ref.step()


def test_paper_decoders_keep_the_running_batchnorm_averages_of_their_training_batches():
    # the released heads are evaluated on BatchNorm's running averages (momentum 0.1) of the training
    # batches; radprobe's default loop replaces them by exact averages over the training rows
    from radprobe.segmentation.train import precise_bn

    data = grid_data(dim=32)
    layers = updecoder_layers(2)
    fetch = _fetch(data, sorted(set(layers)))
    build = lambda: UpDecoder(layers, 32, 3)  # noqa: E731
    opts = _opts(lrs=[1e-2, 1e-1], epochs=1)
    for fuse in (True, False):
        model, sel, _ = fused.paper_sweep(data, build, fetch, None, opts, seed=3, fused=fuse)
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert all(int(m.num_batches_tracked) == sel["train_steps"] for m in bns)
        running = [m.running_mean.clone() for m in bns]
        precise_bn(model, fetch["train"], data.train.rows(), 4)
        assert any(
            not torch.allclose(r, m.running_mean, atol=1e-4) for r, m in zip(running, bns, strict=True)
        )
