"""``preset=paper`` for finetune and lora: Baharoon et al.'s trained runs, choice by choice.

Each test pins one group of choices of the released code (MohammedSB/DINOv2ForRadiology,
dinov2/eval/classification/linear.py; docs/paper-fidelity-trained.md has the table), and the last
ones pin that runs without the preset train and are keyed as before.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ft_helpers import BACKBONE, DEPTH, DIM, fast_options, make_cfg

from radprobe.backbones import create_backbone
from radprobe.backbones.base import BackboneOutput, Preprocess
from radprobe.core.sampling import derived_seed, stream_batches, stream_order
from radprobe.errors import OptionError, RadprobeError
from radprobe.finetune import build_model, parse_options
from radprobe.finetune import train as train_mod
from radprobe.finetune.data import EXACT, Augment, ImageSet, ResizedCrop, train_loader
from radprobe.finetune.heads import ClassificationHead, GridConfig, HeadGrid, make_head, paper_grid
from radprobe.finetune.train import hparams_of, lr_factor
from radprobe.run import trained as trained_mod
from radprobe.run.trained import _augment, train_protocol, validate

CPU = torch.device("cpu")
MULTILABEL = "synthetic:cls2d-multilabel"

PAPER_TRAINING = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "warmup_epochs": 0.0,
    "grad_clip": 0.0,
    "backbone_lr": 1e-5,
    "epochs": 10,
    "batch_size": 128,
    "sampler": "stream",
    "head_grid": "paper",
    "select": "last",
    "patience": 0,
    "refit": True,
    "amp_dtype": "fp16",
    "amp": True,
    "augment": True,
    "crop": "torchvision",
    "crop_scale": 0.75,
    "crop_ratio": pytest.approx(4 / 3),
    "hflip": True,
    "rotate": 0.0,
    "intensity": 0.0,
    "eval_mode_after": 5,
    "preset": "paper",
}
# A run's hparams keys before any option of the paper presets existed.
OLD_KEYS = {
    "epochs", "batch_size", "accum_steps", "lr", "backbone_lr", "weight_decay", "warmup_epochs",
    "patience", "grad_clip", "grad_checkpointing", "amp", "class_weights", "pool", "augment", "hflip",
    "crop_scale", "rotate", "intensity", "precision",
}  # fmt: skip
OLD_OWN_KEYS = {
    "finetune": {"layer_decay"},
    "lora": {"rank", "alpha", "dropout", "targets", "preset"},
    "dora": {"rank", "alpha", "dropout", "targets", "preset"},
    "bitfit": set(),
    "vpt": {"tokens", "deep", "prompt_dropout"},
    "partial": {"blocks"},
}


def _resolved(protocol: str, **extra: Any) -> dict[str, Any]:
    opts = parse_options(protocol, {"preset": "paper", **extra}, 64)
    return {k: getattr(opts, k) for k in vars(opts)}


def test_finetune_paper_preset_is_the_released_training() -> None:
    got = _resolved("finetune")
    assert {k: got[k] for k in PAPER_TRAINING} == PAPER_TRAINING
    assert got["layer_decay"] == 1.0  # linear.py:473: one group for the whole backbone
    # batch 128 even when --batch-size says 64; explicit options win over the preset
    assert _resolved("finetune", epochs=3, optimizer="adamw")["epochs"] == 3
    assert _resolved("finetune", epochs=3, optimizer="adamw")["optimizer"] == "adamw"


def test_lora_paper_preset_is_the_released_lora_config() -> None:
    got = _resolved("lora")
    assert {k: got[k] for k in PAPER_TRAINING} == PAPER_TRAINING
    # linear.py:477-484: LoraConfig(r=48, lora_alpha=16, target_modules=[qkv, fc1, fc2],
    # lora_dropout=0.1, bias="lora_only")
    assert (got["rank"], got["alpha"], got["dropout"]) == (48, 16.0, 0.1)
    assert got["targets"] == ["qkv", "fc1", "fc2"] and got["lora_bias"] == "lora_only"
    assert _resolved("lora", rank=4)["rank"] == 4


@pytest.mark.parametrize("protocol", ["dora", "bitfit", "vpt", "partial"])
def test_paper_preset_refuses_protocols_the_paper_never_ran_in_one_line(protocol: str) -> None:
    with pytest.raises(
        OptionError, match=rf"^{protocol}\.preset=paper: the paper .* did not run {protocol};"
    ):
        parse_options(protocol, {"preset": "paper"}, 8)


@pytest.mark.parametrize(
    ("options", "kw", "match"),
    [
        (
            {"lora": {"preset": "paper"}},
            {"dataset": "synthetic:seg2d"},
            r"lora\.preset=paper: the paper trained",
        ),
        ({"finetune": {"preset": "paper", "lr": 0.1}}, {}, r"finetune\.lr=0\.1: head_grid=paper sets every"),
        ({"finetune": {"head_grid": "paper", "pool": "mean"}}, {}, r"finetune\.pool='mean': head_grid=paper"),
        (
            {"lora": {"lora_bias": "some"}},
            {},
            r"lora\.lora_bias='some': expected one of none, lora_only, all",
        ),
        ({"finetune": {"optimizer": "adam"}}, {}, r"finetune\.optimizer='adam': expected one of adamw, sgd"),
        ({"finetune": {"crop_ratio": 0.5}}, {}, r"finetune\.crop_ratio=0\.5: expected a value >= 1"),
        ({"lora": {"eval_mode_after": 0}}, {}, r"lora\.eval_mode_after=0: expected a value >= 1"),
        ({"finetune": {"eval_mode_after": 2.5}}, {}, r"finetune\.eval_mode_after=2\.5: expected an integer"),
    ],
)
def test_paper_options_refuse_what_they_cannot_serve_in_one_line(
    tmp_path: Path, options: dict[str, Any], kw: dict[str, Any], match: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(RadprobeError, match=match) as err:
        validate(make_cfg(out, list(options), options, **kw))
    assert "\n" not in str(err.value) and not out.exists()


def test_paper_lora_adapts_exactly_qkv_fc1_fc2_and_trains_their_biases() -> None:
    bb = create_backbone(BACKBONE)
    opts = parse_options("lora", {"preset": "paper", "rank": 4}, 8)
    head = ClassificationHead(DIM, 2, "binary")
    built = build_model("lora", bb, head, opts)
    trainable = {n for n, p in built.model.encoder.named_parameters() if p.requires_grad}
    layers = [f"model.blocks.{b}.{m}" for b in range(DEPTH) for m in ("attn.qkv", "mlp.fc1", "mlp.fc2")]
    expected = {
        f"{ly}.{part}" for ly in layers for part in ("lora_A.default.weight", "lora_B.default.weight")
    }
    expected |= {f"{ly}.base_layer.bias" for ly in layers}  # bias="lora_only"
    assert trainable == expected
    assert not any("proj" in n for n, _ in built.model.named_modules() if n.endswith("lora_A"))
    # peft itself was told: its LoRA layers carry the config's bias and dropout
    qkv = built.model.encoder.model.blocks[0].attn.qkv
    assert qkv.r["default"] == 4 and qkv.lora_dropout["default"].p == 0.1 and qkv.scaling["default"] == 4.0
    # gradients reach every adapter and every trained bias
    model = built.model.train()
    model.head.loss(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for n, p in model.encoder.named_parameters() if p.requires_grad)


def test_lora_bias_all_trains_every_bias_and_none_no_bias() -> None:
    for bias, want in (("all", True), ("none", False)):
        bb = create_backbone(BACKBONE)
        opts = parse_options("lora", {"rank": 2, "lora_bias": bias}, 8)
        built = build_model("lora", bb, ClassificationHead(DIM, 2, "binary"), opts)
        biases = {n: p.requires_grad for n, p in built.model.encoder.named_parameters() if "bias" in n}
        assert biases and set(biases.values()) == {want}, bias


def _setup(protocol: str, n_train: int, **extra: Any) -> train_mod._Run:
    bb = create_backbone(BACKBONE)
    opts = parse_options(protocol, {"preset": "paper", **extra}, 8)
    head = HeadGrid(DIM, 3, "multilabel", paper_grid(DEPTH, True)[0])
    built = build_model(protocol, bb, head, opts)
    return train_mod._setup(built, opts, CPU, n_train, 0, 0, "")


@pytest.mark.parametrize("protocol", ["finetune", "lora"])
def test_paper_optimizer_is_sgd_with_momentum_at_the_papers_learning_rates(protocol: str) -> None:
    run = _setup(protocol, 300, rank=4) if protocol == "lora" else _setup(protocol, 300)
    opt = run.optimizer
    assert type(opt) is torch.optim.SGD  # linear.py:502
    for g in opt.param_groups:
        assert (g["momentum"], g["dampening"], g["nesterov"], g["weight_decay"]) == (0.9, 0, False, 0.0)
    heads = {g["lr"] for g in opt.param_groups if g["name"].startswith("head/")}
    backbone = {g["lr"] for g in opt.param_groups if not g["name"].startswith("head/")}
    assert heads == {1e-3, 5e-3, 1e-2, 5e-2} and backbone == {1e-5}
    # batch 128, ceil(300 / 128) = 3 full batches an epoch, 10 epochs, no warmup
    assert (run.bs, run.n_batches, run.total, run.warmup) == (128, 3, 30, 0)
    assert run.opts.grad_clip == 0.0


def test_paper_schedule_is_cosine_annealing_stepped_every_iteration() -> None:
    # linear.py:503, 340-341: the step uses the lr, then CosineAnnealingLR(max_iter, eta_min=0) steps
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 30, eta_min=0)
    for step in range(30):
        assert lr_factor(step, 30, 0) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        sched.step()


def test_stream_sampler_cuts_one_stream_of_permutations_into_full_batches() -> None:
    n, bs = 10, 4
    assert stream_batches(n, bs) == 3 and stream_batches(3, 128) == 1
    epochs = [stream_order(n, bs, e, seed=0) for e in range(5)]
    assert all(len(e) == 12 for e in epochs)  # 3 full batches, running on past the permutation
    stream = [i for e in epochs for i in e]
    passes = [sorted(i % n for i in stream[p * n : (p + 1) * n]) for p in range(6)]
    assert all(ps == list(range(n)) for ps in passes)  # every pass is a permutation of the rows
    assert [i // n for i in stream] == sorted(i // n for i in stream)  # pass index encoded, in order
    assert stream_order(n, bs, 2, seed=0) == epochs[2] != stream_order(n, bs, 2, seed=1)


def _blocks(b: int, n: int) -> BackboneOutput:
    blocks = torch.randn(b, n, 2, 8)
    return BackboneOutput(cls=blocks[:, -1, 0], pooled=blocks[:, -1, 1], blocks=blocks)


def test_paper_grid_is_16_heads_on_class_tokens_and_patch_mean_in_the_papers_order() -> None:
    configs, notes = paper_grid(12, True)
    lrs = [1e-3, 5e-3, 1e-2, 5e-2]
    inputs = [(1, True), (1, False), (4, True), (4, False)]  # blocks, then avgpool, then lr
    assert configs == [GridConfig(lr, n, a) for n, a in inputs for lr in lrs] and notes == []
    cnn, notes = paper_grid(4, False)  # linear.py:421-423
    assert cnn == [GridConfig(lr, 1, False) for lr in lrs] and "CNN" in notes[0]
    assert len(paper_grid(2, True)[0]) == 16 and "capped at 2" in paper_grid(2, True)[1][0]
    head = HeadGrid(8, 3, "multilabel", configs)
    assert head.n_blocks == 4
    assert [fc.in_features for fc in head.fcs] == [16] * 4 + [8] * 4 + [40] * 4 + [32] * 4
    feats = _blocks(5, 4)
    logits = head(feats)
    assert logits.shape == (5, 16, 3)
    # head 8: the last 4 class tokens, oldest first, then the last block's patch mean
    x = torch.cat([feats.blocks[:, :, 0].flatten(1), feats.blocks[:, -1, 1]], 1)
    assert torch.allclose(logits[:, 8], head.fcs[8](x), atol=1e-6)
    with torch.no_grad():
        assert all(
            float(fc.bias.abs().sum()) == 0 and 0.005 < float(fc.weight.std()) < 0.02 for fc in head.fcs
        )
    assert {head.lr_of(f"fcs.{i}.weight") for i in range(16)} == set(lrs)


def _paper_multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """linear.py:318-328 as released: per head, each sample's BCE summed over classes / classes,
    summed over the batch; the heads' losses summed (l.333)."""
    total = torch.zeros(())
    for h in range(logits.shape[1]):
        per = torch.zeros(())
        for b in range(len(labels)):
            for c in range(labels.shape[1]):
                per = per + F.binary_cross_entropy_with_logits(logits[b, h, c], labels[b, c].float())
            loss = per / labels.shape[1]
        total = total + loss
    return total


def test_paper_grid_losses_and_scores_are_the_released_ones() -> None:
    torch.manual_seed(0)
    configs = paper_grid(12, True)[0][:3]
    ml = HeadGrid(8, 3, "multilabel", configs)
    z = torch.randn(6, 3, 3)
    y = torch.randint(0, 2, (6, 3))
    assert torch.allclose(ml.loss(z, y), _paper_multilabel_loss(z, y), atol=1e-5)
    # binary: one logit, BCE averaged over the batch (l.330, 439); scores [1 - p, p]
    bi = HeadGrid(8, 2, "binary", configs)
    zb, yb = torch.randn(6, 3, 1), torch.randint(0, 2, (6,))
    ref = sum(F.binary_cross_entropy_with_logits(zb[:, h, 0], yb.float()) for h in range(3))
    assert bi.outputs == 1 and torch.allclose(bi.loss(zb, yb), ref, atol=1e-6)
    bi.selected.fill_(2)
    p = torch.sigmoid(zb[:, 2])
    assert torch.allclose(bi.scores(zb), torch.cat([1 - p, p], 1))
    # multi-class: cross-entropy averaged over the batch, scored by sigmoids (classification/utils.py:61)
    mc = HeadGrid(8, 4, "multiclass", configs)
    zm, ym = torch.randn(6, 3, 4), torch.randint(0, 4, (6,))
    ref = sum(F.cross_entropy(zm[:, h], ym) for h in range(3))
    assert torch.allclose(mc.loss(zm, ym), ref, atol=1e-6)
    assert torch.allclose(mc.scores(zm), torch.sigmoid(zm[:, 0]))


def test_paper_grid_chooses_the_first_head_of_best_validation_auroc() -> None:
    head = HeadGrid(8, 2, "multiclass", paper_grid(12, True)[0][:3])
    y = np.array([0, 1, 0, 1, 1, 0])
    good = np.eye(2)[y] * 0.8 + 0.1
    probs = np.stack([1 - good, good, good])  # head 0 wrong, heads 1 and 2 perfect
    scores = head.val_scores(y, probs)
    assert scores.tolist() == [0.0, 1.0, 1.0] and int(np.argmax(scores)) == 1


def test_paper_augmentation_is_random_resized_crop_and_flip() -> None:
    # data/transforms.py:84-87: RandomResizedCrop(scale=(0.75, 1)) with torchvision's ratio, flip 0.5
    aug = _augment(parse_options("finetune", {"preset": "paper"}, 8))
    assert isinstance(aug, ResizedCrop)
    assert aug.scale == (0.75, 1.0) and aug.ratio == pytest.approx((0.75, 4 / 3)) and aug.hflip == 0.5
    # without crop_ratio, torchvision's default ratio; without hflip, no flip
    opts = parse_options("finetune", {"crop": "torchvision", "hflip": False}, 8)
    assert (opts.rotate, opts.intensity) == (0.0, 0.0)  # torchvision's crop draws neither
    assert _augment(opts) == ResizedCrop(scale=(0.85, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.0)
    default = _augment(parse_options("finetune", {}, 8))
    assert isinstance(default, Augment) and default.ratio == (0.9, 1.1) and not default.hflip
    with pytest.raises(
        OptionError, match=r"^finetune\.rotate=5\.0: crop=torchvision draws a crop and a flip"
    ):
        parse_options("finetune", {"preset": "paper", "rotate": 5.0}, 8)


class _Originals:
    """A dataset stand-in whose records are indices into decoded images of any size."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images

    def load_image(self, record: int) -> np.ndarray:
        return self.images[record]


def _originals(n: int = 6) -> _Originals:
    rng = np.random.default_rng(0)
    shapes = [(90, 120), (120, 90), (77, 77), (50, 200), (64, 64), (96, 80)]
    return _Originals([rng.random(shapes[i % len(shapes)], dtype=np.float32) for i in range(n)])


def _unnormalised(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    return x * torch.tensor(pre.std).view(3, 1, 1) + torch.tensor(pre.mean).view(3, 1, 1)


def test_paper_crop_is_torchvisions_random_resized_crop_and_flip_of_the_original() -> None:
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms.v2 import functional as F2

    ds, pre, seed = _originals(), Preprocess(resolution=32), 3
    images = ImageSet(ds, list(range(6)), pre, ResizedCrop(), seed=seed)
    assert images.augmentation == EXACT and images.crop is not None
    crop = T.RandomResizedCrop((32, 32), scale=(0.75, 1), interpolation=T.InterpolationMode.BICUBIC)
    paper = T.Compose([crop, T.RandomHorizontalFlip(0.5)])
    flips = []
    for i, image in enumerate(ds.images):
        s = derived_seed("aug", seed, 0, i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)  # the box the released transform draws on a PIL image of this size
            box = crop.get_params(Image.fromarray(image), crop.scale, crop.ratio)
            flip = bool(torch.rand(1) < 0.5)
        assert images.crop.params(*image.shape, s) == (*box, flip)
        flips.append(flip)
        ours = _unnormalised(images[i][0], pre)[0]
        # the whole released pipeline on a tensor, under the same seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            theirs = paper(torch.from_numpy(image)[None])[0].clamp(0, 1)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        bicubic = F2.resized_crop(
            torch.from_numpy(image)[None], *box, [32, 32], T.InterpolationMode.BICUBIC, antialias=True
        )[0].clamp(0, 1)
        torch.testing.assert_close(ours, bicubic.flip(-1) if flip else bicubic, atol=1e-5, rtol=0)
        # PIL's bicubic (on float pixels: no 8-bit rounding between its two passes) agrees too
        pil = Image.fromarray(image).crop((box[1], box[0], box[1] + box[3], box[0] + box[2]))
        pil = np.asarray(pil.resize((32, 32), Image.Resampling.BICUBIC)).clip(0, 1)
        pil_t = torch.from_numpy(np.ascontiguousarray(pil[:, ::-1]) if flip else pil)
        torch.testing.assert_close(ours, pil_t, atol=1e-5, rtol=0)
    assert len(set(flips)) == 2


def test_paper_crop_draws_per_pass_and_row_and_repeats_with_workers() -> None:
    ds, pre = _originals(), Preprocess(resolution=32)
    images = ImageSet(ds, list(range(6)), pre, ResizedCrop(), seed=5)
    boxes = {
        (p, i): images.crop.params(*ds.images[i].shape, derived_seed("aug", 5, p, i))
        for p in range(3)
        for i in range(6)
    }
    assert all(boxes[0, i] != boxes[1, i] or boxes[1, i] != boxes[2, i] for i in range(6))  # passes differ
    assert len({boxes[0, i][:2] for i in (0, 4, 5)}) > 1  # so do rows
    images.stream = True  # index pass * n + row
    first, again = images[6 + 2][0], images[6 + 2][0]
    assert torch.equal(first, again) and not torch.equal(first, images[12 + 2][0])
    images.stream = False
    one = [torch.cat([b[0] for b in train_loader(images, 3, e, 5, num_workers=0)]) for e in (0, 1)]
    two = [torch.cat([b[0] for b in train_loader(images, 3, e, 5, num_workers=2)]) for e in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True)) and not torch.equal(*one)
    # rows stored resized, or with masks, keep the affine approximation and say so
    pixels = np.zeros((6, 1, 32, 32), np.float32)
    resized = ImageSet(ds, list(range(6)), pre, ResizedCrop(), seed=5, pixels=pixels)
    assert resized.crop is None and resized.augment == ResizedCrop().affine()
    assert resized.augmentation.startswith("one bilinear affine") and EXACT in resized.augmentation


def test_paper_autocast_is_fp16_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # eval/setup.py:63-66 with the configs' fp16 param_dtype, no GradScaler in linear.py
    seen = []
    monkeypatch.setattr(torch, "autocast", lambda device, dtype: seen.append((device, dtype)))
    train_mod.autocast(torch.device("cuda"), True, "fp16")
    train_mod.autocast(torch.device("cuda"), True)
    assert seen == [("cuda", torch.float16), ("cuda", torch.bfloat16)]
    assert train_mod.precision(torch.device("cuda"), True, "fp16") == "fp16-autocast"


def test_paper_run_selects_on_val_after_the_last_epoch_then_refits_on_train_plus_val(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    real_fit = trained_mod.fit

    def fit(built, train, val, task, opts, **kw):  # type: ignore[no-untyped-def]
        calls.append({"n": len(train.images), "val": val, "opts": opts, "built": built, "train": train})
        return real_fit(built, train, val, task, opts, **kw)

    monkeypatch.setattr(trained_mod, "fit", fit)
    opts = {"preset": "paper", "epochs": 2, "batch_size": 64, "rank": 2}
    plan = validate(make_cfg(tmp_path / "run", ["lora"], {"lora": opts}, dataset=MULTILABEL))
    rows, built = train_protocol(plan, "lora", "test-run")
    search, refit = calls
    n_train, n_val = len(plan.dataset.split("train")), len(plan.dataset.split("val"))
    assert search["n"] == n_train and search["val"] is not None
    grid = search["built"].model.head
    assert isinstance(grid, HeadGrid) and len(grid.configs) == 16
    # the refit: a new head of the chosen kind on train + val, the tuned backbone frozen, no validation
    assert refit["n"] == n_train + n_val and refit["val"] is None and refit["opts"].select == "last"
    assert built is refit["built"] and built.model.frozen_encoder
    assert built.model.head.configs == [grid.choice]
    assert not any(p.requires_grad for p in built.model.encoder.parameters())
    row = next(r for r in rows if r.metric == "auroc_macro")
    sel = row.selected
    assert sel["head"] == {
        "lr": grid.choice.lr,
        "n_blocks": grid.choice.n_blocks,
        "avgpool": grid.choice.avgpool,
    }
    assert sel["epoch"] == 2 and sel["epochs_run"] == 2  # the last epoch, not the best
    assert sel["val_score"] == sel["history"][-1]["val_score"]
    assert sel["refit"]["epochs_run"] == 2 and "val_score" not in sel["refit"]["history"][0]
    # the method's cost is the searched model's: adapters, their layers' biases and 16 heads
    own = ("lora_", ".base_layer.bias", "head.fcs.")
    named = search["built"].model.named_parameters()
    assert row.trainable_params == sum(p.numel() for n, p in named if any(t in n for t in own))
    assert row.hparams["head_grid"] == "paper" and "lr" not in row.hparams and "pool" not in row.hparams
    # torchvision's crop of the decoded originals, in the search and in the refit, and recorded
    assert row.hparams["crop"] == "torchvision" and row.hparams["augmentation"] == EXACT
    assert all(c["train"].images.crop is not None and c["train"].images.decoded is None for c in calls)
    assert any("capped at 2" in w for w in row.warnings)


def test_default_options_keep_their_hparams_keys() -> None:
    bb = create_backbone(BACKBONE)
    for protocol, own in OLD_OWN_KEYS.items():
        opts = parse_options(protocol, {}, 8)
        details = {"targets": ["x"]} if protocol in ("lora", "dora") else {}
        assert set(hparams_of(protocol, opts, details, CPU, "binary")) == OLD_KEYS | own, protocol
        assert (opts.optimizer, opts.sampler, opts.select, opts.head_grid, opts.refit) == (
            "adamw",
            "epoch",
            "best",
            "none",
            False,
        )
    # the default model: AdamW, one head, LoRA on every block Linear (proj too) without biases
    opts = parse_options("lora", fast_options("lora", epochs=1), 16)
    head = make_head(_dataset(), bb, opts)
    assert isinstance(head, ClassificationHead)
    built = build_model("lora", bb, head, opts)
    run = train_mod._setup(built, opts, CPU, 210, 0, 0, "")
    assert type(run.optimizer) is torch.optim.AdamW and run.n_batches == 210 // 16
    assert not any("bias" in n for n, p in built.model.encoder.named_parameters() if p.requires_grad)
    assert any(".attn.proj.lora_A" in n for n, _ in built.model.named_parameters())
    assert math.isclose(run.warmup, 0.5 * run.n_batches, abs_tol=1)


@pytest.mark.parametrize("protocol", ["finetune", "lora"])
def test_paper_preset_keeps_the_backbone_in_eval_mode_after_the_first_mid_run_evaluation(
    protocol: str,
) -> None:
    # linear.py:186, 359-370: evaluated every 5 epochs; eval/utils.py:361 leaves the feature model in
    # eval mode, and only ModelWithIntermediateLayers.__init__ (eval/utils.py:313-320) sets train mode
    details = {"targets": ["x"]} if protocol == "lora" else {}
    paper = parse_options(protocol, {"preset": "paper"}, 8)
    assert paper.eval_mode_after == 5
    assert hparams_of(protocol, paper, details, CPU, "binary")["eval_mode_after"] == 5
    assert parse_options(protocol, {"preset": "paper", "eval_mode_after": None}, 8).eval_mode_after is None
    default = parse_options(protocol, {}, 8)
    assert default.eval_mode_after is None
    assert "eval_mode_after" not in hparams_of(protocol, default, details, CPU, "binary")


def _dataset():  # type: ignore[no-untyped-def]
    from radprobe.data import load_dataset

    return load_dataset("synthetic:cls2d-binary")


def test_a_paper_run_killed_during_its_refit_resumes_to_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ft_helpers import Crash

    from radprobe.run.evaluate import evaluate

    opts = {"lora": {"preset": "paper", "epochs": 2, "batch_size": 64, "rank": 2}}
    whole = evaluate(make_cfg(tmp_path / "whole", ["lora"], opts, dataset=MULTILABEL))
    saved: list[int] = []

    def crash(epoch: int) -> None:
        saved.append(epoch)
        if len(saved) == 3:  # search epochs 1 and 2, then the refit's first epoch
            raise Crash("killed in the refit")

    monkeypatch.setattr(train_mod, "after_checkpoint", crash)
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        evaluate(make_cfg(out, ["lora"], opts, dataset=MULTILABEL))
    assert (out / "checkpoints").is_dir() and list((out / "checkpoints").glob("*/refit/last.safetensors"))
    monkeypatch.setattr(train_mod, "after_checkpoint", None)
    notes: list[str] = []
    resumed = evaluate(make_cfg(out, ["lora"], opts, dataset=MULTILABEL), warn=notes.append)
    assert any("refit: resuming from the checkpoint after epoch 1" in n for n in notes)
    values = {r["metric"]: (r["value"], r["ci_low"], r["ci_high"]) for r in whole.rows}
    assert {r["metric"]: (r["value"], r["ci_low"], r["ci_high"]) for r in resumed.rows} == values
    assert whole.rows[0]["eval_key"] == resumed.rows[0]["eval_key"]


def test_torchvision_crop_on_segmentation_keeps_the_affine_path_and_says_so(tmp_path: Path) -> None:
    from ft_helpers import SEG_DATASET, seg_options

    opts = {"finetune": seg_options("finetune", epochs=1, augment=True, crop="torchvision", hflip=True)}
    plan = validate(make_cfg(tmp_path / "run", ["finetune"], opts, dataset=SEG_DATASET))
    train = trained_mod._split(plan, plan.backbone, "train", _augment(plan.options["finetune"]))
    assert train.images.crop is None and train.images.augment == ResizedCrop(scale=(0.85, 1.0)).affine()
    rows, _ = train_protocol(plan, "finetune", "test-run")
    assert (
        rows[0].hparams["crop"] == "torchvision"
        and rows[0].hparams["augmentation"] == train.images.augmentation
    )
    assert "approximating" in rows[0].hparams["augmentation"]


def test_a_refit_with_the_affine_crop_reads_train_and_val_from_their_decoded_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radprobe.finetune.data import JoinedEntry

    seen: list[Any] = []
    real_fit = trained_mod.fit

    def fit(built, train, val, task, opts, **kw):  # type: ignore[no-untyped-def]
        seen.append(train.images)
        return real_fit(built, train, val, task, opts, **kw)

    monkeypatch.setattr(trained_mod, "fit", fit)
    opts = {"preset": "paper", "epochs": 1, "batch_size": 64, "rank": 2, "crop": "affine"}
    cfg = make_cfg(tmp_path / "run", ["lora"], {"lora": opts}, dataset=MULTILABEL, cache_root=tmp_path / "c")
    train_protocol(validate(cfg), "lora", "test-run")
    search, refit = seen
    assert not isinstance(search.decoded, JoinedEntry) and search.decoded is not None
    assert isinstance(refit.decoded, JoinedEntry) and len(refit.decoded) == len(refit.records)
    assert refit.batchable  # the refit's rows are augmented as device batches too
