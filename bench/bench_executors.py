"""One study through each executor: wall time as a ratio to the sequential run on the same cores.

On a CPU machine every executor shares the same cores, so the ratios measure what each costs
(process start, ray.init, torchrun's rendezvous) against what running groups side by side gains over
one process's intra-op threads; on a GPU machine ranks and Ray tasks get a GPU each. Every run
starts from an empty feature cache (its own), and its rows must equal the sequential run's (small
head fits run on one BLAS thread whatever OMP_NUM_THREADS says, which torchrun and Ray set to 1).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STUDY = {
    "name": "bench-executors",
    "backbones": [
        {"name": "timm:vit_small_patch14_dinov2", "pretrained": False, "resolution": 112},
        {"name": "timm:resnet50", "pretrained": False, "resolution": 112},
    ],
    "datasets": ["synthetic:cls2d-binary", "synthetic:cls2d-multiclass"],
    "protocols": {"knn": {}, "logreg": {}},
    "seeds": [0],
    "bootstrap": 200,
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run: Path) -> list[tuple]:
    con = sqlite3.connect(run / "results.db")
    try:
        return con.execute("select eval_key, metric, value from results order by eval_key, metric").fetchall()
    finally:
        con.close()


def main() -> dict:
    cores = len(os.sched_getaffinity(0))
    radprobe = [sys.executable, "-m", "radprobe", "study", "run"]
    runs = {
        "sequential": [*radprobe, "{study}", "-o", "{out}"],
        "local_workers": [*radprobe, "{study}", "-o", "{out}", "--workers", str(cores)],
        "torchrun": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(cores),
            "--master_port",
            "{port}",
            "-m",
            "radprobe",
            "study",
            "run",
            "{study}",
            "-o",
            "{out}",
        ],
        "ray": [*radprobe, "{study}", "-o", "{out}", "--executor", "ray"],
    }
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study.yaml"
        study.write_text(yaml.safe_dump(STUDY))
        for name, cmd in runs.items():
            out = Path(tmp) / name
            env = {**os.environ, "RADPROBE_CACHE": str(Path(tmp) / f"cache-{name}"), "COLUMNS": "200"}
            args = [a.format(study=study, out=out, port=_port()) for a in cmd]
            t0 = time.perf_counter()
            proc = subprocess.run(args, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{name}: exit {proc.returncode}: {proc.stderr[-2000:]}")
            walls[name] = time.perf_counter() - t0
            if _rows(out) != _rows(Path(tmp) / "sequential"):
                raise AssertionError(f"{name}: rows differ from the sequential run's")
    base = walls["sequential"]
    return {
        "goal": "ratio to the sequential run (below 1: running groups side by side gained)",
        "study": STUDY,
        "groups": 4,
        "workers": cores,
        "wall_s": {k: round(v, 2) for k, v in walls.items()},
        "ratio_to_sequential": {k: round(v / base, 3) for k, v in walls.items()},
        "rows_equal": True,
    }
