"""Strict checkpoint loading: read a file, fit its keys to a model, refuse anything that does not fit.

A checkpoint that silently half-loads produces plausible-looking but meaningless features, so every
missing, unexpected or shape-mismatched key is an error unless the user explicitly allows it.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radprobe.errors import WeightsError
from radprobe.utils import file_sha256

# Classifier heads a headless backbone legitimately lacks; only these are dropped without complaint.
HEAD_PREFIXES = ("head.", "fc.", "classifier.")
# Containers that training scripts wrap a state dict in, most specific first.
WRAPPER_KEYS = ("teacher", "state_dict", "model", "model_state_dict", "module")
# Prefixes that DDP, DINO-style trainers and open_clip put in front of the backbone's own keys.
STRIP_PREFIXES = ("module.", "backbone.", "teacher.backbone.", "visual.trunk.", "model.", "encoder.")
# Files looked for inside a weights folder (HF / open_clip layouts), in order.
FOLDER_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
PARTIAL_HINT = "pass --allow-partial-weights to load anyway"

StateDict = dict[str, torch.Tensor]
Transform = Callable[[StateDict], StateDict]


@dataclass
class FitReport:
    """How a checkpoint's keys line up with a model's state dict."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped_heads: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    transform: str = "as-is"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 3) -> str:
        """One-line description of the problems, naming the first few keys of each kind."""

        def names(kind: str, keys: list[str]) -> str:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return f"{kind} {', '.join(keys[:limit])}{more}"

        parts = []
        if self.missing:
            parts.append(names("missing", self.missing))
        if self.unexpected:
            parts.append(names("unexpected", self.unexpected))
        if self.mismatched:
            shown = [f"{k} {list(src)} vs {list(dst)}" for k, src, dst in self.mismatched]
            parts.append(names("shape mismatch", shown))
        return "; ".join(parts) or "all keys fit"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mismatched"] = [[k, list(s), list(t)] for k, s, t in self.mismatched]
        return d

    def provenance(self) -> dict[str, Any]:
        """Entries for ``BackboneInfo.extra``: the full report under "partial_weights" when keys
        did not fit, else what was adapted on the way in (renaming, resampling, dropped heads)."""
        if not self.ok:
            return {"partial_weights": self.to_dict()}
        fit: dict[str, Any] = {"transform": self.transform} if self.transform != "as-is" else {}
        fit.update(
            {k: v for k, v in (("resampled", self.resampled), ("dropped_heads", self.dropped_heads)) if v}
        )
        return {"weights_fit": fit} if fit else {}


def weights_file(path: Path) -> Path:
    """The checkpoint file for ``path``: the file itself, or the known weights file inside a folder."""
    if not path.exists():
        raise WeightsError(f"weights {path} do not exist")
    if path.is_file():
        return path
    for name in FOLDER_FILES:
        if (path / name).is_file():
            return path / name
    raise WeightsError(
        f"weights folder {path} holds none of {', '.join(FOLDER_FILES)} "
        "(sharded checkpoints are not supported)"
    )


def read_state_dict(path: Path) -> StateDict:
    """Tensors of a .safetensors or torch checkpoint, unwrapped from common training containers.

    Torch files are read with ``weights_only=True``: a checkpoint that needs arbitrary unpickling is
    refused rather than executed.
    """
    path = weights_file(path)
    if path.stat().st_size == 0:  # torch.load says only "EOFError" about it
        raise WeightsError(f"could not read weights {path}: the file is empty, not a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"could not read weights {path}: {first_line(exc)}") from None
    if path.suffix not in TORCH_SUFFIXES:
        raise WeightsError(
            f"weights {path} have an unknown format; expected .safetensors, "
            f"{', '.join(TORCH_SUFFIXES)} or an HF folder"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # bytes that are no pickle at all
            raise WeightsError(f"could not read weights {path}: not a torch checkpoint") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" such as {found.group(1)}" if found else ""
        raise WeightsError(
            f"refusing to unpickle {path}: it holds objects other than tensors{what}; "
            "re-save just the state_dict, or convert it to .safetensors"
        ) from None
    except Exception as exc:
        raise WeightsError(
            f"could not read weights {path}: not a torch checkpoint, or a damaged one ({first_line(exc)})"
        ) from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: Any, path: Path | str) -> StateDict:
    """Dig the tensor dict out of {"state_dict": ...}-style wrappers; non-tensor metadata is ignored."""
    for _ in range(4):  # wrappers nest at most a few levels (e.g. {"model": {"teacher": ...}})
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights {path} hold a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"weights {path} contain no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    return sd


def _strip(prefix: str) -> Transform:
    def fn(sd: StateDict) -> StateDict:
        return {k.removeprefix(prefix): v for k, v in sd.items()}

    return fn


def _square(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r > 0 and r * r == n else None


def resample_pos_embed(
    key: str, src: torch.Tensor, dst: torch.Tensor, num_prefix_tokens: int | None = None
) -> torch.Tensor | None:
    """``src`` resampled to ``dst``'s grid if ``key`` is an absolute position table, else None.

    Handles (1, prefix + g*g, D) tables (timm ``pos_embed``, HF ``position_embeddings``) and SAM's
    (1, H, W, D) tables. With ``num_prefix_tokens`` unknown, the smallest prefix count that makes
    both tables square grids is assumed.
    """
    from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc

    if not key.endswith(("pos_embed", "position_embeddings")) or src.ndim != dst.ndim:
        return None
    if src.shape[0] != 1 or dst.shape[0] != 1 or src.shape[-1] != dst.shape[-1]:
        return None
    if src.ndim == 4:
        return resample_abs_pos_embed_nhwc(src, list(dst.shape[1:3]))
    if src.ndim != 3:
        return None
    candidates = [num_prefix_tokens] if num_prefix_tokens is not None else range(0, 9)
    for npt in candidates:
        old, new = _square(src.shape[1] - npt), _square(dst.shape[1] - npt)
        if old and new:
            return resample_abs_pos_embed(src, [new, new], old_size=[old, old], num_prefix_tokens=npt)
    return None


def fit_state_dict(
    sd: StateDict,
    model: nn.Module,
    *,
    transforms: Mapping[str, Transform] | None = None,
    num_prefix_tokens: int | None = None,
) -> tuple[StateDict, FitReport]:
    """Rename, resample and compare ``sd`` against ``model``'s state dict.

    Candidate renamings (as-is, prefix strips, plus model-specific ``transforms`` such as timm's
    converters for original DINOv2 / OpenAI CLIP / open_clip checkpoints) are scored by how many
    keys they match, then by how few unexpected keys they leave; as-is wins ties, so a prefix is
    stripped only when that helps. Returns the fitted dict and the report.
    """
    target = model.state_dict()
    candidates: dict[str, Transform] = {"as-is": lambda d: d}
    candidates.update({f"strip {p!r}": _strip(p) for p in STRIP_PREFIXES if any(k.startswith(p) for k in sd)})
    candidates.update(transforms or {})

    def score(out: StateDict) -> tuple[int, int]:
        matched = sum(k in target for k in out)
        extra = sum(k not in target and not k.startswith(HEAD_PREFIXES) for k in out)
        return matched, -extra

    best_name, best, best_score = "as-is", sd, (-1, 0)
    for name, fn in candidates.items():
        try:
            out = fn(dict(sd))
        except Exception:  # a converter that cannot read this layout simply does not apply
            continue
        current = score(out)
        if current > best_score:
            best_name, best, best_score = name, out, current
        if current == (len(target), 0):  # a perfect fit cannot be beaten
            break

    report = FitReport(transform=best_name)
    fitted: StateDict = {}
    for key, value in best.items():
        if key not in target:
            (report.dropped_heads if key.startswith(HEAD_PREFIXES) else report.unexpected).append(key)
            continue
        want = target[key]
        if value.shape != want.shape:
            resampled = resample_pos_embed(key, value, want, num_prefix_tokens)
            if resampled is None or resampled.shape != want.shape:
                report.mismatched.append((key, tuple(value.shape), tuple(want.shape)))
                continue
            report.resampled.append(key)
            value = resampled
        fitted[key] = value
    # BatchNorm's batch counter is bookkeeping, not a weight; old checkpoints lack it.
    report.missing = [k for k in target if k not in best and not k.endswith("num_batches_tracked")]
    return fitted, report


def apply_state_dict(
    model: nn.Module,
    sd: StateDict,
    *,
    label: str,
    backbone: str,
    allow_partial: bool,
    transforms: Mapping[str, Transform] | None = None,
    num_prefix_tokens: int | None = None,
) -> FitReport:
    """Load ``sd`` into ``model`` strictly (unless ``allow_partial``) and return the fit report.

    ``label`` names the checkpoint in error messages (usually its path).
    """
    fitted, report = fit_state_dict(sd, model, transforms=transforms, num_prefix_tokens=num_prefix_tokens)
    if not report.ok and not allow_partial:
        raise WeightsError(f"weights {label} do not fit {backbone}: {report.summary()}; {PARTIAL_HINT}")
    with torch.no_grad():
        model.load_state_dict(fitted, strict=False)
    return report


def load_weights(
    model: nn.Module,
    path: Path,
    *,
    backbone: str,
    allow_partial: bool,
    transforms: Mapping[str, Transform] | None = None,
    num_prefix_tokens: int | None = None,
) -> tuple[str, FitReport]:
    """Load checkpoint ``path`` into ``model``; returns (sha256 of the file, fit report)."""
    file = weights_file(path)
    sd = read_state_dict(file)
    report = apply_state_dict(
        model,
        sd,
        label=str(file),
        backbone=backbone,
        allow_partial=allow_partial,
        transforms=transforms,
        num_prefix_tokens=num_prefix_tokens,
    )
    return file_sha256(file), report


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@lru_cache(maxsize=8)
def hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` (asked once per process)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def hub_access() -> Iterator[None]:
    """Run hub downloads so that they fail fast offline.

    Without a route to the Hugging Face hub, its client retries each request for about 50 s before
    giving up. When the hub host cannot be reached (and no proxy is configured, which a direct probe
    cannot judge), the HF libraries run in offline mode for the call: weights already in the local
    cache load as usual, missing ones fail at once.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: nothing would be retried
        yield
        return
    host = constants.ENDPOINT.split("://")[-1].split("/")[0].split(":")[0]
    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARS) or hub_reachable(host):
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def hub_error(backbone: str, what: str, exc: BaseException) -> WeightsError:
    """A one-line error for pretrained weights that could not be fetched from a hub or cache."""
    return WeightsError(
        f"could not obtain pretrained weights for {backbone} ({what}): {first_line(exc, sentence=True)}; "
        "fetch them once where the hub is reachable (they are cached), or pass --weights PATH "
        "to a local checkpoint"
    )


def first_line(exc: BaseException, sentence: bool = False, limit: int = 200) -> str:
    """``Type: message`` cut to its first line (or sentence), so errors stay one line."""
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    if sentence:
        text = text.split(". ")[0].rstrip(".")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"
