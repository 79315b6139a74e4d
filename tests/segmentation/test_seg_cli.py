"""``radprobe eval`` with the three segmentation protocols on the synthetic 2D and 3D sets."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from radprobe.cli import main

TINY = [
    "--set", "seg-linear.lrs=0.01", "--set", "seg-linear.epochs=1", "--set", "seg-linear.min_steps=4",
    "--set", "seg-decoder.lrs=0.001", "--set", "seg-decoder.epochs=0", "--set", "seg-decoder.min_steps=3",
    "--set", "seg-decoder.channels=8",
    "--set", "seg-unet.lrs=0.001", "--set", "seg-unet.epochs=0", "--set", "seg-unet.min_steps=3",
    "--set", "seg-unet.channels=[4,8,16]", "--set", "seg-unet.res_units=1",
]  # fmt: skip
PROTOCOLS = ("seg-linear", "seg-decoder", "seg-unet")


def _eval(capsys, dataset: str, out, *extra: str) -> tuple[int, dict]:
    code = main(
        [
            "eval", "--backbone", "test:vit-tiny", "--dataset", dataset, "--protocol", ",".join(PROTOCOLS),
            "--out", str(out), "--json", "--bootstrap", "50", *TINY, *extra,
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {"err": captured.err})


def _check_rows(rows: list[dict], classes: tuple[str, ...], nsd: str = "nsd@2px") -> None:
    bases = ("dice", "iou", "hd95", nsd, "dice_pooled", "iou_pooled", "iou_pooled_paper")
    expected = {f"{m}_{s}" for m in bases for s in ("macro", *classes)}
    expected |= {"dice_iou_mean", "dice_iou_mean_paper"}
    for proto in PROTOCOLS:
        mine = [r for r in rows if r["protocol"] == proto]
        assert {r["metric"] for r in mine} == expected, proto
        assert len({r["eval_key"] for r in mine}) == 1
        for r in mine:
            assert r["ci_method"] == "patient bootstrap x50, percentile 95%"
            if np.isfinite(r["value"]):
                assert r["ci_low"] <= r["value"] <= r["ci_high"], (proto, r["metric"])
            assert r["n"] == r["n_test"] and r["trainable_params"] > 0
        dice = next(r for r in mine if r["metric"] == "dice_macro")
        assert 0.0 <= dice["value"] <= 1.0
    unet = next(r for r in rows if r["protocol"] == "seg-unet")
    linear = next(r for r in rows if r["protocol"] == "seg-linear")
    assert unet["backbone"] == "monai:unet" and unet["feature_keys"] == [] and unet["params"] > 0
    assert "feature_precision" not in unet["env"] and linear["env"]["feature_precision"] == "fp32"
    assert linear["backbone"] == "test:vit-tiny" and len(linear["feature_keys"]) == 3


def test_eval_2d_all_heads(tmp_path, capsys):
    out = tmp_path / "run2d"
    code, summary = _eval(capsys, "synthetic:seg2d", out)
    assert code == 0, summary
    rows = summary["rows"]
    _check_rows(rows, ("organ", "lesion"))
    r = rows[0]
    assert r["hparams"]["cases"] == "image" and r["hparams"]["hd95_unit"] == "px"
    assert r["hparams"]["intensity"]["used"] == "image: dtype"
    assert summary["splits"]["train"]["rows"] == summary["splits"]["train"]["n"] == r["n_train"]
    n_db = sqlite3.connect(out / "results.db").execute("select count(*) from results").fetchone()[0]
    assert n_db == len(rows)
    assert len(list((out / "overlays").glob("test_vit-tiny-*__seg-*.png"))) == 6  # 3 per frozen head
    assert len(list((out / "overlays").glob("monai_unet__seg-unet__*.png"))) == 3


@pytest.mark.slow
def test_eval_3d_all_heads_per_volume(tmp_path, capsys):
    out = tmp_path / "run3d"
    extra = ["--set", "seg-linear.save_predictions=true", "--set", "seg-linear.overlays=1"]
    code, summary = _eval(capsys, "synthetic:seg3d", out, *extra)
    assert code == 0, summary
    rows = summary["rows"]
    _check_rows(rows, ("organ", "lesion"), nsd="nsd@2mm")
    r = next(r for r in rows if r["protocol"] == "seg-linear")
    assert r["hparams"]["cases"] == "volume" and r["hparams"]["axis"] == 2
    assert r["hparams"]["hd95_unit"] == "mm" and "window center 40" in r["hparams"]["intensity"]["used"]
    split = summary["splits"]["test"]
    assert r["n_test"] == split["n"] == 8 and split["rows"] == 8 * 32  # scored per volume, trained per slice
    preds = sorted(next((out / "predictions").glob("test_vit-tiny-*__seg-linear")).glob("*.nii.gz"))
    assert len(preds) == 8
    import nibabel as nib

    assert nib.load(preds[0]).shape == (32, 32, 32)
