"""Study runner: expansion, validation errors, skip-on-rerun, and SIGKILL safety."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from radprobe.cli import main
from radprobe.errors import RadprobeError
from radprobe.run.study import expand, load_study, run_study
from radprobe.run.study_state import status

STUDY = {
    "name": "t",
    "backbones": ["test:vit-tiny", "test:cnn-tiny"],
    "datasets": ["synthetic:cls2d-binary", "synthetic:cls2d-multiclass"],
    "protocols": {
        "knn": {"ks": [5, 10]},
        "logreg": {"cs": [0.1, 1.0]},
        "linear": {"lrs": [0.01, 0.1], "min_iterations": 30, "epochs": 1},
    },
    "seeds": [0, 1],
    "bootstrap": 30,
}


def _write(tmp_path: Path, study: dict, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(study))
    return p


def _rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute(
        "select eval_key, metric, value, ci_low, ci_high, job_key from results order by eval_key, metric"
    ).fetchall()
    con.close()
    return rows


def test_expansion_and_keys(tmp_path):
    study = load_study(str(_write(tmp_path, STUDY)))
    jobs = expand(study)
    assert len(jobs) == 2 * 2 * 3 * 2
    assert len({j.key for j in jobs}) == len(jobs)
    assert expand(load_study(str(_write(tmp_path, STUDY, "again.yaml"))))[0].key == jobs[0].key
    changed = load_study(str(_write(tmp_path, STUDY)), ["protocols.knn.ks=[5, 20]"])
    assert {j.key for j in expand(changed)} != {j.key for j in jobs}


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"backbonez": []}, "backbonez: unknown key; allowed keys: name, out, data_root, backbones"),
        ({"protocols": {"knn": {"kk": 3}}}, "knn.kk: unknown option; knn takes ks"),
        (
            {"protocols": {"bogus": {}}},
            "unknown protocol 'bogus'; expected one of: knn, linear, logreg, fewshot, mil, seg-linear",
        ),
        ({"seeds": "zero"}, "seeds"),
        ({"protocols": {"lora": {"rnak": 4}}}, "lora.rnak: unknown option"),
        ({"bootstrap": -1}, "bootstrap"),
        ({"backbones": []}, "backbones"),
        ({"backbones": [{"name": "x", "weight": "y"}]}, "backbones.0.weight: unknown key"),
        ({"datasets": [{"spec": "synthetic:seg2d", "protocols": ["seg-linear"]}]}, "datasets.0.protocols"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, patch, needle):
    with pytest.raises(RadprobeError) as e:
        load_study(str(_write(tmp_path, {**STUDY, **patch})))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbones: [a\n  b: c")
    with pytest.raises(RadprobeError, match="not valid YAML at line"):
        load_study(str(bad))
    with pytest.raises(RadprobeError, match="study file not found"):
        load_study(str(tmp_path / "none.yaml"))


def test_run_then_rerun_does_nothing(tmp_path, capsys):
    study = load_study(str(_write(tmp_path, {**STUDY, "seeds": [0], "protocols": {"knn": {"ks": [5]}}})))
    run_dir = tmp_path / "run"
    first = run_study(study, run_dir, progress=False, log=lambda m: None)
    assert first.done == 4 and first.failed == 0 and first.rows > 0
    rows = _rows(run_dir / "results.db")
    second = run_study(study, run_dir, progress=False, log=lambda m: None)
    assert second.done == 0 and second.skipped == 4
    assert _rows(run_dir / "results.db") == rows
    st = status(run_dir)
    assert st["done"] == 4 and st["pending"] == 0


def test_failed_job_is_recorded_and_the_study_goes_on(tmp_path):
    study = load_study(
        str(
            _write(
                tmp_path,
                {
                    **STUDY,
                    "backbones": ["test:vit-tiny", "no-such-model"],
                    "seeds": [0],
                    "protocols": {"knn": {"ks": [5]}},
                },
            )
        )
    )
    run_dir = tmp_path / "run"
    out = run_study(study, run_dir, progress=False, log=lambda m: None)
    assert out.done == 2 and out.failed == 2
    st = status(run_dir)
    assert st["failed"] == 2 and all("no-such-model" in " ".join(f["error"]) for f in st["failed_jobs"])
    code = main(["study", "status", str(run_dir), "--json"])
    assert code == 0


def test_sigkill_midway_then_rerun_gives_the_uninterrupted_rows(tmp_path):
    study_file = _write(tmp_path, STUDY)
    env = {**os.environ, "RADPROBE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "radprobe.cli", "study", "run", str(study_file), "--json"]

    clean = tmp_path / "clean"
    subprocess.run([*cmd, "--out", str(clean)], env=env, check=True, capture_output=True)
    expected = _rows(clean / "results.db")
    assert len({r[5] for r in expected}) == 24

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if (killed / "results.db").exists():
            try:
                con = sqlite3.connect(killed / "results.db", timeout=1)
                done = con.execute("select count(*) from jobs where status='done'").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                pass
            if done >= 5:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)  # frozen first, so what is counted is what the kill leaves
    con = sqlite3.connect(killed / "results.db", timeout=30)
    done = con.execute("select count(*) from jobs where status='done'").fetchone()[0]
    con.close()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < done < 24, f"kill landed after {done} jobs"
    partial = _rows(killed / "results.db")
    assert len(partial) < len(expected)

    subprocess.run([*cmd, "--out", str(killed)], env=env, check=True, capture_output=True)
    assert _rows(killed / "results.db") == expected


def test_paper_study_plan_lists_the_matrix_and_missing_data(tmp_path, capsys):
    code = main(["study", "plan", "builtin:paper-2312.02366", "--set", f"data_root={tmp_path}", "--json"])
    import json

    plan = json.loads(capsys.readouterr().out)
    assert code == 0
    names = {j["backbone"]["name"] for j in plan["jobs"]}
    paper = {"dinov2-s", "dinov2-g", "vit-l-in21k", "resnet152", "biomedclip", "sam-l", "msn-l", "vgg19"}
    assert {f"paper:{n}" for n in paper} <= names and all(n.startswith("paper:") for n in names)
    # the paper's protocols: every preset the paper has, ML-kNN on multi-label sets, the few-shot rule
    for j in plan["jobs"]:
        ds = j["dataset"].split(":")[0]
        if j["protocol"] in ("linear", "fewshot", "finetune", "lora"):
            assert j["options"].get("preset") == "paper", j
        if j["protocol"] == "knn":
            assert (j["options"].get("preset") == "paper") == (ds in ("nih-cxr14", "chexpert")), j
        if j["protocol"] == "fewshot":
            assert j["options"]["rule"] == ("nih" if ds == "nih-cxr14" else "evenly_spaced"), j
    by_ds = {}
    for j in plan["jobs"]:
        by_ds.setdefault(j["dataset"].split(":")[0], set()).add(j["protocol"])
    assert (
        by_ds["nih-cxr14"] >= {"knn", "linear", "fewshot", "lora"} and "seg-linear" not in by_ds["nih-cxr14"]
    )
    assert by_ds["montgomery"] == {"seg-linear", "seg-updecoder", "seg-unet", "seg-transunet"}
    # one U-Net per segmentation dataset, and one more for Montgomery's few-shot curve
    assert sum(j["protocol"] == "seg-unet" for j in plan["jobs"]) == 6
    decoders = {j["backbone"]["name"] for j in plan["jobs"] if j["protocol"] == "seg-updecoder"}
    assert len(decoders) == 11 and "paper:vgg19" not in decoders  # the ViTs: it reads patch grids
    for j in plan["jobs"]:
        if j["protocol"].startswith("seg-"):
            assert j["options"]["preset"] == "paper", j
    # the linear and few-shot probes read 11 augmented views of every classification image
    ext = plan["extractions"]
    assert {e.get("train_views") for e in ext if e["dataset"].split(":")[0] == "nih-cxr14"} == {11}
    assert len([e for e in ext if e.get("train_views") == 11]) == 14 * 4  # 14 backbones x 4 datasets
    # and ML-kNN's centre-cropped features on the two multi-label sets
    cropped = {e["dataset"].split(":")[0] for e in ext if e.get("other_preprocessing") == 1}
    assert cropped == {"nih-cxr14", "chexpert"}
    assert all(not d["present"] for d in plan["datasets"])
    (tmp_path / "nih-cxr14").mkdir()
    main(["study", "plan", "builtin:paper-2312.02366", "--set", f"data_root={tmp_path}", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert [d["present"] for d in plan["datasets"]].count(True) == 1


def test_worker_processes_give_the_sequential_rows(tmp_path):
    from radprobe.run.executors import LocalExecutor

    small = {**STUDY, "seeds": [0], "protocols": {"knn": {"ks": [5]}, "logreg": {"cs": [0.1, 1.0]}}}
    study = load_study(str(_write(tmp_path, small)))
    run_study(study, tmp_path / "seq", progress=False, log=lambda m: None)
    out = run_study(study, tmp_path / "par", progress=False, log=lambda m: None, executor=LocalExecutor(2))
    assert out.done == 8 and out.failed == 0
    strip = [r[:5] for r in _rows(tmp_path / "seq" / "results.db")]
    assert [r[:5] for r in _rows(tmp_path / "par" / "results.db")] == strip


def test_scientific_notation_reads_as_a_number_everywhere(tmp_path):
    """``1e-3`` is a string to YAML 1.1 (PyYAML); study files, --set and sidecars read it as a float."""
    from radprobe.run.evaluate import parse_overrides
    from radprobe.utils import load_yaml

    assert parse_overrides(["finetune.lr=1e-3", "linear.lrs=[1e-3, 2E+2]", "logreg.cs=1e-2,10"]) == {
        "finetune": {"lr": 0.001},
        "linear": {"lrs": [0.001, 200.0]},
        "logreg": {"cs": [0.01, 10]},
    }
    study = {**STUDY, "protocols": {"linear": {"lrs": "LRS", "epochs": 1}}}
    text = yaml.safe_dump(study).replace("LRS", "[1e-3, 1e-2]")
    (tmp_path / "s.yaml").write_text(text)
    assert load_study(str(tmp_path / "s.yaml")).protocols["linear"]["lrs"] == [0.001, 0.01]
    loaded = load_study(str(tmp_path / "s.yaml"), ["protocols.linear.lrs=[5e-1]"])
    assert loaded.protocols["linear"]["lrs"] == [0.5]
    assert load_yaml("a: '1e-3'\nb: 2.0\nc: 10\nd: e5") == {"a": "1e-3", "b": 2.0, "c": 10, "d": "e5"}
    with pytest.raises(yaml.YAMLError):  # still a safe loader
        load_yaml("!!python/object/apply:os.system ['true']")


def test_protocol_option_values_are_checked_before_anything_runs(tmp_path, capsys):
    from radprobe.protocols.registry import check_options

    assert check_options("knn", {"ks": 10, "temperature": 0.1}) == {"ks": [10], "temperature": 0.1}
    assert check_options("knn", {"ks": [1e1, 20]}) == {"ks": [10, 20]}  # integral floats (1e1) are ints
    assert check_options("logreg", {"row_space": None, "cs": [1, 0.5]}) == {"row_space": None, "cs": [1, 0.5]}
    inner = {"shots": [1, 2], "inner": {"linear": {"lrs": [0.1]}}}
    assert check_options("fewshot", inner) == inner
    for opts, needle in (
        ({"ks": "abc"}, "knn.ks='abc': expected an integer"),
        ({"ks": []}, "expected at least one value"),
        ({"temperature": "hot"}, "expected a number"),
        ({"weighting": 3}, "expected a string"),
    ):
        with pytest.raises(RadprobeError, match=re.escape(needle)):
            check_options("knn", opts)
    with pytest.raises(RadprobeError, match=re.escape("linear.epochs=2.5: expected an integer")):
        check_options("linear", {"epochs": 2.5})
    # through the command line: one line, exit 2, before any feature is extracted
    args = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-p", "knn"]
    assert main([*args, "-o", str(tmp_path / "r"), "--set", "knn.ks=abc"]) == 2
    assert "expected an integer" in capsys.readouterr().err and not (tmp_path / "r").exists()
    bad = {**STUDY, "protocols": {"knn": {"ks": "abc"}}}
    with pytest.raises(RadprobeError, match="expected an integer"):
        load_study(str(_write(tmp_path, bad)))


def test_dataset_options_override_the_studys_for_that_dataset_only(tmp_path):
    study = {
        "backbones": ["test:vit-tiny"],
        "datasets": [
            {"spec": "synthetic:cls2d-binary", "options": {"knn": {"ks": [5]}}},
            "synthetic:cls2d-multiclass",
        ],
        "protocols": {"knn": {"ks": [10], "temperature": 0.1}},
    }
    jobs = expand(load_study(str(_write(tmp_path, study))))
    assert {j.dataset: j.options for j in jobs} == {
        "synthetic:cls2d-binary": {"ks": [5], "temperature": 0.1},
        "synthetic:cls2d-multiclass": {"ks": [10], "temperature": 0.1},
    }
    bad = {**study, "datasets": [{"spec": "synthetic:cls2d-binary", "options": {"knn": {"ks": [0]}}}]}
    with pytest.raises(RadprobeError, match=r"datasets\.0\.options: knn\.ks=\[0\]: expected a value >= 1"):
        load_study(str(_write(tmp_path, bad)))
    other = {**study, "datasets": [{"spec": "synthetic:cls2d-binary", "options": {"linear": {}}}]}
    with pytest.raises(
        RadprobeError, match=r"datasets\.0\.options: 'linear' is not among the study's protocols"
    ):
        load_study(str(_write(tmp_path, other)))


def test_paper_study_plan_maps_every_published_cell_of_the_paper_to_a_job(tmp_path, capsys):
    import json

    assert (
        main(["study", "plan", "builtin:paper-2312.02366", "--set", f"data_root={tmp_path}", "--json"]) == 0
    )
    plan = json.loads(capsys.readouterr().out)
    jobs = {j["job_key"]: j for j in plan["jobs"]}
    cells = [c for c in plan["references"] if c["source"] == "baharoon"]
    assert len(cells) >= 40
    for c in cells:  # a job that would produce it, or the reason none does
        assert (c["job_key"] in jobs) if c["job_key"] else bool(c["reason"]), c
    linear = next(c for c in cells if c["cell"] == "NIH CXR14 linear, DINOv2 ViT-L/14, all")
    job = jobs[linear["job_key"]]
    assert (job["backbone"]["name"], job["protocol"], job["options"]["preset"]) == (
        "paper:dinov2-l",
        "linear",
        "paper",
    )
    assert job["dataset"].startswith("nih-cxr14:")
    shot = next(c for c in cells if c["cell"] == "NIH CXR14 4-shot linear, ViT-L/16 IN-21k")
    assert jobs[shot["job_key"]]["protocol"] == "fewshot" and 4 in jobs[shot["job_key"]]["options"]["shots"]
    # every segmentation cell, the Montgomery few-shot curve included, has its job
    montgomery = [c for c in cells if c["cell"].startswith("Montgomery")]
    assert len(montgomery) == 18 and all(c["job_key"] for c in montgomery), montgomery
    for c in montgomery:
        job = jobs[c["job_key"]]
        shots = "-shot" in c["cell"]
        assert job["dataset"].startswith("montgomery:") and job["options"].get("shots") == (
            [1, 2, 4, 8, 16] if shots else None
        ), c
        if "DINOv2" in c["cell"]:
            assert (job["backbone"]["name"], job["protocol"]) == ("paper:dinov2-l", "seg-linear")
            assert job["options"]["preset"] == "paper"
        else:
            assert job["protocol"] == ("seg-transunet" if "TransUNet" in c["cell"] else "seg-unet")


def test_a_dataset_entry_can_restrict_backbones_and_be_listed_twice(tmp_path):
    from radprobe.errors import RadprobeError

    study = {
        "backbones": ["test:vit-tiny", "test:cnn-tiny"],
        "datasets": [
            {"spec": "synthetic:seg2d", "protocols": ["seg-linear", "seg-unet"]},
            {"spec": "synthetic:seg2d", "protocols": ["seg-linear", "seg-unet"],
             "backbones": ["test:cnn-tiny"],
             "options": {"seg-linear": {"shots": [1, 2]}, "seg-unet": {"shots": [1, 2]}}},
            {"spec": "synthetic:seg2d", "protocols": ["seg-linear"]},  # the first entry again
        ],
        "protocols": {"seg-linear": {}, "seg-unet": {}},
    }  # fmt: skip
    jobs = expand(load_study(str(_write(tmp_path, study))))
    runs = [(j.backbone.name, j.protocol, str(j.options.get("shots"))) for j in jobs]
    assert sorted(runs) == sorted(
        [
            ("test:vit-tiny", "seg-linear", "None"),
            ("test:cnn-tiny", "seg-linear", "None"),
            ("test:vit-tiny", "seg-unet", "None"),  # models from scratch: once, under the entry's first
            ("test:cnn-tiny", "seg-linear", "[1, 2]"),  # the restricted entry: its one backbone
            ("test:cnn-tiny", "seg-unet", "[1, 2]"),
        ]
    )
    assert len({j.key for j in jobs}) == len(jobs)
    study["datasets"][1]["backbones"] = ["test:nope"]
    with pytest.raises(RadprobeError, match=r"datasets\.1\.backbones: 'test:nope' is not among the study's"):
        load_study(str(_write(tmp_path, study, "bad.yaml")))
