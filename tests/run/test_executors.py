"""Executors: torchrun ranks and Ray tasks give the rows of a sequential run, each job run once."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from radprobe.cli import main
from radprobe.errors import RadprobeError
from radprobe.results import ResultStore
from radprobe.results.store import ResultRow
from radprobe.run.executors import TorchrunExecutor, heaviest_first
from radprobe.run.study import GroupTask, expand, load_study, run_study

STUDY = {
    "name": "x",
    "backbones": ["test:vit-tiny", "test:cnn-tiny"],
    "datasets": ["synthetic:cls2d-binary", "synthetic:cls2d-multiclass"],
    "protocols": {"knn": {"ks": [5]}, "logreg": {"cs": [0.1, 1.0]}},
    "seeds": [0],
    "bootstrap": 30,
}


def _study_file(tmp_path: Path, study: dict) -> Path:
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(study))
    return p


def _rows(run: Path) -> list[tuple]:
    con = sqlite3.connect(run / "results.db")
    rows = con.execute(
        "select eval_key, metric, value, ci_low, ci_high, job_key from results order by eval_key, metric"
    ).fetchall()
    con.close()
    return rows


def _jobs(run: Path) -> dict[str, tuple[str, int]]:
    con = sqlite3.connect(run / "results.db")
    out = {k: (s, a) for k, s, a in con.execute("select job_key, status, attempts from jobs")}
    con.close()
    return out


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*.npz")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_heaviest_first_puts_trained_groups_first(tmp_path):
    study = load_study(
        str(_study_file(tmp_path, {**STUDY, "backbones": ["test:vit-tiny"], "protocols": {"knn": {}}}))
    )
    frozen = GroupTask(study, tmp_path, expand(study)[:1], False, False)
    trained = GroupTask(study, tmp_path, [*expand(study)[:1]] * 2, False, False)
    trained.jobs = [j.__class__(**{**j.__dict__, "protocol": "finetune"}) for j in trained.jobs]
    assert trained.weight == 20 and frozen.weight == 1
    assert heaviest_first([frozen, trained, frozen]) == [1, 0, 2]
    assert frozen.key != trained.key and frozen.key == GroupTask(study, tmp_path, frozen.jobs, True, True).key


def test_torchrun_ranks_share_the_groups(tmp_path):
    """Two CPU ranks under the real torchrun launcher: every job runs once (attempts 1), a failing
    group is recorded and the others go on, and the rows equal a sequential run's."""
    study = {**STUDY, "datasets": [*STUDY["datasets"], f"csv:{tmp_path / 'missing.csv'}"]}
    path = _study_file(tmp_path, study)
    assert main(["study", "run", str(path), "-o", str(tmp_path / "seq"), "--json"]) == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"}  # one summary line, unwrapped
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), "-m", "radprobe", "study", "run", str(path)]
    cmd += ["-o", str(tmp_path / "tr")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout  # the missing dataset's jobs failed on some rank
    expected = "8 job(s) run, 0 done already or by another runner, 4 failed"
    assert expected in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("job(s) run") == 1  # only rank 0 prints the summary
    assert "rank 0: done" in proc.stdout and "rank 1: done" in proc.stdout
    assert _rows(tmp_path / "tr") == _rows(tmp_path / "seq")
    assert len(_rows(tmp_path / "tr")) == 68  # 36 headline rows, 32 per-class
    jobs = _jobs(tmp_path / "tr")
    assert sorted(s for s, _ in jobs.values()) == ["done"] * 8 + ["failed"] * 4
    assert all(a == 1 for _, a in jobs.values())
    assert _files(tmp_path / "tr") == _files(tmp_path / "seq")


def test_torchrun_over_two_machines_needs_no_shared_filesystem(tmp_path):
    """Two torchrun "nodes" on this machine, each with its own run directory and feature cache: the
    second node's groups travel to rank 0 through torchrun's store and land in rank 0's run
    directory, which ends with the rows and files of a sequential run."""
    path = _study_file(tmp_path, STUDY)
    assert main(["study", "run", str(path), "-o", str(tmp_path / "seq"), "--json"]) == 0
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node)]
        cmd += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd += ["-m", "radprobe", "study", "run", str(path), "-o", str(tmp_path / f"node{node}")]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RADPROBE_CACHE": str(tmp_path / f"cache{node}")}
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen(cmd, env=env, **pipes))
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert _rows(tmp_path / "node0") == _rows(tmp_path / "seq")
    assert _files(tmp_path / "node0") == _files(tmp_path / "seq")
    assert {v for v in _jobs(tmp_path / "node0").values()} == {("done", 1)}
    assert "rank 1: done" in outs[1][0]  # the second node did run groups
    assert _rows(tmp_path / "node1") == [] and not list((tmp_path / "node1").rglob("*.npz"))
    assert not list((tmp_path / "node0").glob(".shard-*"))


def test_torchrun_executor_needs_torchrun(tmp_path, monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    path = _study_file(tmp_path, STUDY)
    assert main(["study", "run", str(path), "-o", str(tmp_path / "r"), "--executor", "torchrun"]) == 2
    assert "torchrun --nproc_per_node" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--executor", "mpi"]) == 2
    assert "expected local, torchrun, ray or auto" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    for k, v in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    assert not TorchrunExecutor().detached
    monkeypatch.setenv("GROUP_RANK", "1")
    assert TorchrunExecutor().detached  # a rank on a second machine ships its groups
    monkeypatch.delenv("GROUP_RANK")
    assert main(["study", "run", str(path), "-o", str(tmp_path / "r"), "--set", "device=cuda:0"]) == 2
    assert "every rank would use that one GPU" in capsys.readouterr().err


def _row(key: str, value: float, job: str) -> ResultRow:
    ids = dict.fromkeys(("run_id", "backbone", "weights_digest", "dataset", "manifest_digest"), "x")
    return ResultRow(
        **ids, split_digest="x", protocol="knn", eval_key=key, metric="auroc", value=value, job_key=job
    )


def test_merge_takes_rows_and_job_states(tmp_path):
    with ResultStore(tmp_path / "main") as main_store, ResultStore(tmp_path / "shard") as shard:
        main_store.add_jobs([("a", {"n": 1}), ("b", {"n": 2})])
        assert main_store.claim_job("a", 1, "node-a")
        main_store.fail_job("a", "boom")
        main_store.write([_row("e1", 0.1, "a"), _row("e0", 0.9, "z")])
        shard.add_jobs([("a", {"n": 1}), ("b", {"n": 2})])
        assert shard.claim_job("a", 2, "node-b")
        shard.finish_job("a", [_row("e1", 0.7, "a"), _row("e2", 0.8, "a")], 1.5)
        assert main_store.merge(tmp_path / "shard") == 2
        jobs = {j["job_key"]: j for j in main_store.jobs()}
        assert jobs["a"]["status"] == "done" and jobs["a"]["attempts"] == 2 and jobs["a"]["error"] is None
        assert jobs["b"]["status"] == "pending" and jobs["b"]["attempts"] == 0  # untouched by the shard
        values = {(r["eval_key"], r["value"]) for r in main_store.rows()}
        assert values == {("e0", 0.9), ("e1", 0.7), ("e2", 0.8)}
    with pytest.raises(FileNotFoundError):
        ResultStore(tmp_path / "main").merge(tmp_path / "nowhere")


def test_ray_tasks_local_and_detached_give_the_sequential_rows(tmp_path):
    ray = pytest.importorskip("ray")
    from radprobe.run.executors import RayExecutor

    study = load_study(str(_study_file(tmp_path, STUDY)))
    quiet = {"progress": False, "log": lambda m: None}
    run_study(study, tmp_path / "seq", **quiet)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for name, detach in (("ray", False), ("shipped", True)):
            out = run_study(study, tmp_path / name, executor=RayExecutor(detach=detach), **quiet)
            assert (out.done, out.failed, out.rows) == (8, 0, 68)
            assert _rows(tmp_path / name) == _rows(tmp_path / "seq")
            assert _files(tmp_path / name) == _files(tmp_path / "seq")
            assert {v for v in _jobs(tmp_path / name).values()} == {("done", 1)}
            assert not list((tmp_path / name).glob(".shard-*"))  # landed shards leave nothing behind
        bad = load_study(str(_study_file(tmp_path, {**STUDY, "datasets": ["csv:/no/such.csv"]})))
        with pytest.raises(RadprobeError, match=r"such\.csv"):
            run_study(bad, tmp_path / "bad", fail_fast=True, executor=RayExecutor(), **quiet)
    finally:
        ray.shutdown()


def test_store_opening_waits_for_a_lock_held_by_another_process(tmp_path, monkeypatch):
    """Ranks open one new run database together: one holds a write lock while another switches it to
    WAL, which SQLite refuses at once (no busy handler) unless the store retries. The lock is released
    only once the store is seen waiting for it, so the test does not depend on timing."""
    from radprobe.results import store as store_module

    waiting = threading.Event()
    real_sleep = store_module.time.sleep

    def sleep(seconds: float) -> None:
        waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(store_module.time, "sleep", sleep)
    con = sqlite3.connect(tmp_path / "results.db", isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")
    release = threading.Thread(target=lambda: waiting.wait(60) and con.execute("COMMIT"))
    release.start()
    try:
        with ResultStore(tmp_path) as store:
            store.add_jobs([("a", {})])
            assert [j["job_key"] for j in store.jobs()] == ["a"]
    finally:
        release.join()
        con.close()
    assert waiting.is_set()  # the store met the lock and waited


def test_small_fits_run_on_one_blas_thread_whatever_the_environment():
    """Rows must not follow the executor: torchrun and Ray set OMP_NUM_THREADS=1, local runs do not,
    and sklearn's lbfgs at large C lands elsewhere with another BLAS summation order."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from radprobe.core.runtime import threads_for

    def blas() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    if not blas():
        pytest.skip("numpy reports no BLAS thread pool here")
    with threadpool_limits(limits=2, user_api="blas"):
        with threads_for(60 * 2048):
            assert blas() == {1}
        with threads_for(10**8):  # large fits keep the threads they were given
            assert blas() == {2}


def test_ray_executor_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    from radprobe.run.executors import RayExecutor

    with pytest.raises(RadprobeError, match="gpus=-1"):
        RayExecutor(gpus=-1)
    with pytest.raises(RadprobeError, match="cpus=0"):
        RayExecutor(cpus=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    path = _study_file(tmp_path, STUDY)
    assert main(["study", "run", str(path), "-o", str(tmp_path / "r"), "--executor", "ray"]) == 2
    assert "pip install 'radprobe[dist]'" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--executor", "ray", "--workers", "2"]) == 2
    assert "only with --executor local" in capsys.readouterr().err
