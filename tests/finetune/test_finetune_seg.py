"""Trained protocols on 2D segmentation: the seg room's heads on live patch grids, rows like seg-linear's.

All six methods train once (module fixture) on synthetic:seg2d with the tiny random-init ViT and the
seg-linear head. The trivial baseline is the training set's per-pixel majority class map: it finds the
centred organ well (Dice ~0.67) and never the lesion, a macro Dice of ~0.34 on test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ft_helpers import (
    BACKBONE,
    DIM,
    SEG_DATASET,
    assert_peft_kept_base_weights,
    backbone_side_trainable,
    kill_then_resume,
    lora_count,
    make_cfg,
    module_run,
    seg_options,
)

from radprobe.backbones import create_backbone
from radprobe.cli import main
from radprobe.errors import RadprobeError
from radprobe.finetune import build_model
from radprobe.finetune.data import Augment
from radprobe.finetune.heads import segmentation_head
from radprobe.finetune.methods import unreached_parameters
from radprobe.finetune.options import parse_options
from radprobe.finetune.predict import predict_masks
from radprobe.metrics.segmentation import case_scores, mean_dice, split_dice
from radprobe.protocols.registry import names
from radprobe.run.evaluate import evaluate
from radprobe.run.trained import _split, train_protocol, validate

METHODS = tuple(names("trained"))

CLASSES = ("organ", "lesion")
BASES = ("dice", "iou", "hd95", "nsd@2px", "dice_pooled", "iou_pooled", "iou_pooled_paper")
METRICS = {f"{m}_{s}" for m in BASES for s in ("macro", *CLASSES)} | {"dice_iou_mean", "dice_iou_mean_paper"}
LINEAR_HEAD = 2 * DIM + DIM * 3 + 3  # BatchNorm scale and shift + 1x1 conv to 3 classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with module_run(tmp_path_factory) as out:
        cfg = make_cfg(out, list(METHODS), {p: seg_options(p) for p in METHODS}, dataset=SEG_DATASET)
        plan = validate(cfg)
        yield {"plan": plan, "out": out, **{p: train_protocol(plan, p, "test-run") for p in METHODS}}


def _prior_map_dice(plan: Any) -> float:
    """Test macro Dice of the training set's per-pixel majority class (the same map for every image)."""
    train_masks = plan.seg["train"].targets
    prior = np.stack([(train_masks == c).mean(0) for c in range(3)]).argmax(0)
    return mean_dice([case_scores(prior, m, 3, with_hd95=False) for m in plan.seg["test"].masks])


@pytest.mark.parametrize("protocol", METHODS)
def test_seg_loss_falls_and_test_dice_beats_the_prior_map(trained: dict[str, Any], protocol: str) -> None:
    rows, _ = trained[protocol]
    by = {r.metric: r for r in rows}
    hist = by["dice_macro"].selected["history"]
    assert len(hist) == 6
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"], hist
    baseline = _prior_map_dice(trained["plan"])
    assert 0.3 < baseline < 0.4
    # the whole interval clears the baseline, not just the point estimate
    assert by["dice_macro"].ci_low > baseline + 0.1, (protocol, by["dice_macro"].value, baseline)
    assert by["dice_organ"].value > 0.8


@pytest.mark.parametrize("protocol", ["lora", "dora", "bitfit", "vpt"])
def test_seg_training_leaves_base_weights_bit_identical(trained: dict[str, Any], protocol: str) -> None:
    _, built = trained[protocol]
    assert_peft_kept_base_weights(protocol, built.model)


@pytest.mark.parametrize("protocol", METHODS)
def test_seg_trainable_counts_include_the_head(trained: dict[str, Any], protocol: str) -> None:
    rows, built = trained[protocol]
    head = built.model.head
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == LINEAR_HEAD
    expected = backbone_side_trainable(protocol) + LINEAR_HEAD
    assert built.trainable_params == expected
    r = rows[0]
    assert r.trainable_params == expected and r.params == built.params
    assert r.selected["trainable_pct"] == pytest.approx(100 * expected / r.params)
    in_groups = {id(p) for g in built.groups for p in g["params"]}
    assert in_groups == {id(p) for p in built.model.parameters() if p.requires_grad}


def test_seg_rows_match_the_frozen_seg_rows_and_carry_accounting(trained: dict[str, Any]) -> None:
    keys = set()
    for protocol in METHODS:
        rows, _ = trained[protocol]
        assert {r.metric for r in rows} == METRICS
        assert len({r.eval_key for r in rows}) == 1
        keys.add(rows[0].eval_key)
        for r in rows:
            assert r.protocol == protocol and r.task == "segmentation" and r.num_classes == 3
            assert (r.n, r.n_train, r.n_val, r.n_test) == (45, 170, 25, 45)
            assert r.ci_method == "patient bootstrap x20, percentile 95%"
            assert r.ci_low <= r.value <= r.ci_high, (protocol, r.metric)
            assert r.imgs_per_s > 0 and r.peak_mem_mb > 0 and r.wall_time_s > 0
            assert r.selected["epochs_run"] == 6 and 1 <= r.selected["epoch"] <= 6
            h = r.hparams
            assert h["seg_head"] == "linear" and h["layers"] == [1] and h["resolution"] == 64
            assert h["loss"] == "monai DiceCELoss (softmax, batch)" and h["hd95_unit"] == "px"
            assert h["intensity"] == 0.1 and h["input_intensity"]["used"] == "image: dtype"
            assert not {"pool", "class_weights", "save_predictions", "overlays"} & set(h)
    out = trained["out"]
    # three overlays per protocol, named like the frozen heads' (backbone__protocol__case)
    assert len(list((out / "overlays").glob("test_vit-tiny-*__lora__*.png"))) == 3
    # save_predictions is off by default, as for seg-*: only the per-case score tables (for compare)
    assert {p.name for p in (out / "predictions").iterdir()} == {f"{k}.npz" for k in keys}


@pytest.mark.parametrize("protocol", ["finetune", "vpt"])
def test_selection_uses_validation_dice(trained: dict[str, Any], protocol: str) -> None:
    rows, built = trained[protocol]
    plan = trained["plan"]
    sel = rows[0].selected
    hist = sel["history"]
    assert sel["val_dice"] == max(h["val_score"] for h in hist) == hist[sel["epoch"] - 1]["val_score"]
    # the model left after training is the selected epoch's: its validation Dice is the recorded one
    backbone = built.model.encoder.backbone if protocol == "vpt" else built.model.encoder
    val = _split(plan, backbone, "val", None)
    preds, _ = predict_masks(built, val, 16, torch.device("cpu"), amp=False)
    assert split_dice(preds, plan.seg["val"].masks, 3) == pytest.approx(sel["val_dice"], abs=1e-12)


def test_mask_moves_with_its_image_and_keeps_its_labels() -> None:
    x = torch.zeros(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    x[:, 4:14, 6:20], mask[4:14, 6:20] = 0.9, 1
    x[:, 18:28, 16:24], mask[18:28, 16:24] = 0.5, 2
    aug = Augment(crop_scale=0.6, rotate=30.0, intensity=0.0, hflip=True)
    moved = 0
    for s in range(6):
        img, m = aug.pair(x, mask, torch.Generator().manual_seed(s))
        assert torch.equal(img, aug(x, torch.Generator().manual_seed(s)))  # same draws as image-only
        assert m.dtype == mask.dtype and set(m.unique().tolist()) <= {0, 1, 2}
        # where the warped image is clearly inside a shape, the warped mask has that shape's label
        assert (m[img[0] > 0.8] == 1).float().mean() > 0.97
        assert (m[(img[0] > 0.45) & (img[0] < 0.55)] == 2).float().mean() > 0.9
        assert (m[img[0] < 0.05] == 0).float().mean() > 0.97
        moved += not torch.equal(m, mask)
    assert moved == 6
    # intensity jitter changes the image only
    jitter = Augment(crop_scale=1.0, rotate=0.0, intensity=0.3)
    img, m = jitter.pair(x, mask, torch.Generator().manual_seed(0))
    assert torch.equal(m, mask) and not torch.allclose(img, x, atol=1e-3)


def test_decoder_head_trains_on_the_live_grids(tmp_path: Path) -> None:
    bb = create_backbone(BACKBONE)
    head = segmentation_head(bb, 3, "decoder", 8)
    assert head.grid_layers == (0, 1)  # seg-decoder's four levels of a 2-block ViT: blocks 0, 0, 1, 1
    opts = parse_options("lora", seg_options("lora", seg_head="decoder", decoder_channels=8), 16)
    missing, error = unreached_parameters("lora", bb, head, opts)
    assert missing == [] and error is None
    options = {"bitfit": seg_options("bitfit", epochs=2, seg_head="decoder", decoder_channels=8)}
    rows = evaluate(make_cfg(tmp_path, ["bitfit"], options, dataset=SEG_DATASET, n_boot=0)).rows
    assert {r["metric"] for r in rows} == METRICS
    r = rows[0]
    assert r["hparams"]["seg_head"] == "decoder" and r["hparams"]["layers"] == [0, 1]
    assert r["ci_low"] is None and r["ci_method"] == ""
    hist = r["selected"]["history"]
    assert hist[1]["train_loss"] < hist[0]["train_loss"]
    built = build_model("bitfit", create_backbone(BACKBONE), segmentation_head(bb, 3, "decoder", 8), opts)
    decoder = sum(p.numel() for p in built.model.head.parameters())
    assert r["trainable_params"] == backbone_side_trainable("bitfit") + decoder


def test_killed_seg_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # augmentation and LoRA dropout on: resuming must replay the image-and-mask draws too
    opts = {"lora": seg_options("lora", epochs=3, dropout=0.1, augment=True, hflip=True)}
    whole, resumed = kill_then_resume(tmp_path, monkeypatch, "lora", opts, 2, dataset=SEG_DATASET)
    a, b = whole.rows[0], resumed.rows[0]
    strip = [{k: v for k, v in h.items() if k != "imgs_per_s"} for h in a["selected"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "imgs_per_s"} for h in b["selected"]["history"]]


@pytest.mark.parametrize(
    ("dataset", "options", "match"),
    [
        (SEG_DATASET, {"lora": {"pool": "mean"}}, r"lora\.pool: applies to classification datasets"),
        (SEG_DATASET, {"lora": {"seg_head": "unet"}}, r"lora\.seg_head='unet': expected one of linear"),
        (
            "synthetic:cls2d-binary",
            {"lora": {"seg_head": "decoder"}},
            r"lora\.seg_head: applies to segmentation datasets",
        ),
    ],
)
def test_options_of_the_other_task_are_refused(
    tmp_path: Path, dataset: str, options: dict[str, Any], match: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(RadprobeError, match=match):
        evaluate(make_cfg(out, ["lora"], options, dataset=dataset))
    assert not out.exists()


@pytest.mark.slow
def test_done_when_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "f"
    args = ["eval", "--backbone", "test:vit-tiny", "--dataset", "synthetic:seg2d"]
    args += ["--protocol", "finetune,lora,bitfit,vpt", "--out", str(out), "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    by = {(r["protocol"], r["metric"]): r for r in rows}
    assert len(rows) == len(by) == 4 * len(METRICS)
    for p in ("finetune", "lora", "bitfit", "vpt"):
        assert {m for q, m in by if q == p} == METRICS
        for m in ("dice_macro", "dice_organ", "dice_lesion", "iou_macro"):
            r = by[(p, m)]
            assert 0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0
            assert r["ci_method"] == "patient bootstrap x1000, percentile 95%"
        r = by[(p, "dice_macro")]
        assert r["value"] > 0.4  # the prior-map baseline is ~0.34
        assert r["params"] >= r["trainable_params"] > 0 and 0 < r["selected"]["trainable_pct"] <= 100
        assert r["imgs_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["wall_time_s"] > 0
        assert 1 <= r["selected"]["epochs_run"] <= 10 and r["hparams"]["epochs"] == 10
    ft = by[("finetune", "dice_macro")]["selected"]["trainable_pct"]
    lora = by[("lora", "dice_macro")]
    assert ft == pytest.approx(100.0)
    assert lora["trainable_params"] == lora_count(8, False) + LINEAR_HEAD  # default rank 8
    # about 5 %: well below a tenth of finetune's at ViT-Ti width (ViT-S/14 ~2.7 %, ViT-B ~1.3 %)
    assert lora["selected"]["trainable_pct"] < 0.06 * ft
