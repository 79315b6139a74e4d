"""Frozen heads learn an easy task; few-shot rows; option and dataset validation before any write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radprobe.backbones.testing import WIDTH
from radprobe.errors import RadprobeError
from radprobe.run.evaluate import EvalConfig, evaluate
from radprobe.run.segment import seg_resolution


def _cfg(root: Path, out: Path, protocols: list[str], **options: dict) -> EvalConfig:
    return EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"folder:{root}",
        protocols=protocols,
        out=out,
        n_boot=100,
        progress=False,
        options=options,
    )


def test_linear_and_decoder_reach_dice_09_on_an_easy_task(easy2d, tmp_path):
    root = easy2d(n=60)
    cfg = _cfg(
        root,
        tmp_path / "run",
        ["seg-linear", "seg-decoder"],
        **{
            "seg-linear": {"lrs": 0.03, "epochs": 60, "min_steps": 0, "overlays": 2},
            "seg-decoder": {"lrs": "1e-2", "epochs": 25, "min_steps": 0, "channels": 16, "overlays": 0},
        },
    )
    summary = evaluate(cfg)
    dice = {r["protocol"]: r for r in summary.rows if r["metric"] == "dice_macro"}
    assert dice["seg-linear"]["value"] > 0.9, dice["seg-linear"]["value"]
    assert dice["seg-decoder"]["value"] > 0.9, dice["seg-decoder"]["value"]
    for r in dice.values():
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert r["hparams"]["resolution"] == 64 and r["hparams"]["resolution_source"].startswith("native")
        assert r["n_train"] + r["n_val"] + r["n_test"] == 60 and r["selected"]["val_dice"] > 0.9
    assert dice["seg-decoder"]["hparams"]["layers"] == [0, 0, 1, 1]
    assert dice["seg-linear"]["trainable_params"] == WIDTH * 2 + WIDTH * 3 + 3
    overlays = sorted((tmp_path / "run" / "overlays").glob("*.png"))
    assert len(overlays) == 2 and all("seg-linear" in p.name for p in overlays)


def test_fewshot_rows_per_shots(easy2d, tmp_path):
    root = easy2d(n=30)
    opts = {"lrs": 0.03, "epochs": 1, "min_steps": 5, "overlays": 0}
    cfg = _cfg(
        root, tmp_path / "run", ["seg-linear"], **{"seg-linear": {**opts, "shots": [2, 1], "repeats": 2}}
    )
    rows = evaluate(cfg).rows
    dice = [r for r in rows if r["metric"] == "dice_macro"]
    assert [(r["hparams"]["shots"], r["n_train"]) for r in dice] == [(1, 1), (2, 2)]
    for r in dice:
        assert r["ci_method"] == "t-interval over 2 draws" and len(r["selected"]["values"]) == 2
        assert np.isclose(r["value"], np.mean(r["selected"]["values"]))
        assert all(len(d["train_cases"]) == r["n_train"] for d in r["selected"]["per_draw"])
    assert len({r["eval_key"] for r in dice}) == 2
    one = _cfg(root, tmp_path / "run1", ["seg-linear"], **{"seg-linear": {**opts, "shots": 1, "repeats": 1}})
    row = next(r for r in evaluate(one).rows if r["metric"] == "dice_macro")
    assert row["ci_method"].startswith("patient bootstrap") and row["hparams"]["shots"] == 1


@pytest.mark.parametrize(
    ("protocols", "options", "culprit"),
    [
        (["seg-bogus"], {}, "seg-bogus"),
        (["seg-linear"], {"seg-linear": {"bogus": 1}}, "bogus"),
        (["seg-linear"], {"seg-decoder": {"epochs": 1}}, "seg-decoder"),
        (["seg-linear"], {"seg-linear": {"lrs": [0.1, -1]}}, "seg-linear.lrs"),
        (["seg-decoder"], {"seg-decoder": {"channels": "wide"}}, "seg-decoder.channels"),
        (["seg-unet"], {"seg-unet": {"channels": 8}}, "seg-unet.channels"),
        (["seg-linear"], {"seg-linear": {"shots": 500}}, "500-shot"),
        (["seg-linear"], {"seg-linear": {"save_predictions": "yes"}}, "save_predictions"),
        (["seg-linear"], {"seg-linear": {"epochs": 0, "min_steps": 0}}, "nothing would be trained"),
    ],
)
def test_bad_protocols_and_options_fail_before_writing(easy2d, tmp_path, protocols, options, culprit):
    root = easy2d(n=12)
    out = tmp_path / "run"
    with pytest.raises(RadprobeError) as e:
        evaluate(_cfg(root, out, protocols, **options))
    assert culprit in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_dataset_must_be_segmentation_for_segmentation_protocols(tmp_path):
    out = tmp_path / "run"
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset="synthetic:cls2d-binary",
        protocols=["seg-linear"],
        out=out,
        progress=False,
    )
    with pytest.raises(RadprobeError, match=r"seg-linear: needs a segmentation dataset.*is a binary dataset"):
        evaluate(cfg)
    cfg.protocols = ["knn", "seg-linear"]  # families mix in one call, but each must fit the dataset
    with pytest.raises(RadprobeError, match=r"seg-linear: needs a segmentation dataset"):
        evaluate(cfg)
    assert not out.exists()


def test_resolution_defaults():
    assert seg_resolution("test:vit-tiny", None) == (64, "native (small model)")
    assert seg_resolution("test:vit-tiny", 128)[0] == 128
    with pytest.raises(RadprobeError, match="patch size 8"):
        seg_resolution("test:vit-tiny", 100)
    assert seg_resolution("dinov2-s", None) == (448, "segmentation default 448")


def test_one_extraction_serves_every_head(easy2d, tmp_path):
    root = easy2d(n=12)
    tiny = {"lrs": 0.01, "epochs": 0, "min_steps": 2, "overlays": 0}
    first = evaluate(_cfg(root, tmp_path / "a", ["seg-linear"], **{"seg-linear": tiny}))
    dec = {**tiny, "channels": 8}
    second = evaluate(_cfg(root, tmp_path / "b", ["seg-decoder"], **{"seg-decoder": dec}))
    assert not first.cache_hit and second.cache_hit
    assert first.rows[0]["feature_keys"] == second.rows[0]["feature_keys"]
