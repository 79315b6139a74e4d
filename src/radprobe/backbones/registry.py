"""Name -> builder registry, the ``timm:``/``hf:`` prefixes, and the public create/list functions."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import torch

from radprobe.backbones.base import Backbone
from radprobe.errors import RadprobeError, WeightsError

RANDOM_SEED = 0
RANDOM_DIGEST = f"random-init:seed{RANDOM_SEED}"
STAT_KEYS = ("params", "patch_size", "native_resolution", "embed_dim", "num_blocks")


@dataclass(frozen=True)
class BuildOptions:
    """How to build one backbone; ``meta`` builds shapes only (for listings), with no weights at all."""

    weights: Path | None = None
    pretrained: bool = True
    allow_partial_weights: bool = False
    resolution: int | None = None
    meta: bool = False

    @property
    def from_hub(self) -> bool:
        return self.pretrained and self.weights is None and not self.meta


Builder = Callable[["BackboneEntry", BuildOptions], Backbone]


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: what it is, where its weights come from, and how to build it."""

    name: str
    family: str
    arch: str  # underlying model id (timm model name, HF model type, ...)
    source: str  # default pretrained weight source, e.g. "timm:<tag>" or "hf:<repo>"
    description: str
    builder: Builder = field(repr=False)
    requires: str | None = None  # optional extra needed to build with pretrained weights
    stats: tuple[int, int | None, int, int, int] | None = None  # STAT_KEYS, cached for fast listings
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # builder-specific settings


_REGISTRY: dict[str, BackboneEntry] = {}
_PREFIXES: dict[str, Callable[[str, str], BackboneEntry]] = {}


def register(entry: BackboneEntry) -> BackboneEntry:
    """Add ``entry`` under its name; names are unique."""
    if entry.name in _REGISTRY:
        raise ValueError(f"backbone {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def register_prefix(prefix: str, resolver: Callable[[str, str], BackboneEntry]) -> None:
    """Resolve names ``<prefix>:<rest>`` dynamically with ``resolver(full_name, rest)``."""
    _PREFIXES[prefix] = resolver


def registered_names() -> list[str]:
    """Names of all registered (non-prefix) backbones, in registration order."""
    return list(_REGISTRY)


def get_backbone_entry(name: str) -> BackboneEntry:
    """The entry for ``name`` (a registered name, ``timm:<model>`` or ``hf:<repo or folder>``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES:
        if not rest:
            raise RadprobeError(f"backbone {name!r} names no model after '{prefix}:'")
        return _PREFIXES[prefix](name, rest)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise RadprobeError(
        f"unknown backbone {name!r}; {hint}(`radprobe backbones` lists them; "
        f"any timm model works as timm:<name>, any HF vision model as hf:<repo>)"
    )


@contextmanager
def seeded(enabled: bool = True) -> Iterator[None]:
    """Deterministic random init that leaves the caller's RNG state untouched."""
    if not enabled:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


def resolve_resolution(name: str, native: int, patch: int | None, requested: int | None) -> int:
    """The input resolution: ``requested`` if valid, else native rounded to a multiple of the patch."""
    if requested is None:
        return max(patch, round(native / patch) * patch) if patch else native
    if requested <= 0:
        raise RadprobeError(f"resolution must be positive, got {requested}")
    if patch and requested % patch:
        near = max(patch, round(requested / patch) * patch)
        raise RadprobeError(
            f"resolution {requested} is not a multiple of {name}'s patch size {patch}; try {near}"
        )
    return requested


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    allow_partial_weights: bool = False,
    resolution: int | None = None,
) -> Backbone:
    """Build backbone ``name`` in eval mode on the CPU.

    ``weights`` (a checkpoint file or HF folder) overrides the hub weights and is loaded strictly;
    ``pretrained=False`` gives a seeded random init (a baseline); ``resolution`` overrides the
    native input size (ViTs interpolate their position embeddings).
    """
    entry = get_backbone_entry(name)
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"weights {path} do not exist")
    opts = BuildOptions(
        weights=path,
        pretrained=pretrained,
        allow_partial_weights=allow_partial_weights,
        resolution=resolution,
    )
    backbone = entry.builder(entry, opts)
    if entry.options.get("autocast"):  # how the entry's features are computed on a GPU
        backbone.info = replace(
            backbone.info, extra={**backbone.info.extra, "autocast": entry.options["autocast"]}
        )
    return backbone.eval()


@cache
def backbone_stats(name: str) -> dict[str, int | None]:
    """Parameter count and shape facts of ``name``, from the cache or a weightless meta-device build."""
    entry = get_backbone_entry(name)
    if entry.stats is not None:
        return dict(zip(STAT_KEYS, entry.stats, strict=True))
    with torch.device("meta"):
        info = entry.builder(entry, BuildOptions(pretrained=False, meta=True)).info
    return {k: getattr(info, k) for k in STAT_KEYS}


def describe(entry: BackboneEntry) -> dict[str, Any]:
    """The listing row of one entry."""
    return {
        "name": entry.name,
        "family": entry.family,
        "arch": entry.arch,
        "source": entry.source,
        **backbone_stats(entry.name),
        "description": entry.description,
        "requires": entry.requires,
    }


def list_backbones() -> list[dict[str, Any]]:
    """One dict per registered backbone (name, family, arch, source, params, patch_size,
    native_resolution, embed_dim, num_blocks, description, requires); no weights are touched."""
    return [describe(e) for e in _REGISTRY.values()]
