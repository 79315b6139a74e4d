"""Runtime facts shared by every evaluation path: the device, the environment a row records, the
thread budget of small fits, torchrun detection and peak memory."""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from radprobe.errors import OptionError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def resolve_device(name: str) -> str:
    """``auto`` → cuda when available, else cpu; an unavailable or unknown device is one line."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(
            "--device", f"{name}: CUDA is not available on this machine; use --device cpu", setting="device"
        )
    if name != "cpu" and not name.startswith("cuda") and name != "mps":
        raise OptionError("--device", f"{name!r}: expected cpu, cuda, cuda:N, mps or auto", setting="device")
    return name


def _version() -> str:
    # read from the installed metadata: this floor does not import the package face above it
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radprobe")
    except PackageNotFoundError:
        return "unknown"


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def under_torchrun() -> bool:
    """Whether this process is a rank launched by torchrun (its environment names a world)."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def env_info(
    device: str, *, feature_precisions: Iterable[str] = (), data_parallel_ranks: int | None = None
) -> dict[str, Any]:
    """What a result row records about where it ran.

    ``feature_precisions``: the precisions the cached features were computed in (bf16 on CUDA),
    which may differ from how the row's head ran, since features may come from another machine.
    ``data_parallel_ranks``: trained rows, whose imgs/s counts every rank's images.
    """
    env: dict[str, Any] = {
        "radprobe": _version(),
        "python": platform.python_version(),
        "torch": __import__("torch").__version__,
        "device": str(device),
        "machine": platform.machine(),
    }
    precisions = sorted(set(feature_precisions))
    if precisions:
        env["feature_precision"] = "/".join(precisions)
    if data_parallel_ranks is not None:
        env["data_parallel_ranks"] = data_parallel_ranks
    return env


@contextmanager
def threads_for(n_values: int) -> Iterator[None]:
    """One torch thread and one BLAS thread for small fits: their many tiny ops pay thread sync, not
    compute (sklearn's lbfgs on 2000x2048: 0.15 s on one thread, 0.35 s on two). It also makes their
    results independent of the thread count: lbfgs at large C lands elsewhere with another BLAS
    summation order, and torchrun and Ray set OMP_NUM_THREADS=1, so the selected C followed the
    executor."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    small = n_values < 2_000_000
    if small:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1 if small else None):
            yield
    finally:
        torch.set_num_threads(before)


def peak_memory_mb(device: Any) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
