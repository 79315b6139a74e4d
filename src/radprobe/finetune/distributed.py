"""Data-parallel training of one trained protocol across the ranks ``torchrun`` starts.

``torchrun --nproc_per_node N -m radprobe eval -p finetune ...`` trains one model on N GPUs (or N
CPU processes, gloo): every rank builds the same model and sees the same batch order; each global
batch of ``batch_size`` rows is dealt row by row to the ranks (rank r takes rows r, r+N, ...), and
DistributedDataParallel averages the gradients, so a step matches the single-process step on the
whole batch (the loss is a mean over equal shares). Validation is shared too: each rank predicts
every N-th row, the predictions are gathered, and every rank scores the whole split and so takes
the same decisions. Rank 0 alone writes checkpoints, scores the test split and writes rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from radprobe.core.runtime import under_torchrun
from radprobe.errors import OptionError, RadprobeError

# Set by join(): a process group alone does not mean data-parallel training (the study executor
# under torchrun starts one to deal out groups, and each rank then trains its own models).
_joined = False


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training ranks."""

    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> Ranks | None:
    """The data-parallel ranks when this process joined several (:func:`join`), else None."""
    import torch.distributed as dist

    if _joined and dist.is_initialized() and dist.get_world_size() > 1:
        return Ranks(dist.get_rank(), dist.get_world_size())
    return None


def join(device: str) -> str:
    """Under torchrun, join the process group (NCCL on CUDA, else gloo) and return this rank's
    device (``cuda`` becomes ``cuda:LOCAL_RANK``); otherwise return ``device`` unchanged."""
    global _joined
    import torch.distributed as dist

    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return device
    local = int(os.environ["LOCAL_RANK"])
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise OptionError(
            "--device",
            f"{device} under torchrun: every rank would train on that one GPU; "
            "use --device cuda (rank r takes GPU LOCAL_RANK)",
        )
    if cuda:
        if local >= torch.cuda.device_count():  # NCCL cannot put two ranks on one GPU
            raise RadprobeError(
                f"torchrun started {os.environ['LOCAL_WORLD_SIZE']} ranks on this machine but it has "
                f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    _joined = True
    return f"cuda:{local}" if cuda else ("cpu" if device == "auto" else device)


def agree(value: bool, what: str) -> None:
    """Raise unless every rank sees the same ``value`` (e.g. whether a checkpoint exists: ranks on
    machines that do not share the run directory would otherwise resume differently)."""
    if current() is None:
        return
    import torch.distributed as dist

    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, bool(value))
    if len(set(seen)) > 1:
        have = [r for r, v in enumerate(seen) if v]
        raise RadprobeError(
            f"data-parallel ranks disagree about {what} (ranks {have} see it, the others do not): "
            "every machine must see the same run directory (a shared filesystem)"
        )


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if current() is not None:
        import torch.distributed as dist

        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped for gradient averaging across the ranks (itself in a single process).

    BatchNorm layers are synchronised across ranks on CUDA (SyncBatchNorm needs it); on CPU each
    rank normalises its share of the batch.
    """
    if current() is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Every trainable parameter takes part in the forward pass (build_model freezes the backbone
    # parameters it never reaches), so DDP needs no search for unused ones.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean(value: float) -> float:
    """The mean of ``value`` over the ranks (itself in a single process)."""
    ranks = current()
    if ranks is None:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        t = t.cuda()
    dist.all_reduce(t)  # gloo has no AVG: sum, then divide
    return float(t.item()) / ranks.world


def gather(
    rows: list[int], items: list[Any], loss_sum: float, n: int, shard: tuple[int, int] | None
) -> tuple[list[Any], float]:
    """After a sharded pass (``shard`` given: every rank must call this), each rank's per-row results
    (``items[i]`` belongs to row ``rows[i]``) put back in row order on every rank, with the ranks'
    summed loss; unsharded, ``items`` as they are."""
    if shard is None:
        return items, loss_sum
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (rows, items, loss_sum))
    out: list[Any] = [None] * n
    total = 0.0
    for part_rows, part_items, part_loss in parts:
        for r, item in zip(part_rows, part_items, strict=True):
            out[r] = item
        total += part_loss
    return out, total
