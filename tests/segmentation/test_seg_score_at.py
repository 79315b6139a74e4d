"""``score_at="input"`` (the paper presets): validation and test scored at the input resolution against
the masks resized nearest-exact, as Baharoon et al.'s eval transforms resize them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radprobe.data import load_dataset
from radprobe.errors import OptionError
from radprobe.protocols import registry
from radprobe.run.evaluate import EvalConfig, evaluate
from radprobe.segmentation.data import at_input, load_split, to_original
from radprobe.segmentation.train import upsampling


def test_at_input_scores_against_the_nearest_exact_targets_with_scaled_spacing(volumes) -> None:
    ds = load_dataset(f"folder:{volumes(n=3, shape=(20, 24, 12))}")
    split = load_split(ds, "test", 16)
    small = at_input(split)
    assert small.at_input and small.original is split and not split.at_input
    # the released target transform: Resize((S, S), NEAREST_EXACT) of each slice
    first = torch.from_numpy(split.masks[0].astype(np.float32))[:, None]
    want = F.interpolate(first, (16, 16), mode="nearest-exact")[:, 0].numpy()
    np.testing.assert_array_equal(small.masks[0], want.astype(small.masks[0].dtype))
    for case, big, mask in zip(small.cases, split.cases, small.masks, strict=True):
        assert case.shape == (*big.shape[:-2], 16, 16) and mask.shape == case.shape
        assert big.spacing is not None and case.spacing is not None
        h, w = big.shape[-2:]
        assert case.spacing == pytest.approx(
            (big.spacing[0], big.spacing[1] * h / 16, big.spacing[2] * w / 16)
        )
    back_split, back = to_original(small, small.masks)
    assert back_split is split
    for pred, case in zip(back, split.cases, strict=True):
        assert pred.shape == case.shape


def test_heads_scored_at_input_upsample_as_they_train() -> None:
    from radprobe.segmentation.heads import LinearHead
    from radprobe.segmentation.updecoder import UpDecoder

    split = type("S", (), {"at_input": True})()
    plain = type("S", (), {"at_input": False})()
    assert upsampling(UpDecoder([0, 0, 0, 0, 1], 32, 3), split) == "bicubic"  # utils.py:125
    assert upsampling(LinearHead(1, 8, 3), split) == "bilinear"
    assert upsampling(UpDecoder([0, 0, 0, 0, 1], 32, 3), plain) == "bilinear"


def test_paper_preset_scores_at_input_and_says_so(easy2d, tmp_path: Path) -> None:
    root = easy2d(n=12, size=64)
    rows = {}
    for at in ("input", "original"):
        cfg = EvalConfig(
            backbone="test:vit-tiny",
            dataset=f"folder:{root}",
            protocols=["seg-linear"],
            out=tmp_path / at,
            n_boot=0,
            resolution=32,
            progress=False,
            options={
                "seg-linear": {"preset": "paper", "epochs": 1, "lrs": [0.1], "overlays": 1, "score_at": at}
            },
        )
        rows[at] = {r["metric"]: r for r in evaluate(cfg).rows}
    assert rows["input"]["dice_macro"]["hparams"]["scored_at"].startswith("input resolution 32 px")
    assert "scored_at" not in rows["original"]["dice_macro"]["hparams"]
    assert rows["input"]["dice_macro"]["value"] != rows["original"]["dice_macro"]["value"]
    assert list((tmp_path / "input" / "overlays").glob("*.png"))  # outputs at the cases' own size


def test_score_at_is_checked_and_set_by_the_preset() -> None:
    assert registry.check_options("seg-linear", {"preset": "paper"})["score_at"] == "input"
    assert registry.check_options("seg-unet", {"preset": "paper"})["score_at"] == "input"
    assert registry.check_options("seg-linear", {})["score_at"] == "original"
    assert (
        registry.check_options("seg-linear", {"preset": "paper", "score_at": "original"})["score_at"]
        == "original"
    )
    with pytest.raises(
        OptionError, match=r"seg-linear\.score_at='half': expected 'original' or 'input'"
    ) as e:
        registry.check_options("seg-linear", {"score_at": "half"})
    assert "\n" not in str(e.value)
