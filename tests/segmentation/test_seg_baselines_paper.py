"""``preset=paper`` for the from-scratch baselines (seg-unet, seg-transunet): milesial's U-Net against
an independent parameter count, a short overfit, the preset's settings, the released schedule,
augmentation and input pipeline, the refit on train + val, and default runs left as they were."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from seg_helpers import shapes

from radprobe.errors import OptionError
from radprobe.metrics.segmentation import split_dice
from radprobe.protocols import registry
from radprobe.run.evaluate import EvalConfig, evaluate
from radprobe.segmentation import score_options, scratch
from radprobe.segmentation.baselines import seg_transunet
from radprobe.segmentation.data import Case, SegSplit
from radprobe.segmentation.milesial_unet import MilesialUNet
from radprobe.segmentation.protocols import SegData, seg_unet
from radprobe.segmentation.train import image_fetch

PAPER_LRS = [1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1]
TINY_TRANSUNET = {"widths": [4, 4, 8, 8], "vit_dim": 8, "vit_depth": 1, "vit_heads": 2,
                  "decoder_channels": [8, 8, 4, 4]}  # fmt: skip
# the paper layout shrunk: GroupNorm(32) needs the root and each bottleneck's quarter width in 32s
SMALL_PAPER_TRANSUNET = {"widths": [32, 128, 128, 128], "vit_dim": 16, "vit_depth": 1, "vit_heads": 2,
                         "decoder_channels": [8, 8, 4, 4]}  # fmt: skip


def _double(cin: int, cout: int, mid: int) -> int:
    """Parameters of two bias-free 3x3 convs, each followed by BatchNorm (weight and bias)."""
    return 9 * cin * mid + 2 * mid + 9 * mid * cout + 2 * cout


def _milesial_params(cin: int, classes: int, w: list[int], bilinear: bool) -> int:
    """milesial's U-Net counted by hand (dinov2/models/unet.py:80-97)."""
    f = 2 if bilinear else 1
    n = _double(cin, w[0], w[0]) + sum(_double(w[k - 1], w[k], w[k]) for k in range(1, 4))
    n += _double(w[3], w[4] // f, w[4] // f)
    c = w[4] // f
    for k in (3, 2, 1, 0):
        out = w[k] // f if k else w[0]
        if bilinear:  # Up(in, out, True): DoubleConv(in, out, in // 2) on [skip, upsampled]
            n += _double(c + w[k], out, (c + w[k]) // 2)
        else:  # ConvTranspose2d(in, in // 2, 2, 2) (with bias), then DoubleConv(in, out)
            n += c * (c // 2) * 4 + c // 2 + _double(c // 2 + w[k], out, out)
        c = out
    return n + w[0] * classes + classes


@pytest.mark.parametrize("bilinear", [False, True])
def test_milesial_unet_has_the_released_widths_and_parameter_count(bilinear):
    model = MilesialUNet(3, 3, bilinear=bilinear)
    count = sum(p.numel() for p in model.parameters())
    assert count == _milesial_params(3, 3, [64, 128, 256, 512, 1024], bilinear)
    # the released UNet(n_channels=3, n_classes=3), counted with the authors' module
    assert count == (17_263_107 if bilinear else 31_037_763)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert (convs[0].in_channels, convs[0].out_channels, convs[0].bias) == (3, 64, None)
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels, u.stride) for u in ups] == (
        [] if bilinear else [(1024, 512, (2, 2)), (512, 256, (2, 2)), (256, 128, (2, 2)), (128, 64, (2, 2))]
    )


@pytest.mark.parametrize(("h", "w"), [(32, 32), (37, 45), (16, 8)])
def test_milesial_unet_logits_have_the_input_size(h, w):
    model = MilesialUNet(3, 4, (4, 8, 8, 16)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, h, w)).shape == (2, 4, h, w)


def test_overfits_a_tiny_training_set_with_the_paper_loop():
    images, masks = shapes(8, 32, 0)
    torch.manual_seed(0)
    model = scratch.PaperInput(MilesialUNet(3, 3, (8, 16, 32)))
    fetch, rows = image_fetch(images, "cpu"), np.arange(8)
    scratch.train_scratch(model, fetch, masks, rows, scratch.ScratchSettings(0.1, 0, 40, 8, 0, augment=False))
    with torch.no_grad():
        preds = list(model(fetch(rows)).argmax(1).numpy())
    assert split_dice(preds, list(masks), 3) > 0.95


def test_paper_preset_settings_and_options_given_win():
    for proto in ("seg-unet", "seg-transunet"):
        o = registry.check_options(proto, {"preset": "paper"})
        assert o["lrs"] == PAPER_LRS and o["epochs"] == 50 and o["batch_size"] == 8 and o["min_steps"] == 0
        assert o["weight_decay"] == 0 and o["refit"] is True
        assert o["refit_lr"] == 1e-3 and o["refit_epochs"] == 100
    assert registry.check_options("seg-unet", {"preset": "paper"})["channels"] == [64, 128, 256, 512, 1024]
    t = registry.check_options("seg-transunet", {"preset": "paper"})
    assert t["layout"] == "paper" and t["widths"] == [64, 256, 512, 1024] and t["vit_depth"] == 24
    small = registry.check_options("seg-transunet", {"preset": "paper", **SMALL_PAPER_TRANSUNET})
    assert small["layout"] == "paper" and small["vit_depth"] == 1 and small["widths"] == [32, 128, 128, 128]
    mine = registry.check_options(
        "seg-transunet", {"preset": "paper", "layout": "radprobe", **TINY_TRANSUNET}
    )
    assert mine["layout"] == "radprobe" and mine["widths"] == [4, 4, 8, 8] and mine["epochs"] == 50
    o = registry.check_options(
        "seg-unet", {"preset": "paper", "lrs": 0.01, "refit_epochs": 3, "channels": [4, 8], "shots": [1, 2]}
    )
    assert o["lrs"] == [0.01] and o["refit_epochs"] == 3 and o["channels"] == [4, 8] and o["shots"] == [1, 2]
    assert o["epochs"] == 50 and o["refit_lr"] == 1e-3
    d = registry.check_options("seg-unet", {})
    assert d["preset"] is None and d["refit"] is False and d["refit_lr"] is None and d["lrs"] == [1e-3, 3e-3]


@pytest.mark.parametrize(
    ("proto", "options", "culprit"),
    [
        ("seg-unet", {"refit_lr": 0.01}, "seg-unet.refit_lr: takes effect with refit=true"),
        (
            "seg-transunet",
            {"preset": "paper", "refit": False, "refit_epochs": 5},
            "seg-transunet.refit_epochs",
        ),
        ("seg-unet", {"preset": "paper", "res_units": 1}, "seg-unet.res_units: a MONAI U-Net option"),
        ("seg-unet", {"preset": "paper", "refit_epochs": 0}, "seg-unet.refit_epochs=0"),
        ("seg-transunet", {"refit": True, "refit_lr": -1}, "seg-transunet.refit_lr=-1"),
        ("seg-decoder", {"preset": "paper"}, "the paper ran no seg-decoder"),
        ("seg-transunet", {"preset": "paper", "widths": [4, 4, 8, 8]}, "layout='paper' needs widths[0]"),
        ("seg-transunet", {"layout": "paper", "widths": [32, 64, 128, 128]}, "seg-transunet.widths"),
        ("seg-transunet", {"layout": "R50"}, "seg-transunet.layout='R50'"),
    ],
)
def test_bad_options_are_one_line_before_training(proto, options, culprit):
    with pytest.raises(OptionError) as e:
        registry.check_options(proto, options)
    assert culprit in str(e.value) and "\n" not in str(e.value)


def _split(name: str, n: int, seed: int, size: int = 16) -> SegSplit:
    images, masks = shapes(n, 32, seed)
    if size == 16:
        images, masks = images[..., ::2, ::2].copy(), masks[:, ::2, ::2].copy()  # 16 px: fast
    cases = [Case(f"{name}{i}", f"{name}-p{i}", None, slice(i, i + 1), (size, size)) for i in range(n)]  # type: ignore[arg-type]
    return SegSplit(name, cases, masks, list(masks), images=images)


def image_data(n_train: int = 8, n_val: int = 4, n_test: int = 3, size: int = 16) -> SegData:
    """Discs and squares at 16 px (or 32)."""
    splits = [
        _split(s, n, i, size)
        for i, (s, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))
    ]
    dataset = SimpleNamespace(classes=("background", "disc", "square"))
    return SegData(dataset, *splits, size=size)  # type: ignore[arg-type]


class _SGD(torch.optim.SGD):
    """torch's SGD, recording its settings and the learning rate of every step."""

    made: ClassVar[list[dict[str, Any]]] = []
    lrs: ClassVar[list[list[float]]] = []

    def __init__(self, params: Any, **kw: Any) -> None:
        _SGD.made.append(kw)
        _SGD.lrs.append([])
        super().__init__(params, **kw)

    def step(self, closure: Any = None) -> Any:
        _SGD.lrs[-1].append(self.param_groups[0]["lr"])
        return super().step(closure)


def test_sweep_of_7_lrs_then_a_new_model_on_train_and_val_at_1e3_with_the_released_cosine(monkeypatch):
    _SGD.made, _SGD.lrs = [], []
    monkeypatch.setattr(torch.optim, "SGD", _SGD)
    calls: list[tuple[Any, float, np.ndarray, np.ndarray, np.ndarray]] = []
    real = scratch.train_scratch

    def spy(model, fetch, targets, rows, s):
        calls.append((model, s, targets.copy(), rows.copy(), fetch(rows).numpy()))
        return real(model, fetch, targets, rows, s)

    monkeypatch.setattr(scratch, "train_scratch", spy)
    data = image_data()
    opts = registry.check_options("seg-unet", {"preset": "paper", "epochs": 1, "refit_epochs": 2})
    fetch = {s.name: image_fetch(s.images, "cpu") for s in (data.train, data.val, data.test)}
    build = lambda: scratch.PaperInput(MilesialUNet(3, 3, (4, 8)))  # noqa: E731
    model, sel, _ = scratch.paper_sweep(data, build, fetch, None, opts, seed=0)
    assert [c[1].lr for c in calls] == [*PAPER_LRS, 1e-3]  # the refit's lr is 1e-3, whichever won
    assert all(m == {"lr": m["lr"], "momentum": 0.9, "weight_decay": 0.0} for m in _SGD.made)
    assert all(len(r) == 1 for r in _SGD.lrs[:7])  # 8 images, batch 8: one step an epoch
    assert list(sel["val_dice_by_lr"]) == [f"{lr:g}" for lr in PAPER_LRS]
    refit_model, s, targets, rows, images = calls[-1]
    assert model is refit_model and s.epochs == 2 and s.batch_size == 8
    # train + val: 12 images, 2 steps an epoch, 4 steps; the cosine keeps the training split's epochs
    assert sel["refit"] == {"rows": 12, "steps": 4, "lr": 1e-3, "epochs": 2, "cosine_period": 2}
    assert np.allclose(_SGD.lrs[-1], [1e-3 * scratch.cosine(k, 2) for k in range(4)])
    assert _SGD.lrs[-1][3] > _SGD.lrs[-1][2] == 0  # past its period the cosine rises, as released
    assert np.array_equal(targets[rows], np.concatenate([data.train.targets, data.val.targets]))
    want = np.concatenate([data.train.images, data.val.images]).astype(np.float32)
    assert np.array_equal(images, want[rows])  # the final model saw every validation image


def test_cosine_is_torch_cosine_annealing_past_its_period_too():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 6, eta_min=0)
    for k in range(15):
        assert math.isclose(opt.param_groups[0]["lr"], scratch.cosine(k, 6), abs_tol=1e-12)
        opt.step()
        sched.step()


def test_few_shot_draws_keep_the_selected_model_without_a_refit(monkeypatch):
    calls: list[int] = []
    real = scratch.train_scratch

    def spy(model, fetch, targets, rows, s):
        calls.append(len(rows))
        return real(model, fetch, targets, rows, s)

    monkeypatch.setattr(scratch, "train_scratch", spy)
    data = image_data()
    opts = registry.check_options("seg-unet", {"preset": "paper", "lrs": [0.1, 0.01], "epochs": 1})
    build = lambda: scratch.PaperInput(MilesialUNet(3, 3, (4, 8)))  # noqa: E731
    fetch = {s.name: image_fetch(s.images, "cpu") for s in (data.train, data.val)}
    _, sel, _ = scratch.paper_sweep(data, build, fetch, np.array([2, 5]), opts, seed=0)
    assert calls == [2, 2] and "refit" not in sel and sel["lr"] in (0.1, 0.01)


def test_augmentation_moves_each_image_with_its_mask():
    rng = np.random.default_rng(0)
    y = torch.zeros(64, 12, 12, dtype=torch.int64)
    y[:, 1:5, 2:9] = 1
    y[:, 7:11, 3:6] = 2  # asymmetric: flips and turns show
    x = ((y + 1) / 4.0)[:, None].repeat(1, 3, 1, 1)  # intensity (class + 1) / 4, never 0 inside
    xs, ys = scratch.augment_images(x, y, rng)
    inside = xs[:, 0] > 0
    assert torch.equal(ys[inside], (xs[:, 0][inside] * 4 - 1).round().long())
    assert bool((ys[~inside] == 0).all()) and bool((~inside).any())  # corners rotated in: filled 0
    assert set(torch.unique(xs).tolist()) <= {0.0, 0.25, 0.5, 0.75}  # nearest: no new values
    assert int((ys != y).flatten(1).any(1).sum()) > 48  # most images moved


def test_paper_input_repeats_gray_then_min_max_then_imagenet():
    x = torch.tensor([[1.0, 3.0], [5.0, 9.0]]).view(1, 1, 2, 2) / 10
    out = scratch.PaperInput(torch.nn.Identity())(x)
    scaled = torch.tensor([[0.0, 0.25], [0.5, 1.0]])
    for c, (m, s) in enumerate(zip(scratch.IMAGENET_MEAN, scratch.IMAGENET_STD, strict=True)):
        assert torch.allclose(out[0, c], (scaled - m) / s)


def test_eval_rows_of_the_paper_preset(easy2d, tmp_path: Path):
    tiny = {"epochs": 1, "refit_epochs": 1, "lrs": [0.1], "batch_size": 4, "overlays": 0}
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"folder:{easy2d(n=10)}",
        protocols=["seg-unet", "seg-transunet"],
        out=tmp_path / "run",
        n_boot=0,
        progress=False,
        options={
            "seg-unet": {"preset": "paper", "channels": [4, 8], **tiny},
            "seg-transunet": {"preset": "paper", **SMALL_PAPER_TRANSUNET, **tiny, "shots": [1], "repeats": 1},
        },
    )
    rows = {r["protocol"]: r for r in evaluate(cfg).rows if r["metric"] == "dice_macro"}
    unet, tu = rows["seg-unet"], rows["seg-transunet"]
    for r in (unet, tu):
        h = r["hparams"]
        assert h["preset"] == "paper" and h["in_channels"] == 3 and h["loss"].startswith("monai DiceLoss")
        assert h["refit"]["lr"] == 1e-3 and h["refit"]["data"].startswith("train+val")
    assert unet["hparams"]["model"].startswith("milesial") and unet["backbone"] == "monai:unet"
    assert unet["selected"]["refit"]["rows"] == unet["n_train"] + unet["n_val"]
    assert tu["hparams"]["shots"] == 1 and "refit" not in tu["selected"]  # few-shot: no refit
    assert tu["hparams"]["layout"].startswith(
        "paper: the released R50-ViT-L_16 structure, not the released size"
    )
    assert tu["hparams"]["model"].startswith("TransUNet R50-ViT-L_16 as released") and 0 <= tu["value"] <= 1


def test_default_runs_keep_their_hparams():
    data = image_data()
    unet = seg_unet(data, **registry_defaults("seg-unet", channels=[4, 8], res_units=0))
    assert unet.hparams == {
        "lrs": [1e-3], "epochs": 0, "min_steps": 1, "batch_size": 16, "weight_decay": 1e-5,
        "channels": [4, 8], "res_units": 0, "in_channels": 1, "model": "monai.networks.nets.UNet (2D)",
        "augmentation": "none",
    }  # fmt: skip
    tu = seg_transunet(data, **registry_defaults("seg-transunet", **TINY_TRANSUNET))
    assert tu.hparams == {
        "lrs": [1e-3], "epochs": 0, "min_steps": 1, "batch_size": 16, "weight_decay": 1e-4,
        **TINY_TRANSUNET, "in_channels": 1,
        "model": "TransUNet (2D: ResNet-style CNN + ViT + cascaded upsampler)", "augmentation": "none",
    }  # fmt: skip
    assert "refit" not in unet.fits[0].selected


def test_the_paper_layout_without_the_preset_records_which_model_ran():
    # 32 px: at 16 the 1/16 map is one pixel, one value per group for the GroupNorms
    given = {**SMALL_PAPER_TRANSUNET, "layout": "paper"}
    h = seg_transunet(image_data(size=32), **registry_defaults("seg-transunet", **given)).hparams
    assert h["model"].startswith("TransUNet R50-ViT-L_16 as released") and h["in_channels"] == 1
    assert h["layout"].startswith("paper: the released R50-ViT-L_16 structure, not the released size")


def registry_defaults(proto: str, **given: Any) -> dict[str, Any]:
    """A tiny default run's options, resolved as ``radprobe eval`` resolves them."""
    opts = registry.check_options(proto, {**given, "lrs": [1e-3], "epochs": 0, "min_steps": 1, "overlays": 0})
    return score_options.split_scoring(opts)[0]  # the runner's own options, as run/segment passes them


def test_refit_without_the_preset_uses_the_default_loop_with_refit_lr_and_epochs(monkeypatch):
    from radprobe.segmentation import protocols

    calls: list[tuple[Any, int]] = []
    real = protocols.train

    def spy(model, fetch, targets, rows, s):
        calls.append((s, len(rows)))
        return real(model, fetch, targets, rows, s)

    monkeypatch.setattr(protocols, "train", spy)
    given = {"channels": [4, 8], "res_units": 0, "refit": True, "refit_lr": 0.05, "refit_epochs": 2}
    result = seg_unet(image_data(), **{**registry_defaults("seg-unet", **given), "min_steps": 0, "epochs": 1})
    (sweep, n_sweep), (refit, n_refit) = calls
    assert (sweep.lr, sweep.epochs, n_sweep) == (1e-3, 1, 8) and type(sweep).__name__ == "TrainSettings"
    assert (refit.lr, refit.epochs, n_refit) == (0.05, 2, 12)
    assert result.hparams["refit"] == {"data": "train+val (full-data runs)", "lr": 0.05, "epochs": 2}
    assert result.hparams["model"].startswith("monai") and result.fits[0].selected["refit"]["rows"] == 12


def test_paper_preset_reads_images_resized_as_released(easy2d, tmp_path: Path) -> None:
    # the notebooks' datasets hand Resize((448, 448), BICUBIC) float tensors: torchvision 0.15 then
    # resizes without antialiasing and keeps the overshoot (docs/paper-fidelity-backbones.md)
    import torch.nn.functional as F

    from radprobe.data import load_dataset
    from radprobe.run.segment import validate
    from radprobe.segmentation.data import load_case

    root = easy2d(n=8)

    def plan(options: dict[str, Any], protocols: list[str]) -> Any:
        cfg = EvalConfig(backbone="test:vit-tiny", dataset=f"folder:{root}", protocols=protocols,
                         out=tmp_path / "run", resolution=24, progress=False, options=options)  # fmt: skip
        return validate(cfg)

    paper = plan({"seg-unet": {"preset": "paper"}}, ["seg-unet"]).splits["train"]
    default = plan({}, ["seg-unet"]).splits["train"]
    ds = load_dataset(f"folder:{root}")
    img = torch.from_numpy(load_case(ds, paper.cases[0].record)[0].astype(np.float32))[None, None]
    want = F.interpolate(img, size=(24, 24), mode="bicubic", align_corners=False, antialias=False)[0]
    np.testing.assert_allclose(paper.images[0].astype(np.float32), want.numpy(), atol=2e-3)
    assert np.abs(default.images[0].astype(np.float32) - want.numpy()).max() > 0.02  # bilinear, antialiased
    with pytest.raises(OptionError, match="run them separately") as e:
        plan({"seg-unet": {"preset": "paper"}}, ["seg-unet", "seg-transunet"])
    assert "\n" not in str(e.value)


def test_predict_mode_train_is_the_notebooks_batch_statistics_in_split_order() -> None:
    # unet.ipynb predicts val and test without model.eval(): BatchNorm normalises each batch of 8 by
    # its own statistics (in split order, the last batch short); the model is left as it was
    from radprobe.segmentation.train import predict, predict_in_train_mode

    data = image_data(n_train=4, n_val=11)
    torch.manual_seed(0)
    model = scratch.PaperInput(MilesialUNet(3, len(data.classes), [4, 8, 16, 32, 64])).eval()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean += 5.0  # eval-mode statistics far from any batch's
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fetch = image_fetch(data.val.images, "cpu")
    got = predict_in_train_mode(model, fetch, data.val, batch_size=8, seed=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
    want = []
    with torch.no_grad():
        for rows in (np.arange(0, 8), np.arange(8, 11)):  # batches of 8 in split order
            reference = scratch.PaperInput(MilesialUNet(3, len(data.classes), [4, 8, 16, 32, 64]))
            reference.load_state_dict(before)
            logits = reference.train()(fetch(rows))
            want += [z.argmax(0).numpy() for z in logits]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert any((g != e).any() for g, e in zip(got, predict(model, fetch, data.val), strict=True))
    o = registry.check_options("seg-unet", {"preset": "paper"})
    assert o["predict_mode"] == "train"
    with pytest.raises(OptionError, match="takes effect with preset=paper"):
        registry.check_options("seg-transunet", {"predict_mode": "train"})
    with pytest.raises(OptionError, match="expected 'eval' or 'train'"):
        registry.check_options("seg-unet", {"preset": "paper", "predict_mode": "batch"})
