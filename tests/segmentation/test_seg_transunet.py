"""TransUNet: shapes and token grid, a short overfit through the segmentation training loop, its
options, and ``radprobe eval -p seg-transunet`` rows named like the seg-unet ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from seg_helpers import shapes

from radprobe.cli import main
from radprobe.errors import RadprobeError
from radprobe.metrics.segmentation import split_dice
from radprobe.protocols import registry
from radprobe.segmentation.train import TrainSettings, image_fetch, train
from radprobe.segmentation.transunet import TransUNet

TINY = {
    "widths": (8, 8, 16, 16),
    "vit_dim": 32,
    "vit_depth": 1,
    "vit_heads": 2,
    "decoder_channels": (16, 16, 8, 8),
}


@pytest.mark.parametrize(("h", "w"), [(64, 64), (32, 48), (50, 37), (16, 16)])
def test_logits_have_the_input_size_and_tokens_the_16_pixel_grid(h, w):
    model = TransUNet(3, 4, 64, **TINY).eval()
    seen = []
    model.blocks.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    assert out.shape == (2, 4, h, w)
    assert seen == [(2, -(-h // 16) * -(-w // 16), 32)]  # one token per 16x16 pixels (sides padded)


def test_every_part_learns_and_skips_reach_the_decoder():
    model = TransUNet(1, 3, 32, **TINY)
    model(torch.rand(2, 1, 32, 32)).logsumexp(1).mean().backward()
    for name in (
        "cnn.root.0.weight",
        "cnn.stages.0.0.conv1.0.weight",
        "pos",
        "blocks.0.attn.qkv.weight",
        "head.weight",
    ):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and float(g.abs().sum()) > 0, name
    # decoder blocks read upsampled features concatenated with the 1/8, 1/4, 1/2 skips, none at full size
    ins = [b.convs[0][0].in_channels for b in model.decoder]
    assert ins == [32 + 16, 16 + 8, 16 + 8, 8 + 0]  # head channels 2 x 16, then skips


def test_overfits_a_tiny_training_set_through_the_training_loop():
    torch.manual_seed(0)
    images, masks = shapes(8, 32, 0)
    model = TransUNet(1, 3, 32, **TINY, mean=float(images.mean()), std=float(images.std()))
    fetch = image_fetch(images, "cpu")
    rows = np.arange(8)
    train(model, fetch, masks, rows, TrainSettings(3e-3, 0, 80, 8, 0.0, 0))
    with torch.no_grad():
        preds = list(model(fetch(rows)).argmax(1).numpy())
    assert split_dice(preds, list(masks), 3) > 0.9


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"widths": [8, 8]}, "seg-transunet.widths"),
        ({"decoder_channels": 16}, "seg-transunet.decoder_channels"),
        ({"vit_dim": 30, "vit_heads": 4}, "divisible by vit_heads"),
        ({"vit_depth": 0}, "seg-transunet.vit_depth"),
        ({"vit_heads": 2.5}, "seg-transunet.vit_heads"),
    ],
)
def test_bad_options_are_one_line(options, culprit):
    with pytest.raises(RadprobeError) as e:
        registry.check_options("seg-transunet", options)
    assert culprit in str(e.value) and "\n" not in str(e.value)


def test_options_resolve_with_their_defaults():
    opts = registry.check_options("seg-transunet", {"vit_dim": 64.0, "vit_heads": 4, "widths": [4, 8, 8, 16]})
    assert (
        opts["vit_dim"] == 64
        and opts["widths"] == [4, 8, 8, 16]
        and opts["decoder_channels"] == [128, 64, 32, 16]
    )
    assert opts["nsd_tolerance_mm"] is None


def test_eval_rows_are_named_like_seg_unet(tmp_path, capsys):
    sets = {
        "seg-transunet": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
            "overlays": 1,
        },
        "seg-unet": {"channels": [4, 8], "res_units": 0, "overlays": 1},
    }
    args = [
        f"{p}.{k}={json.dumps(v)}"
        for p, o in sets.items()
        for k, v in {**o, "epochs": 0, "min_steps": 2, "lrs": 0.001}.items()
    ]
    out = tmp_path / "run"
    sets_args = [x for a in args for x in ("--set", a)]
    code = main(
        ["eval", "-b", "test:vit-tiny", "-d", "synthetic:seg2d", "-p", "seg-transunet,seg-unet",
         "--out", str(out), "--json", "--bootstrap", "20", *sets_args]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = json.loads(captured.out)["rows"]
    tu = [r for r in rows if r["protocol"] == "seg-transunet"]
    unet = [r for r in rows if r["protocol"] == "seg-unet"]
    assert {r["metric"] for r in tu} == {r["metric"] for r in unet} and "nsd@2px_macro" in {
        r["metric"] for r in tu
    }
    r = tu[0]
    assert r["backbone"] == "radprobe:transunet" and r["weights_digest"] == "random-init:seed0"
    assert r["feature_keys"] == [] and r["trainable_params"] == r["params"] > 0
    assert r["hparams"]["vit_depth"] == 1 and r["hparams"]["widths"] == [8, 8, 16, 16]
    assert len({x["eval_key"] for x in tu}) == 1 and r["eval_key"] != unet[0]["eval_key"]
    assert len(list((tmp_path / "run" / "overlays").glob("radprobe_transunet__seg-transunet__*.png"))) == 1


def test_volumes_are_segmented_slice_wise_and_scored_per_volume(volumes, tmp_path):
    from radprobe.run.evaluate import EvalConfig, evaluate

    opts = {**{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}, "overlays": 0}
    cfg = EvalConfig(
        backbone="test:vit-tiny",
        dataset=f"nifti:{volumes(n=4)}",
        protocols=["seg-transunet"],
        out=tmp_path / "run",
        n_boot=0,
        progress=False,
        options={"seg-transunet": {**opts, "epochs": 0, "min_steps": 2, "lrs": 0.001}},
    )
    rows = {r["metric"]: r for r in evaluate(cfg).rows}
    r = rows["dice_macro"]
    assert r["hparams"]["cases"] == "volume" and r["hparams"]["hd95_unit"] == "mm"
    assert r["backbone"] == "radprobe:transunet" and r["n_test"] >= 1
    assert "nsd@2mm_blob" in rows and "iou_pooled_paper_macro" in rows
