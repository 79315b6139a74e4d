"""End-to-end CLI behaviour: the spine's acceptance path and its error contract."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from radprobe.cli import main

EVAL = ["eval", "--backbone", "test:vit-tiny", "--dataset", "synthetic:cls2d-multiclass", "--protocol", "knn"]


def _run(capsys, args):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_writes_rows_then_hits_the_cache(tmp_path, capsys):
    run_dir = tmp_path / "x"
    code, out, _ = _run(capsys, [*EVAL, "--out", str(run_dir), "--json", "--bootstrap", "200"])
    assert code == 0
    first = json.loads(out)
    assert first["cache_hit"] is False
    assert {r["metric"] for r in first["rows"]} >= {"accuracy", "balanced_accuracy", "auroc_macro"}
    acc = next(r for r in first["rows"] if r["metric"] == "accuracy")
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert acc["selected"]["k"] in (10, 20, 100, 200)
    assert acc["env"]["feature_precision"] == "fp32" and acc["env"]["device"] == "cpu"
    # the stored value is the metric of the stored test predictions
    import numpy as np
    from sklearn.metrics import accuracy_score

    pred = np.load(run_dir / "predictions" / f"{acc['eval_key']}.npz")
    assert len(pred["labels"]) == acc["n_test"] == acc["n"]
    assert np.isclose(acc["value"], accuracy_score(pred["labels"], pred["scores"].argmax(1)))
    n_rows = sqlite3.connect(run_dir / "results.db").execute("select count(*) from results").fetchone()[0]
    assert n_rows == len(first["rows"])

    code, out, _ = _run(capsys, [*EVAL, "--out", str(run_dir), "--json", "--bootstrap", "200"])
    second = json.loads(out)
    assert code == 0 and second["cache_hit"] is True
    assert all(s["cache_hit"] for s in second["splits"].values())
    assert [r["value"] for r in second["rows"]] == [r["value"] for r in first["rows"]]
    # same evaluation again replaces its rows instead of duplicating them
    n_rows2 = sqlite3.connect(run_dir / "results.db").execute("select count(*) from results").fetchone()[0]
    assert n_rows2 == n_rows

    code, out, _ = _run(capsys, ["results", str(run_dir), "--format", "json"])
    assert code == 0 and len(json.loads(out)) == n_rows
    code, out, _ = _run(capsys, ["results", str(run_dir), "--format", "md"])
    assert code == 0 and out.startswith("| backbone |") and "knn" in out
    code, _, _ = _run(
        capsys, ["results", str(run_dir), "--format", "csv", "--output", str(tmp_path / "r.csv")]
    )
    assert code == 0 and (tmp_path / "r.csv").read_text().count("\n") == n_rows + 1


def test_corrupt_cache_is_rebuilt_through_eval(tmp_path, capsys):
    run_dir = tmp_path / "x"
    code, out, _ = _run(capsys, [*EVAL, "--out", str(run_dir), "--json", "--bootstrap", "0"])
    first = json.loads(out)
    path = first["splits"]["test"]["path"]
    arr = next(p for p in __import__("pathlib").Path(path).glob("cls.npy"))
    arr.write_bytes(arr.read_bytes()[:-10])
    code, out, _ = _run(capsys, [*EVAL, "--out", str(run_dir), "--json", "--bootstrap", "0"])
    second = json.loads(out)
    assert code == 0
    assert second["splits"]["test"]["cache_hit"] is False
    assert second["splits"]["train"]["cache_hit"] is True
    assert [r["value"] for r in second["rows"]] == [r["value"] for r in first["rows"]]


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--backbone", "nope-model"], "nope-model"),
        (["--dataset", "synthetic:nope"], "nope"),
        (["--dataset", "csv:/does/not/exist.csv"], "/does/not/exist.csv"),
        (["--protocol", "knn,bogus"], "bogus"),
        (["--weights", "/does/not/exist.safetensors"], "/does/not/exist.safetensors"),
        (["--device", "tpu"], "tpu"),
        (["--set", "knn.bogus=1"], "bogus"),
        (["--set", "linear.epochs=3"], "linear"),
        (["--set", "nonsense"], "nonsense"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, culprit):
    base = {"--backbone": "test:vit-tiny", "--dataset": "synthetic:cls2d-multiclass", "--protocol": "knn"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    run_dir = tmp_path / "x"
    argv = ["eval", *[x for kv in base.items() for x in kv], "--out", str(run_dir)]
    code, _out, err = _run(capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], err
    assert "Traceback" not in err
    assert not run_dir.exists()


def test_results_on_missing_run_dir(tmp_path, capsys):
    code, _, err = _run(capsys, ["results", str(tmp_path / "none")])
    assert code == 2 and "results.db" in err


def test_console_script_exit_code_and_debug_traceback(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "radprobe.cli",
        "eval",
        "-b",
        "nope",
        "-d",
        "synthetic:cls2d-binary",
        "-o",
        str(tmp_path / "y"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "nope" in p.stderr
    p = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_backbones_json_lists_the_zoo(capsys):
    code, out, _ = _run(capsys, ["backbones", "--json"])
    names = {r["name"] for r in json.loads(out)}
    assert code == 0
    for required in ("test:vit-tiny", "test:cnn-tiny", "dinov2-s", "dinov2-g", "rad-dino", "biomedclip"):
        assert required in names


def test_datasets_and_data_check(capsys):
    code, out, _ = _run(capsys, ["datasets", "--json"])
    assert code == 0 and "synthetic:cls2d-multiclass" in {r["spec"] for r in json.loads(out)}
    code, out, _ = _run(capsys, ["data", "check", "synthetic:cls2d-multiclass", "--json"])
    assert code == 0 and [p for p in json.loads(out) if p["severity"] == "error"] == []


def test_compare_two_backbones_in_one_run(tmp_path, capsys):
    run_dir = tmp_path / "c"
    for b in ("test:vit-tiny", "test:cnn-tiny"):
        argv = [
            "eval",
            "-b",
            b,
            "-d",
            "synthetic:cls2d-binary",
            "-p",
            "knn",
            "-o",
            str(run_dir),
            "--bootstrap",
            "0",
        ]
        assert main([*argv, "--json"]) == 0
    capsys.readouterr()
    code, out, _ = _run(
        capsys,
        [
            "compare",
            str(run_dir),
            "--a",
            "test:vit-tiny",
            "--b",
            "test:cnn-tiny",
            "--bootstrap",
            "200",
            "--json",
        ],
    )
    res = json.loads(out)
    assert code == 0 and res["metric"] == "auroc"
    assert abs(res["diff"] - (res["a"] - res["b"])) < 1e-12
    assert res["ci_low"] <= res["diff"] <= res["ci_high"] and 0 < res["p_value"] <= 1
    code, _, err = _run(capsys, ["compare", str(run_dir), "--a", "test:vit-tiny", "--b", "nope"])
    assert code == 2 and "nope" in err


def test_rows_name_the_precision_their_features_were_computed_in():
    """Rows read it from the cache entries (CUDA extractions are bf16), not from this process."""
    from types import SimpleNamespace

    from radprobe.core.runtime import env_info
    from radprobe.features.cache import FeatureSet

    def precision(meta: dict) -> str:
        return FeatureSet.precision.fget(SimpleNamespace(meta=meta))  # type: ignore[attr-defined]

    bf16 = precision({"precision": "bf16-autocast"})
    assert env_info("cpu", feature_precisions=[bf16] * 3)["feature_precision"] == "bf16-autocast"
    mixed = env_info("cpu", feature_precisions=[precision({}), bf16])
    assert mixed["feature_precision"] == "bf16-autocast/fp32"  # entries written before the field: fp32
    assert "feature_precision" not in env_info("cpu")  # nothing cached (a U-Net trains on images)


def test_eval_prints_each_metric_warning_once(tmp_path):
    """A class absent from the test split is left out of the macro AUROC, and the user is told."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,label,patient,split"]
    for i in range(40):
        split = "train" if i < 24 else "val" if i < 32 else "test"
        label = "abc"[i % 3] if split != "test" else "ab"[i % 2]  # no test case of class c
        Image.fromarray((rng.random((32, 32)) * 255).astype("uint8")).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{label},p{i},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    exe = str(Path(sys.executable).parent / "radprobe")
    res = subprocess.run(
        [exe, "eval", "-b", "test:vit-tiny", "-d", f"csv:{tmp_path / 'm.csv'}", "-p", "knn,logreg",
         "-o", str(tmp_path / "run"), "--bootstrap", "10", "--set", "logreg.cs=[1.0]"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("warning:")]
    assert "warning: knn: class 2 has no positives; left out of auroc_macro" in lines
    assert "warning: logreg: class 2 has no positives; left out of auroc_macro" in lines
    assert len(lines) == len(set(lines))
