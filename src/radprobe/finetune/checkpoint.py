"""Per-epoch checkpoints of a training run: safetensors files with their JSON state as metadata.

``<dir>/last.safetensors`` holds everything needed to continue after the last finished epoch: the
model's *mutable* state (trainable parameters and buffers — frozen weights are rebuilt from the
backbone), the AdamW moments, the RNG states, and the loop's :class:`TrainState` as JSON metadata.
``<dir>/best-e<N>.safetensors`` holds the mutable state of the best epoch so far; ``last`` names it,
and best files it no longer names are removed after it is written. Every file is written to a
temporary name and renamed, so a run killed at any moment leaves a consistent checkpoint (or none).
Nothing here is pickled: loading never executes code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from radprobe.errors import RadprobeError
from radprobe.utils import atomic_path

FORMAT = "radprobe-finetune-checkpoint-v1"
LAST = "last.safetensors"


@dataclass
class TrainState:
    """Where a training run is: epochs done, best epoch, early-stopping counter, accounting."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_score: float = -math.inf
    best_epoch: int = 0  # 1-based; 0 = none yet
    best_file: str = ""
    bad_epochs: int = 0
    finished: bool = False
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    train_time_s: float = 0.0
    train_images: int = 0
    wall_time_s: float = 0.0
    peak_mem_mb: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        return cls(**json.loads(text))


def mutable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and persistent buffers: what training can change."""
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, nn.Parameter) or t.requires_grad:
            out[name] = t.detach()
    return out


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors sharing storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(_cpu(tensors), str(tmp), metadata=meta)


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _load_model(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = mutable_state(model)
    if set(tensors) != set(expected):
        extra = sorted(set(tensors) ^ set(expected))[:3]
        raise RadprobeError(f"checkpoint {path} does not fit this model (e.g. {extra}); delete it to retrain")
    model.load_state_dict(tensors, strict=False)


class Checkpointer:
    """Saves and restores one training run's checkpoints in ``directory``, bound to run ``key``."""

    def __init__(self, directory: Path, key: str) -> None:
        self.dir = Path(directory)
        self.key = key

    @property
    def last(self) -> Path:
        return self.dir / LAST

    def exists(self) -> bool:
        return self.last.is_file()

    def save_best(self, model: nn.Module, epoch: int, write: bool = True) -> str:
        """Save the best epoch's weights; returns the file name (``write=False``: only the name, for
        the data-parallel ranks that leave the writing to rank 0)."""
        name = f"best-e{epoch}.safetensors"
        if write:
            meta = {"format": FORMAT, "key": self.key, "epoch": str(epoch)}
            _save(self.dir / name, {f"model/{k}": v for k, v in mutable_state(model).items()}, meta)
        return name

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        tensors = {f"model/{k}": v for k, v in mutable_state(model).items()}
        osd = optimizer.state_dict()
        for idx, st in osd["state"].items():
            for name, v in st.items():
                tensors[f"optim/{idx}/{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda/{i}"] = s
        groups = [{k: v for k, v in g.items()} for g in osd["param_groups"]]
        meta = {
            "format": FORMAT,
            "key": self.key,
            "state": state.to_json(),
            "param_groups": json.dumps(groups),
        }
        _save(self.last, tensors, meta)
        # best files that ``last`` no longer names are stale (a later epoch was better)
        for p in self.dir.glob("best-e*.safetensors"):
            if p.name != state.best_file:
                p.unlink(missing_ok=True)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> TrainState:
        """Restore model, optimizer and RNG from ``last``; returns the loop state."""
        try:
            meta = _metadata(self.last)
            tensors = load_file(str(self.last), device="cpu")
        except Exception as exc:  # a foreign or truncated file: say which, never guess
            raise RadprobeError(
                f"checkpoint {self.last} is unreadable ({exc}); delete it to retrain"
            ) from None
        if meta.get("format") != FORMAT or meta.get("key") != self.key:
            raise RadprobeError(f"checkpoint {self.last} belongs to another run; delete it to retrain")
        _load_model(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, self.last)
        groups = json.loads(meta["param_groups"])
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, idx, name = k.split("/", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        torch.set_rng_state(tensors["rng/torch"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        return TrainState.from_json(meta["state"])

    def load_best(self, model: nn.Module, name: str) -> None:
        path = self.dir / name
        if not path.is_file():
            raise RadprobeError(f"checkpoint {path} is missing; delete {self.dir} to retrain")
        tensors = load_file(str(path), device="cpu")
        _load_model(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, path)
