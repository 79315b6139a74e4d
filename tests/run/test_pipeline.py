"""The one runner: families mixed in one call, bad fits refused before extraction, the Python surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import radprobe
from radprobe.errors import RadprobeError

EXE = str(Path(sys.executable).parent / "radprobe")
FAST = [
    "--set",
    "knn.ks=[5]",
    "--set",
    "linear.epochs=1",
    "--set",
    "linear.lrs=[0.01]",
    "--set",
    "linear.min_iterations=20",
    "--set",
    "finetune.epochs=1",
    "--set",
    "finetune.patience=0",
]
SAME = ("protocol", "metric", "value", "ci_low", "ci_high", "ci_method", "hparams", "n", "eval_key")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=600)


def _rows(run: Path) -> list[dict]:
    df = radprobe.results(run)
    return sorted(
        ({k: r[k] for k in SAME} for r in df.to_dict("records")), key=lambda r: (r["protocol"], r["metric"])
    )


def test_frozen_and_trained_in_one_call_give_the_rows_of_separate_calls(tmp_path: Path) -> None:
    common = ["-b", "test:vit-tiny", "-d", "synthetic:cls2d-multilabel", "--bootstrap", "20", *FAST]
    one = _cli("eval", *common, "-p", "knn,linear,finetune", "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    assert _cli("eval", *common[:-4], "-p", "knn,linear", "-o", str(tmp_path / "two")).returncode == 0
    ft = ["--set", "finetune.epochs=1", "--set", "finetune.patience=0"]
    res = _cli("eval", *common[:6], *ft, "-p", "finetune", "-o", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = _rows(tmp_path / "one")
    assert {r["protocol"] for r in rows} == {"knn", "linear", "finetune"}
    assert rows == _rows(tmp_path / "two")


def test_knn_linear_seg_linear_and_lora_in_one_call_on_a_dataset_with_labels_and_masks(
    tmp_path: Path,
) -> None:
    res = _cli(
        "eval",
        "-b",
        "test:vit-tiny",
        "-d",
        "synthetic:seg2d-labelled",
        "-p",
        "knn,linear,seg-linear,lora",
        "-o",
        str(tmp_path),
        "--bootstrap",
        "10",
        *FAST[:8],
        "--set",
        "seg-linear.epochs=1",
        "--set",
        "seg-linear.min_steps=2",
        "--set",
        "seg-linear.lrs=[0.01]",
        "--set",
        "seg-linear.overlays=0",
        "--set",
        "lora.epochs=1",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    df = radprobe.results(tmp_path)
    tasks = df.groupby("protocol")["task"].agg(set).to_dict()
    # frozen and trained protocols read the labels; seg-linear reads the masks of the same images
    assert tasks == {
        "knn": {"binary"},
        "linear": {"binary"},
        "lora": {"binary"},
        "seg-linear": {"segmentation"},
    }
    assert set(df[df.protocol == "seg-linear"].metric) >= {"dice_macro", "dice_lesion", "dice_organ"}


def test_a_dataset_with_labels_and_masks_has_two_views(tmp_path: Path) -> None:
    from radprobe.data import load_dataset

    ds = load_dataset("synthetic:seg2d-labelled")
    assert ds.kinds() == ("classification", "segmentation")
    seg = ds.view("segmentation")
    assert (seg.task, seg.classes) == ("segmentation", ("background", "organ", "lesion"))
    assert [r.split for r in seg.records] == [r.split for r in ds.records]  # the same splits
    assert seg.manifest_digest() != ds.manifest_digest()  # features and keys of each view stay apart
    labels = ds.labels(ds.records)
    lesion = np.asarray([int((seg.load_mask(r) == 2).any()) for r in ds.records])
    assert np.array_equal(labels, lesion)  # the label says what the mask shows
    with pytest.raises(RadprobeError, match="no segmentation view"):
        load_dataset("synthetic:cls2d-binary").view("segmentation")


@pytest.mark.parametrize(
    ("dataset", "protocols", "needle"),
    [
        ("synthetic:cls2d-binary", "knn,seg-linear", "--protocol seg-linear: needs a segmentation dataset"),
        ("synthetic:seg2d", "seg-linear,knn", "--protocol knn: needs a classification dataset"),
        ("synthetic:cls2d-binary", "knn,mil", "--protocol mil: needs a 3D dataset"),
        ("synthetic:cls3d", "knn,lora", "--protocol lora: classifies 2D images"),
    ],
)
def test_a_protocol_that_does_not_fit_is_one_line_before_any_extraction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, protocols: str, needle: str
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RADPROBE_CACHE", str(cache))
    res = _cli("eval", "-b", "test:vit-tiny", "-d", dataset, "-p", protocols, "-o", str(tmp_path / "run"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and dataset in lines[0], res.stderr
    assert not (tmp_path / "run" / "results.db").exists()
    assert not list((cache / "features").rglob("*.npy")) if (cache / "features").exists() else True


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("knn.ks=0", "--set knn.ks=0: expected a value >= 1"),
        ("knn.ks=-5", "--set knn.ks=-5: expected a value >= 1"),
        ("linear.epochs=0", "--set linear.epochs=0: expected a value >= 1"),
        ("fewshot.shots=-2", "--set fewshot.shots=-2: expected a value >= 1"),
        ("lora.rank=0", "--set lora.rank=0"),
        ("seg-linear.lrs=[0]", "--set seg-linear.lrs"),
    ],
)
def test_option_out_of_range_is_refused_before_anything_runs(
    tmp_path: Path, option: str, needle: str
) -> None:
    proto = option.split(".")[0]
    res = _cli(
        "eval",
        "-b",
        "test:vit-tiny",
        "-d",
        "synthetic:cls2d-binary",
        "-p",
        proto,
        "--set",
        option,
        "-o",
        str(tmp_path / "run"),
    )
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "results.db").exists()


def test_python_evaluate_gives_the_cli_rows(tmp_path: Path) -> None:
    args = [
        "-b",
        "test:vit-tiny",
        "-d",
        "synthetic:cls2d-binary",
        "-p",
        "knn,logreg",
        "--bootstrap",
        "20",
        "--set",
        "knn.ks=[5,10]",
        "--set",
        "logreg.cs=[0.1,1.0]",
        "-o",
        str(tmp_path / "cli"),
    ]
    assert _cli("eval", *args).returncode == 0
    summary = radprobe.evaluate(
        backbone="test:vit-tiny",
        dataset="synthetic:cls2d-binary",
        protocols=["knn", "logreg"],
        out=tmp_path / "api",
        n_boot=20,
        options={"knn": {"ks": [5, 10]}, "logreg": {"cs": [0.1, 1.0]}},
    )
    assert len(summary.rows) == len(radprobe.results(tmp_path / "api")) > 0
    assert _rows(tmp_path / "api") == _rows(tmp_path / "cli")
    df = radprobe.results(tmp_path / "api", protocol="knn")
    assert set(df["protocol"]) == {"knn"} and {"value", "ci_low", "eval_key", "hparams"} <= set(df.columns)


def test_python_surface_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(RadprobeError, match="unknown setting 'bogus'"):
        radprobe.evaluate("test:vit-tiny", "synthetic:cls2d-binary", ["knn"], tmp_path, bogus=1)
    with pytest.raises(RadprobeError, match=r"no results\.db"):
        radprobe.results(tmp_path)
    with pytest.raises(RadprobeError, match="unknown protocol 'nope'"):
        radprobe.run_study(
            {"backbones": ["test:vit-tiny"], "datasets": ["synthetic:cls2d-binary"], "protocols": ["nope"]},
            tmp_path / "s",
        )
