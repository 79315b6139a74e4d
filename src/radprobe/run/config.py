"""What one evaluation is asked to do (:class:`EvalConfig`) and what it did (:class:`EvalSummary`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from radprobe.config import cache_dir, image_cache_enabled
from radprobe.errors import OptionError, RadprobeError
from radprobe.features.images import ImageCache
from radprobe.utils import load_yaml


@dataclass
class EvalConfig:
    """One backbone on one dataset under one or more protocols."""

    backbone: str
    dataset: str
    protocols: list[str]
    out: Path
    weights: str | None = None
    allow_partial_weights: bool = False
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 64
    num_workers: int | None = None  # None: what suits the machine (features.images.default_workers)
    device: str = "cpu"
    n_boot: int = 1000
    n_blocks: int = 4
    cache_root: Path | None = None
    image_cache: bool = True  # False: decode every image per backbone on the CPU (same features)
    progress: bool = True
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # protocol -> keyword overrides
    volume_pool: str = "mean"  # 3D classification: how slice features become one row per volume
    pretrained: bool = True  # False: the architecture's seeded random init (a control)


@dataclass
class EvalSummary:
    """What an evaluation did: cache hits per split, timings, and the rows it wrote."""

    run_id: str
    out: str
    backbone: str
    dataset: str
    cache_hit: bool
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["linear.epochs=20", "knn.ks=[10,20]"]`` → ``{"linear": {"epochs": 20}, "knn": {"ks": [10, 20]}}``.

    Values are parsed as YAML scalars or lists; a bare comma list ``10,20`` becomes a list too.
    """
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        proto, dot, name = key.partition(".")
        if not sep or not dot or not proto or not name:
            raise OptionError("--set", f"{item!r}: expected PROTOCOL.KEY=VALUE, e.g. linear.epochs=20")
        text = f"[{raw}]" if "," in raw and not raw.lstrip().startswith("[") else raw
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            raise OptionError("--set", f"{item!r}: cannot parse value {raw!r}") from None
        out.setdefault(proto, {})[name] = value
    return out


def check_protocol_list(protocols: list[str], options: dict[str, dict[str, Any]]) -> None:
    """One line for an empty or repeated protocol list, or options of a protocol not being run."""
    if not protocols:
        raise RadprobeError("--protocol: expected at least one protocol name")
    if len(set(protocols)) != len(protocols):
        raise OptionError(
            "--protocol", f"{','.join(protocols)}: a protocol is listed twice", setting="protocols"
        )
    for proto in options:
        if proto not in protocols:
            raise OptionError(
                "--set", f"{proto}.…: protocol {proto!r} is not being run (running: {', '.join(protocols)})"
            )


def check_n_boot(n_boot: int) -> None:
    """One line for a negative number of bootstrap resamples."""
    if n_boot < 0:
        raise OptionError(
            "--bootstrap", f"{n_boot}: expected a non-negative number of resamples", setting="n_boot"
        )


def image_cache(cfg: EvalConfig) -> ImageCache | None:
    """The run's decoded-image cache (``<cache root>/images``), or None where the run or the
    environment turns it off (``--no-image-cache``, ``RADPROBE_IMAGE_CACHE=0``)."""
    if not (cfg.image_cache and image_cache_enabled()):
        return None
    return ImageCache((cfg.cache_root or cache_dir()) / "images")
