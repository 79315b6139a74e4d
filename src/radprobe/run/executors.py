"""Executors run the groups of a study. Jobs never know which executor runs them.

An executor takes picklable group tasks (``GroupTask``: a study, its run directory and a group of
jobs sharing one backbone and dataset) and returns their outcomes in order. Every task writes to the
run's SQLite store itself (WAL mode, so concurrent writers wait rather than fail); a torchrun rank
or Ray task on another machine writes a private shard that rank 0 or the driver lands instead.

* ``LocalExecutor``: in this process, or in N worker processes for CPU work.
* ``TorchrunExecutor``: under ``torchrun --nproc_per_node N [--nnodes M]``; each rank claims the next
  group from a counter in torchrun's TCP store, so a rank that finishes early takes more.
* ``RayExecutor``: one Ray task per group, with its own GPU when the cluster has GPUs, on any node.

All three start the heaviest groups (trained jobs) first, so a long fine-tuning group does not start
last and leave the other workers idle at the end.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any, Protocol

from radprobe.core.runtime import TORCHRUN_ENV
from radprobe.errors import OptionError, RadprobeError


class Executor(Protocol):
    """Runs group tasks and returns their outcomes in order."""

    def run(self, tasks: Sequence[Any], log: Callable[[str], None]) -> list[Any]: ...


def heaviest_first(tasks: Sequence[Any]) -> list[int]:
    """Task indices by descending ``weight`` (ties keep their order); tasks without one weigh 1."""
    return sorted(range(len(tasks)), key=lambda i: -float(getattr(tasks[i], "weight", 1)))


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
        order = heaviest_first(tasks)
        with ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            futures = {i: pool.submit(_call, tasks[i]) for i in order}
            return [futures[i].result() for i in range(len(tasks))]


class TorchrunExecutor:
    """One rank per GPU (or CPU share) under ``torchrun``: every rank runs the same study command.

    Rank 0's task list is the study's (a barrier first, so every rank has read its store, then a
    broadcast); ranks then claim tasks one at a time from an atomic counter in torchrun's TCP store,
    heaviest first. Each rank uses GPU ``LOCAL_RANK`` when CUDA is available, else ``cores /
    LOCAL_WORLD_SIZE`` torch threads. Ranks on rank 0's machine write to the run directory; ranks on
    other machines (``GROUP_RANK`` > 0) run each group into a private shard and post it packed to the
    store, where rank 0 lands it, so several nodes need no shared filesystem. Outcomes are gathered,
    so every rank returns the whole list; ``main`` says which rank should print. With ``fail_fast``
    tasks, a rank whose task raises tells the others to stop claiming.
    """

    def __init__(self, timeout_h: float = 72.0) -> None:
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise OptionError(
                "--executor",
                f"torchrun: {', '.join(missing)} not set; launch the command with "
                "`torchrun --nproc_per_node N -m radprobe study run ...`",
            )
        self.rank = int(os.environ["RANK"])
        self.world = int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.local_world = int(os.environ["LOCAL_WORLD_SIZE"])
        # global ranks are numbered node by node, so node (group) 0 holds rank 0 and its run directory
        self.detached = os.environ.get("GROUP_RANK", "0") != "0"
        self.timeout = timedelta(hours=timeout_h)
        self._calls = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def _place(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank % torch.cuda.device_count())
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world))

    def _run_one(self, task: Any, j: int, shared: Any, log: Callable[[str], None]) -> Any:
        say = lambda m: log(f"rank {self.rank}: {m}")  # noqa: E731
        if not self.detached:
            return task(log=say)
        outcome, packed = task.run_detached(log=say)
        shared.set(f"shard/{j}", packed)
        return outcome

    @staticmethod
    def _land(plan: Sequence[Any], shared: Any, j: int, settled: set[int]) -> None:
        key = f"shard/{j}"
        plan[j].land(shared.get(key))
        shared.delete_key(key)  # the store holds each shard only until it is landed
        settled.add(j)

    def _land_ready(self, plan: Sequence[Any], shared: Any, settled: set[int]) -> None:
        """Rank 0, between its own groups: land the shards other machines have posted so far."""
        for j in range(len(plan)):
            if j not in settled and shared.check([f"shard/{j}"]):
                self._land(plan, shared, j, settled)

    def run(self, tasks: Sequence[Any], log: Callable[[str], None]) -> list[Any]:
        import torch.distributed as dist

        self._place()
        own = not dist.is_initialized()
        if own:
            dist.init_process_group("gloo", timeout=self.timeout)
        self._calls += 1
        try:
            addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
            store = dist.TCPStore(addr, port, is_master=False, timeout=self.timeout)
            dist.barrier()  # every rank has read its results store before any rank runs a task
            # Rank 0's list is the study's; a machine without the run directory sees its own store.
            mine_keys = [getattr(t, "key", i) for i, t in enumerate(tasks)]
            box: list[Any] = [mine_keys if self.main else None]
            dist.broadcast_object_list(box, src=0)
            keys: list[Any] = box[0]
            local = {k: i for i, k in enumerate(mine_keys)}
            if any(k not in local for k in keys):
                raise RadprobeError(
                    f"torchrun rank {self.rank}: this machine's run directory already holds groups that "
                    "rank 0's still has to run; give the other machines an empty (or no) run directory"
                )
            plan = [tasks[local[k]] for k in keys]
            # A fresh counter per call and per elastic restart; every rank derives the same name.
            tag = hashlib.sha256(repr(keys).encode()).hexdigest()[:16]
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            shared = dist.PrefixStore(f"radprobe/{restart}/{self._calls}/{tag}", store)
            order = heaviest_first(plan)
            mine: dict[int, Any] = {}
            settled: set[int] = set()
            error: BaseException | None = None
            while not shared.check(["stop"]):
                k = shared.add("next", 1) - 1
                if k >= len(plan):
                    break
                j = order[k]
                try:
                    mine[j] = self._run_one(plan[j], j, shared, log)
                except BaseException as e:  # re-raised below, once the other ranks are told
                    shared.set("stop", str(self.rank))
                    error = e
                    break
                if self.main:
                    settled.add(j)
                    self._land_ready(plan, shared, settled)
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, (mine, self.detached))
            if self.main:  # every shard was posted before its rank reached the gather
                shipped = {j for done, away in parts if away for j in done}
                for j in sorted(shipped - settled):
                    self._land(plan, shared, j, settled)
        finally:
            if own:
                dist.destroy_process_group()
        if error is not None:
            raise error
        merged: dict[int, Any] = {}
        for done, _ in parts:
            merged.update(done)
        if len(merged) < len(plan):
            raise RadprobeError(
                f"torchrun: {len(plan) - len(merged)} group(s) not run: another rank stopped the study"
            )
        out: list[Any] = [None] * len(tasks)  # groups rank 0 had finished already stay None
        for j, k in enumerate(keys):
            out[local[k]] = merged[j]
        return out


def _ray_call(task: Any, threads: int, driver_node: str, detach: bool) -> tuple[Any, bytes | None]:
    import ray
    import torch

    torch.set_num_threads(max(1, threads))
    if detach or ray.get_runtime_context().get_node_id() != driver_node:
        return task.run_detached(log=print)  # another machine: results travel back with the outcome
    return task(log=print), None


class RayExecutor:
    """One Ray task per group: ``address`` as for ``ray.init`` (None: ``RAY_ADDRESS`` or a local
    instance; ``"auto"``: the running cluster). Each task asks for ``cpus`` CPUs and ``gpus`` GPUs
    (default: 1 when the cluster has GPUs, else 0); Ray sets each task's visible GPU.

    A task on the driver's machine writes to the run directory as local workers do. A task on another
    machine runs into a private directory there and sends it back packed; the driver lands it (files,
    then rows and job states in one transaction) as each task ends, so nothing needs a shared
    filesystem and SQLite is only ever written on one machine. ``detach=True`` forces that path.
    radprobe must be installed on every node; each node keeps its own feature cache.
    """

    def __init__(
        self, address: str | None = None, cpus: int = 1, gpus: float | None = None, detach: bool = False
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            msg = "--executor ray: ray is not installed; pip install 'radprobe[dist]'"
            raise RadprobeError(msg) from None
        if cpus < 1:
            raise OptionError("--ray-cpus", f"{cpus}: expected >= 1", setting="cpus")
        if gpus is not None and gpus < 0:
            raise OptionError("--ray-gpus", f"{gpus}: expected >= 0", setting="gpus")
        self.address, self.cpus, self.gpus, self.detach = address, cpus, gpus, detach

    def run(self, tasks: Sequence[Any], log: Callable[[str], None]) -> list[Any]:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
        try:
            gpus = self.gpus if self.gpus is not None else (1 if ray.cluster_resources().get("GPU", 0) else 0)
            # A lost worker or node (preemption) reruns the group elsewhere: its rows are keyed, so
            # a rerun replaces rather than duplicates. An exception inside a group is not retried.
            remote = ray.remote(num_cpus=self.cpus, num_gpus=gpus, max_retries=2)(_ray_call)
            node = ray.get_runtime_context().get_node_id()
            refs = {remote.remote(tasks[i], self.cpus, node, self.detach): i for i in heaviest_first(tasks)}
            out: dict[int, Any] = {}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = refs[done[0]]
                try:
                    outcome, packed = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    for p in pending:
                        ray.cancel(p)
                    raise (e.cause if isinstance(e.cause, BaseException) else e) from None
                if packed is not None:
                    tasks[i].land(packed)
                out[i] = outcome
                log(f"ray: {len(out)}/{len(tasks)} group(s) done")
        finally:
            if started:
                ray.shutdown()
        return [out[i] for i in range(len(tasks))]
