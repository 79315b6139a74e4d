"""Runners sharing a run directory claim jobs, so each job runs once and a dead runner's jobs are
taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from radprobe.results import ResultStore

HOST = socket.gethostname()
EXE = str(Path(sys.executable).parent / "radprobe")
STUDY = {
    "name": "claims",
    "backbones": ["test:vit-tiny", "test:cnn-tiny"],
    "datasets": ["synthetic:cls2d-binary", "synthetic:cls2d-multiclass"],
    "protocols": {"knn": {"ks": [5, 10]}, "logreg": {"cs": [0.1, 1.0]}},
    "seeds": [0, 1],
    "bootstrap": 20,
    "device": "cpu",
}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_skip_live_holders_and_take_over_dead_ones(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:
        store.add_jobs([(k, {}) for k in ("a", "b", "c", "d")])
        assert store.claim_job("a", os.getpid(), HOST)
        assert not store.claim_job("a", 4242, HOST)  # this live process holds it
        assert store.claim_job("b", _dead_pid(), HOST)
        assert store.claim_job("b", os.getpid(), HOST)  # its holder died: taken over
        assert store.claim_job("c", 1, "other-host")
        assert not store.claim_job("c", os.getpid(), HOST)  # another host's fresh lease holds
        assert store.claim_job("c", os.getpid(), HOST, lease_s=0.0)  # ... until it runs out
        store.finish_job("a", [], 0.1)
        assert not store.claim_job("a", os.getpid(), HOST)  # done is done
        attempts = {j["job_key"]: j["attempts"] for j in store.jobs()}
    assert attempts == {"a": 1, "b": 2, "c": 2, "d": 0}


def test_a_heartbeat_renews_the_lease(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:
        store.add_jobs([("a", {})])
        assert store.claim_job("a", 1, "other-host")
        time.sleep(0.05)
        store.beat("a", 1, "other-host")
        assert not store.claim_job("a", os.getpid(), HOST, lease_s=0.04)  # renewed just now


def _values(run: Path) -> list[tuple]:
    with ResultStore(run, create=False) as store:
        rows = store.rows()
    return sorted(
        (r["backbone"], r["dataset"], r["protocol"], r["seed"], r["metric"], r["value"]) for r in rows
    )


def test_two_concurrent_study_runs_run_each_job_once_with_the_rows_of_a_sequential_run(
    tmp_path: Path,
) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    args = [EXE, "study", "run", str(study), "--json", "--out"]
    procs = [
        subprocess.Popen([*args, str(shared)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in "ab"
    ]
    done = 0
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()[-2000:]
        done += json.loads(out)["done"]
    assert done == 16  # the runners split the jobs between them
    assert subprocess.run([*args, str(alone)], capture_output=True, timeout=900).returncode == 0
    with ResultStore(shared, create=False) as store:
        jobs = store.jobs()
    assert len(jobs) == 16
    assert {(j["status"], j["attempts"]) for j in jobs} == {("done", 1)}
    assert _values(shared) == _values(alone)
