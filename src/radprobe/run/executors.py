"""Executors run the groups of a study. Jobs never know which executor runs them.

An executor takes picklable group tasks (``GroupTask``: a study, its run directory and a group of
jobs sharing one backbone and dataset) and returns their outcomes in order. ``LocalExecutor`` runs
them in this process, or in N worker processes for CPU work; executors for torchrun (groups split
across ranks) and Ray (one remote task per group) implement the same ``run``. Every task writes to
the run's SQLite store itself (WAL mode, so concurrent writers wait rather than fail).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol


class Executor(Protocol):
    """Runs group tasks and returns their outcomes in order."""

    def run(self, tasks: Sequence[Any], log: Callable[[str], None]) -> list[Any]: ...


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # workers share the cores instead of oversubscribing them


def _call(task: Any) -> Any:
    return task(log=lambda msg: print(f"[{os.getpid()}] {msg}", flush=True))


class LocalExecutor:
    """Sequential in this process (``workers=1``), or a pool of spawned worker processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, tasks: Sequence[Any], log: Callable[[str], None]) -> list[Any]:
        if self.workers == 1 or len(tasks) <= 1:
            return [t(log=log) for t in tasks]
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            return list(pool.map(_call, tasks))
