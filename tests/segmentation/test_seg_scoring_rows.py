"""Scoring options end to end: NSD in mm on NIfTI volumes (tolerance in the metric name, result key
unchanged), pooled rows beside the per-case ones, and the option listed by ``radprobe protocols``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radprobe.metrics.segmentation import CaseTable
from radprobe.protocols import registry
from radprobe.results.predictions import predictions_path
from radprobe.run.evaluate import EvalConfig, evaluate

UNET = {"lrs": 0.003, "epochs": 0, "min_steps": 4, "channels": [4, 8], "res_units": 0, "overlays": 0}


def _rows(root: Path, out: Path, **extra: object) -> list[dict]:
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"nifti:{root}",
        protocols=["seg-unet"],
        out=out,
        n_boot=20,
        progress=False,
        options={"seg-unet": {**UNET, **extra}},
    )
    return evaluate(cfg).rows


def test_nsd_in_mm_on_volumes_names_its_tolerance_and_keeps_the_key(volumes, tmp_path):
    root = volumes(n=6)
    default = {r["metric"]: r for r in _rows(root, tmp_path / "a")}
    tight = {r["metric"]: r for r in _rows(root, tmp_path / "b", nsd_tolerance_mm=1.5)}
    assert default["hd95_macro"]["hparams"]["hd95_unit"] == "mm"
    assert {"nsd@2mm_macro", "nsd@2mm_blob", "dice_pooled_macro", "iou_pooled_paper_block"} <= set(default)
    assert "nsd@1.5mm_macro" in tight and "nsd@2mm_macro" not in tight
    # a scoring option: the same training, the same key, the same per-case rows
    assert tight["dice_macro"]["eval_key"] == default["dice_macro"]["eval_key"]
    assert tight["dice_macro"]["value"] == default["dice_macro"]["value"]
    assert "nsd_tolerance_mm" not in tight["dice_macro"]["hparams"]
    for c in ("blob", "block"):
        assert tight[f"nsd@1.5mm_{c}"]["value"] <= default[f"nsd@2mm_{c}"]["value"]
    # the saved case table re-scores the rows, pooled metrics included
    r = tight["dice_pooled_macro"]
    table = CaseTable.load(predictions_path(tmp_path / "b", r["eval_key"]))
    assert table.value("dice_pooled_macro") == pytest.approx(r["value"])
    assert table.value("nsd@1.5mm_macro") == pytest.approx(tight["nsd@1.5mm_macro"]["value"])
    assert np.isfinite(r["ci_low"]) and r["ci_low"] <= r["value"] <= r["ci_high"]


def test_scoring_option_is_listed_and_checked_for_every_segmentation_protocol():
    for name in registry.names("segmentation"):
        opts = {o["name"]: o for o in registry.describe(name)}
        assert opts["nsd_tolerance_mm"]["default"] is None and "mm" in opts["nsd_tolerance_mm"]["help"]
        assert registry.check_options(name, {"nsd_tolerance_mm": "2.5"})["nsd_tolerance_mm"] == 2.5
