"""Trained protocols on 3D segmentation: trained on slices, selected and scored per reassembled volume.

bitfit and lora train once (module fixture, 3 epochs) on synthetic:seg3d (28 / 4 / 8 volumes of 32^3,
axial slices at the tiny ViT's 64 px) with the seg-linear head. The trivial baseline is the training
volumes' per-voxel majority class: it finds the centred organ only roughly (Dice ~0.6).
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
    assert_peft_kept_base_weights,
    kill_then_resume,
    make_cfg,
    module_run,
    seg_options,
)

from radprobe.cli import main
from radprobe.finetune.predict import predict_masks
from radprobe.metrics.segmentation import case_scores, split_dice
from radprobe.results import ResultStore
from radprobe.run.trained import _split, train_protocol, validate
from radprobe.segmentation.data import resize_masks

DATASET = "synthetic:seg3d"
CLASSES = ("organ", "lesion")
BASES = ("dice", "iou", "hd95", "nsd@2mm", "dice_pooled", "iou_pooled", "iou_pooled_paper")
METRICS = {f"{m}_{s}" for m in BASES for s in ("macro", *CLASSES)} | {"dice_iou_mean", "dice_iou_mean_paper"}
PROTOCOLS = ("bitfit", "lora")
N_TRAIN, N_VAL, N_TEST, DEPTH = 28, 4, 8, 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with module_run(tmp_path_factory) as out:
        options = {p: seg_options(p, epochs=3) for p in PROTOCOLS}
        plan = validate(make_cfg(out, list(PROTOCOLS), options, dataset=DATASET))
        yield {"plan": plan, "out": out, **{p: train_protocol(plan, p, "test-run") for p in PROTOCOLS}}


def _prior_volume_dice(plan: Any) -> np.ndarray:
    """Per-class test Dice of the training volumes' per-voxel majority class (one volume for all)."""
    train_split = plan.seg["train"]
    size = train_split.targets.shape[-1]
    vols = train_split.targets.reshape(len(train_split), DEPTH, size, size)
    prior = np.stack([(vols == c).mean(0) for c in range(3)]).argmax(0)
    prior = resize_masks(prior, DEPTH)  # slices back to the volumes' 32 x 32
    scores = [case_scores(prior, m, 3, with_hd95=False).dice for m in plan.seg["test"].masks]
    return np.nanmean(np.stack(scores), axis=0)


def test_3d_rows_are_scored_per_volume_like_the_frozen_seg_rows(trained: dict[str, Any]) -> None:
    plan = trained["plan"]
    assert [plan.seg[s].n_rows for s in ("train", "val", "test")] == [
        n * DEPTH for n in (N_TRAIN, N_VAL, N_TEST)
    ]
    for protocol in PROTOCOLS:
        rows, _ = trained[protocol]
        assert {r.metric for r in rows} == METRICS
        assert len({r.eval_key for r in rows}) == 1
        for r in rows:
            assert r.protocol == protocol and r.task == "segmentation"
            assert (r.n, r.n_train, r.n_val, r.n_test) == (N_TEST, N_TRAIN, N_VAL, N_TEST)
            assert r.ci_method == "patient bootstrap x20, percentile 95%"
            assert r.ci_low <= r.value <= r.ci_high, (protocol, r.metric)
            assert r.selected["epochs_run"] == 3 and r.imgs_per_s > 0
            h = r.hparams
            assert h["cases"] == "volume" and h["axis"] == 2
            assert h["slicewise"] == "2D per slice, reassembled per volume"
            assert h["hd95_unit"] == "mm" and "window center 40" in h["input_intensity"]["used"]
            assert h["seg_head"] == "linear" and h["resolution"] == 64 and h["n_boot"] == 20
    # overlays of test volumes, named like the frozen heads'
    assert len(list((trained["out"] / "overlays").glob("test_vit-tiny-*__bitfit__*.png"))) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_3d_training_beats_the_prior_volume(trained: dict[str, Any], protocol: str) -> None:
    rows, _ = trained[protocol]
    by = {r.metric: r for r in rows}
    hist = by["dice_macro"].selected["history"]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"], hist
    baseline = _prior_volume_dice(trained["plan"])
    assert 0.4 < baseline[0] < 0.8 and baseline[1] == 0.0
    # the whole interval clears the baseline on the organ, not just the point estimate
    assert by["dice_organ"].ci_low > baseline[0] + 0.1, (protocol, by["dice_organ"].value, baseline)
    assert by["dice_macro"].value > np.mean(baseline) + 0.2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_3d_training_changes_only_the_method_s_weights(trained: dict[str, Any], protocol: str) -> None:
    _, built = trained[protocol]
    assert_peft_kept_base_weights(protocol, built.model)


def test_slices_are_the_frozen_path_s_pixels_and_selection_uses_val_volumes(
    trained: dict[str, Any],
) -> None:
    plan = trained["plan"]
    rows, built = trained["lora"]
    ds, backbone = plan.dataset, built.model.encoder
    val = _split(plan, backbone, "val", None)
    assert len(val.images) == N_VAL * DEPTH
    # a kept slice is what the frozen extraction feeds the backbone for that slice (float16 aside)
    case = plan.seg["val"].cases[1]
    volume = ds.load_image(case.record)
    for k in (0, 13, DEPTH - 1):
        x, row = val.images[case.rows.start + k]
        assert row == case.rows.start + k
        torch.testing.assert_close(x, backbone.preprocess(volume[k]), atol=1e-2, rtol=0)
    # predictions come back as whole volumes; the selected epoch's validation Dice is theirs
    preds, _ = predict_masks(built, val, 16, torch.device("cpu"), amp=False)
    assert [p.shape for p in preds] == [m.shape for m in plan.seg["val"].masks] == [(DEPTH,) * 3] * N_VAL
    sel = rows[0].selected
    assert sel["val_dice"] == max(h["val_score"] for h in sel["history"])
    assert split_dice(preds, plan.seg["val"].masks, 3) == pytest.approx(sel["val_dice"], abs=1e-12)


def test_killed_3d_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # augmentation on: resuming must replay the slice-and-mask draws too
    opts = {"bitfit": seg_options("bitfit", epochs=2, augment=True)}
    kill_then_resume(tmp_path, monkeypatch, "bitfit", opts, 1, dataset=DATASET)


def test_cli_trains_on_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["eval", "--backbone", BACKBONE, "--dataset", DATASET, "--protocol", "bitfit"]
    args += ["--out", str(out), "--json", "--set", "bitfit.epochs=1", "--bootstrap", "50"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["test"] == {"n": N_TEST, "rows": N_TEST * DEPTH}
    rows = summary["rows"]
    assert {r["metric"] for r in rows} == METRICS and {r["protocol"] for r in rows} == {"bitfit"}
    for r in rows:
        assert r["n_test"] == N_TEST and r["hparams"]["cases"] == "volume"
        assert r["ci_method"] == "patient bootstrap x50, percentile 95%"
    dice = next(r for r in rows if r["metric"] == "dice_macro")
    assert 0.0 <= dice["ci_low"] <= dice["value"] <= dice["ci_high"] <= 1.0
    with ResultStore(out) as store:
        assert len(store.rows()) == len(rows)


def test_3d_classification_is_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["eval", "--backbone", BACKBONE, "--dataset", "synthetic:cls3d", "--protocol", "lora"]
    assert main([*args, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--protocol lora: classifies 2D images" in err and len(err.splitlines()) == 1
    assert not out.exists()
