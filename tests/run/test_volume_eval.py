"""3D classification end to end: per-slice features pooled per volume (mean / max) and attention-MIL."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from radprobe.cli import main
from radprobe.data.presets.replicas import make_replica

MIL_FAST = ["--set", "mil.lrs=[0.001]", "--set", "mil.min_steps=40", "--set", "mil.epochs=1"]


def _eval(capsys, argv: list[str]) -> tuple[int, dict, str]:
    code = main([*argv, "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else {}), out.err


def test_cls3d_knn_with_max_pooling_and_mil(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls3d", "-o", str(out), "--bootstrap", "20"]
    code, summary, err = _eval(capsys, [*base, "-p", "knn,mil", "--volume-pool", "max", *MIL_FAST])
    assert code == 0, err
    rows = summary["rows"]
    assert {r["protocol"] for r in rows} == {"knn", "mil"}
    test = summary["splits"]["test"]
    assert test["n_slices"] > test["n"] == rows[0]["n_test"]  # slices cached, volumes scored
    knn_rows = [r for r in rows if r["protocol"] == "knn"]
    mil_rows = [r for r in rows if r["protocol"] == "mil"]
    assert all(r["hparams"]["volume_pool"] == "max" for r in knn_rows)
    assert all("volume_pool" not in r["hparams"] for r in mil_rows)
    assert mil_rows[0]["selected"]["attention_params"] > 0
    assert all(r["ci_low"] is not None for r in rows)
    # the stored MIL value is the metric of its stored per-volume predictions
    auroc = next(r for r in mil_rows if r["metric"] == "auroc")
    pred = np.load(out / "predictions" / f"{auroc['eval_key']}.npz")
    assert len(pred["labels"]) == test["n"]
    assert auroc["value"] == pytest.approx(roc_auc_score(pred["labels"], pred["scores"][:, 1]))

    # mean pooling reuses the same per-slice cache and writes rows of its own
    code, again, err = _eval(capsys, [*base, "-p", "knn"])
    assert code == 0, err
    assert again["cache_hit"] is True
    assert {r["hparams"]["volume_pool"] for r in again["rows"]} == {"mean"}
    assert not {r["eval_key"] for r in again["rows"]} & {r["eval_key"] for r in knn_rows}
    n = sqlite3.connect(out / "results.db").execute("select count(*) from results").fetchone()[0]
    assert n == len(rows) + len(again["rows"])


def test_sars_replica_runs_knn_max_and_mil(tmp_path, capsys):
    spec = make_replica("sars-cov-2-ct", tmp_path / "data")
    out = tmp_path / "run"
    argv = ["eval", "-b", "test:vit-tiny", "-d", spec, "-o", str(out), "--bootstrap", "20"]
    code, summary, err = _eval(capsys, [*argv, "-p", "knn,mil", "--volume-pool", "max", *MIL_FAST])
    assert code == 0, err
    assert {r["protocol"] for r in summary["rows"]} == {"knn", "mil"}
    assert all(r["n_test"] == summary["splits"]["test"]["n"] for r in summary["rows"])


def test_mean_pooling_of_slices_equals_the_averaged_volume_entry(tmp_path):
    """Mean pooling keeps the old one-row-per-volume features (slice features averaged)."""
    from radprobe.backbones import create_backbone
    from radprobe.data import load_dataset
    from radprobe.features.cache import FeatureCache, FeatureSpec
    from radprobe.features.extract import extract_split, pool_volumes

    ds = load_dataset(make_replica("sars-cov-2-ct", tmp_path / "data"))
    bb = create_backbone("test:vit-tiny")
    cache, spec = FeatureCache(tmp_path / "cache"), FeatureSpec(n_blocks=1)
    averaged, _ = extract_split(bb, ds, "train", cache, spec)
    slices, _ = extract_split(bb, ds, "train", cache, spec, per_slice=True)
    pooled = pool_volumes(slices, "mean")
    np.testing.assert_allclose(pooled["cls"], averaged.cls, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled["blocks"], averaged.blocks, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-d", "synthetic:cls2d-binary", "-p", "mil"], "--protocol mil: needs a 3D dataset"),
        (["-d", "synthetic:cls2d-binary", "-p", "knn", "--volume-pool", "max"], "applies to 3D datasets"),
        (["-d", "synthetic:cls3d", "-p", "knn", "--volume-pool", "median"], "expected one of mean, max"),
    ],
)
def test_bad_volume_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    code = main(["eval", "-b", "test:vit-tiny", "-o", str(tmp_path / "r"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_study_volume_pool_reaches_the_rows_and_the_job_keys(tmp_path):
    import yaml

    from radprobe.results.store import ResultStore
    from radprobe.run.study import expand, load_study, run_study

    base = {
        "name": "vol",
        "backbones": ["test:vit-tiny"],
        "datasets": ["synthetic:cls3d"],
        "protocols": {"knn": {"ks": [3]}},
        "bootstrap": 10,
    }
    keys = {}
    for pool in ("mean", "max"):
        path = tmp_path / f"{pool}.yaml"
        path.write_text(yaml.safe_dump({**base, "volume_pool": pool}))
        study = load_study(str(path))
        keys[pool] = expand(study)[0].key
        run_dir = tmp_path / pool
        assert run_study(study, run_dir, progress=False, log=lambda m: None).failed == 0
        with ResultStore(run_dir, create=False) as store:
            rows = store.rows()
        assert rows and all(r["hparams"]["volume_pool"] == pool for r in rows)
    assert keys["mean"] != keys["max"]
    # a study that never names the option keeps the keys it always had
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(base))
    assert expand(load_study(str(path)))[0].key == keys["mean"]
