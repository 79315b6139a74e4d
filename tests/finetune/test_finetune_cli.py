"""End to end through the CLI, and the validate-before-writing contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ft_helpers import fast_options, make_cfg

from radprobe.cli import main
from radprobe.errors import RadprobeError
from radprobe.finetune.data import Augment
from radprobe.finetune.options import parse_options
from radprobe.results.predictions import Predictions, predictions_path
from radprobe.run.evaluate import evaluate


def test_cli_trains_four_methods_on_multilabel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    sets = [
        "finetune.epochs=1",
        "lora.epochs=1",
        "bitfit.epochs=1",
        "vpt.epochs=1",
        "lora.rank=2",
        "vpt.tokens=4",
    ]
    args = ["eval", "--backbone", "test:vit-tiny", "--dataset", "synthetic:cls2d-multilabel"]
    args += ["--protocol", "finetune,lora,bitfit,vpt", "--out", str(out), "--json", "--device", "cpu"]
    args += ["--bootstrap", "20", "--batch-size", "32"]
    for s in sets:
        args += ["--set", s]
    code = main(args)
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = summary["rows"]
    by = {(r["protocol"], r["metric"]): r for r in rows}
    assert {p for p, _ in by} == {"finetune", "lora", "bitfit", "vpt"}
    for p in ("finetune", "lora", "bitfit", "vpt"):
        r = by[(p, "auroc_macro")]
        assert r["task"] == "multilabel" and r["num_classes"] == 4 and r["resolution"] == 64
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ci_method"].startswith("patient bootstrap")
        assert r["params"] >= r["trainable_params"] > 0 and r["imgs_per_s"] > 0
        assert r["peak_mem_mb"] > 0 and r["wall_time_s"] > 0 and r["selected"]["epochs_run"] == 1
        pred = Predictions.load(predictions_path(out, r["eval_key"]))
        assert pred.scores.shape == (r["n_test"], 4) and np.all((pred.scores >= 0) & (pred.scores <= 1))
        assert (out / "checkpoints").is_dir()
    ft_pct = by[("finetune", "auroc_macro")]["selected"]["trainable_pct"]
    lora_pct = by[("lora", "auroc_macro")]["selected"]["trainable_pct"]
    assert ft_pct == pytest.approx(100.0)
    assert lora_pct < 0.1 * ft_pct  # rank 2 on the tiny ViT: ~3.6 %
    assert by[("lora", "auroc_macro")]["hparams"]["rank"] == 2


@pytest.mark.parametrize(
    ("protocols", "options", "kw", "match"),
    [
        (["lora"], {"lora": {"rnak": 4}}, {}, r"lora\.rnak: unknown option; lora takes .*rank"),
        (["lora"], {"lora": {"rank": 0}}, {}, r"lora\.rank=0: expected a value >= 1"),
        (["lora"], {"lora": {"rank": "big"}}, {}, r"lora\.rank='big': expected an integer"),
        (["lora"], {"lora": {"rank": 2.5}}, {}, r"lora\.rank=2\.5: expected an integer"),
        (["vpt"], {"vpt": {"deep": "yes"}}, {}, r"vpt\.deep='yes': expected true or false"),
        (
            ["bitfit"],
            {"bitfit": {"pool": "max"}},
            {},
            r"bitfit\.pool='max': expected one of cls, mean, cls\+mean",
        ),
        (["bitfit"], {"lora": {"rank": 4}}, {}, r"protocol 'lora' is not being run"),
        (["lora"], {"lora": {"targets": ["nope"]}}, {}, r"no Linear or Conv2d module .* named 'nope'"),
        (
            ["partial"],
            {"partial": {"blocks": 3}},
            {},
            r"partial\.blocks=3: backbone test:vit-tiny has only 2",
        ),
        (["vpt"], {}, {"backbone": "test:cnn-tiny"}, r"vpt: needs a timm ViT backbone"),
        (["lora"], {}, {"backbone": "test:cnn-tiny"}, r"no Linear layers in its blocks"),
        (["bitfit"], {}, {"device": "tpu"}, r"'tpu': expected cpu, cuda"),
        (["bitfit", "bitfit"], {}, {}, r"listed twice"),
    ],
)
def test_bad_input_fails_before_anything_is_written(
    tmp_path: Path, protocols: list[str], options: dict[str, Any], kw: dict[str, Any], match: str
) -> None:
    out = tmp_path / "run"
    with pytest.raises(RadprobeError, match=match):
        evaluate(make_cfg(out, protocols, options, **kw))
    assert not out.exists()


def test_a_bad_trained_option_stops_frozen_protocols_of_the_same_call_before_extraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADPROBE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RadprobeError, match=r"partial\.blocks=3: backbone test:vit-tiny has only 2"):
        evaluate(make_cfg(tmp_path / "x", ["knn", "partial"], {"partial": {"blocks": 3}}))
    assert not (tmp_path / "x").exists()
    assert not list((tmp_path / "cache").rglob("*.npy"))  # knn's features were never extracted


def test_presets_and_defaults_resolve() -> None:
    paper = parse_options("lora", {"preset": "paper"}, 64)
    assert (paper.rank, paper.alpha, paper.dropout) == (48, 16.0, 0.1)
    mine = parse_options("lora", {"preset": "paper", "rank": 4}, 64)
    assert (mine.rank, mine.alpha) == (4, 16.0)  # explicit options win over the preset
    d = parse_options("finetune", {"lr": 1}, 32)
    assert d.batch_size == 32 and d.lr == 1.0 and isinstance(d.lr, float)
    assert d.backbone_lr is not None and d.backbone_lr < d.lr
    assert d.hflip is False  # laterality matters in chest X-rays
    assert parse_options("lora", {"targets": "qkv"}, 8).targets == ["qkv"]
    r = parse_options("lora", {"rank": 1.6e1, "epochs": 1e1}, 8)  # YAML's 1e1 is a float
    assert (r.rank, r.epochs) == (16, 10) and isinstance(r.rank, int)


def test_augmentation_is_seeded_conservative_and_never_flips_by_default() -> None:
    x = torch.rand(3, 32, 32)
    aug = Augment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    ident = Augment(crop_scale=1.0, rotate=0.0, intensity=0.0)
    assert torch.allclose(ident(x, torch.Generator().manual_seed(2)), x, atol=1e-5)
    flips = Augment(crop_scale=1.0, rotate=0.0, intensity=0.0, hflip=True)
    outs = [flips(x, torch.Generator().manual_seed(s)) for s in range(8)]
    assert any(torch.allclose(o, x.flip(-1), atol=1e-5) for o in outs)
    assert all(torch.allclose(o, x, atol=1e-5) or torch.allclose(o, x.flip(-1), atol=1e-5) for o in outs)


def test_class_weights_balance_the_loss() -> None:
    from radprobe.finetune.heads import class_weights

    w = class_weights(np.array([0, 0, 0, 1]), "binary", 2)
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))
    pw = class_weights(np.array([[1, 0], [0, 0], [0, 1], [0, 1]]), "multilabel", 2)
    assert torch.allclose(pw, torch.tensor([3.0, 1.0]))
    opts = {"bitfit": fast_options("bitfit", epochs=1, class_weights="balanced")}
    assert parse_options("bitfit", opts["bitfit"], 8).class_weights == "balanced"
