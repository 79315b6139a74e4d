"""Data-parallel training under torchrun: two CPU ranks (gloo) train the model one process trains."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys

import numpy as np

from radprobe.cli import main

ARGS = [
    "eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-multiclass", "-p", "finetune",
    "--set", "finetune.epochs=3", "--set", "finetune.lr=0.001", "--set", "finetune.batch_size=16",
    "--bootstrap", "50", "--json",
]  # fmt: skip


def _torchrun(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    cmd += ["-m", "radprobe", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _history(row: dict) -> np.ndarray:
    return np.array([[h["train_loss"], h["val_loss"], h["val_score"]] for h in row["selected"]["history"]])


def test_two_ranks_train_the_single_process_model(tmp_path, capsys):
    assert main([*ARGS, "-o", str(tmp_path / "single")]) == 0
    single = json.loads(capsys.readouterr().out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _torchrun([*ARGS, "-o", str(tmp_path / "ddp")], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(proc.stdout)  # rank 0 alone prints
    # every step averaged the two halves of the single-process batch: the same losses, epoch by epoch
    a, b = single["rows"][0], ddp["rows"][0]
    assert np.allclose(_history(a), _history(b), rtol=1e-5, atol=1e-6), (_history(a), _history(b))
    assert a["selected"]["epoch"] == b["selected"]["epoch"]
    assert [r["metric"] for r in ddp["rows"]] == [r["metric"] for r in single["rows"]]
    assert np.allclose([r["value"] for r in ddp["rows"]], [r["value"] for r in single["rows"]], atol=1e-6)
    con = sqlite3.connect(tmp_path / "ddp" / "results.db")
    assert con.execute("select count(*) from results").fetchone()[0] == len(single["rows"])  # once, by rank 0
    con.close()
    names = {p.name for p in (tmp_path / "single").glob("checkpoints/*/*.safetensors")}
    assert {p.name for p in (tmp_path / "ddp").glob("checkpoints/*/*.safetensors")} == names
    assert b["imgs_per_s"] > 0 and b["hparams"]["batch_size"] == 16
    assert (a["env"]["data_parallel_ranks"], b["env"]["data_parallel_ranks"]) == (1, 2)

    bad = [a.replace("batch_size=16", "batch_size=15") for a in ARGS]
    proc = _torchrun([*bad, "-o", str(tmp_path / "bad")], env)
    assert proc.returncode != 0 and "multiple of the 2 torchrun ranks" in proc.stderr


def test_eval_under_torchrun_takes_trained_protocols_only(tmp_path, monkeypatch, capsys):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}
    for k, v in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    args = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-p", "knn"]
    args += ["-o", str(tmp_path / "r")]
    assert main(args) == 2
    assert "under torchrun" in capsys.readouterr().err and not (tmp_path / "r" / "results.db").exists()
    assert main([*args[:-2], "-p", "finetune", "--device", "cuda:1", "-o", str(tmp_path / "r")]) == 2
    assert "every rank would train on that one GPU" in capsys.readouterr().err


def test_two_ranks_train_and_validate_segmentation_as_one_process(tmp_path, capsys):
    """Validation masks are predicted by the two ranks in turns and reassembled per case. Training
    itself differs a little from one process here: the Dice term is taken over each rank's half of
    the batch, and on CPU the head's BatchNorm normalises each half (CUDA synchronises it), so the
    histories agree closely rather than exactly; misassembled rows would not come close."""
    args = [
        "eval", "-b", "test:vit-tiny", "-d", "synthetic:seg2d", "-p", "finetune",
        "--set", "finetune.epochs=2", "--set", "finetune.batch_size=8", "--bootstrap", "20", "--json",
    ]  # fmt: skip
    assert main([*args, "-o", str(tmp_path / "single")]) == 0
    single = json.loads(capsys.readouterr().out)
    proc = _torchrun([*args, "-o", str(tmp_path / "ddp")], {**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(proc.stdout)
    a = next(r for r in single["rows"] if r["metric"] == "dice_macro")
    b = next(r for r in ddp["rows"] if r["metric"] == "dice_macro")
    assert np.allclose(_history(a), _history(b), atol=0.01), (_history(a), _history(b))
    assert abs(a["value"] - b["value"]) < 0.01 and a["protocol"] == b["protocol"] == "finetune"
    con = sqlite3.connect(tmp_path / "ddp" / "results.db")
    assert con.execute("select count(*) from results").fetchone()[0] == len(single["rows"])
    con.close()


def test_ranks_that_see_different_run_directories_stop_with_one_line(tmp_path, capsys):
    """Data-parallel ranks on machines without a shared run directory would resume differently
    (one finds a checkpoint, the other does not): they stop, naming the reason."""
    assert main([*ARGS, "-o", str(tmp_path / "node0")]) == 0  # leaves its checkpoints (the default)
    capsys.readouterr()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node)]
        cmd += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd += ["-m", "radprobe", *ARGS, "-o", str(tmp_path / f"node{node}")]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, **pipes))
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert any("disagree about a checkpoint" in e and "shared filesystem" in e for e in errs), errs[0][-2000:]
