"""Dataset presets: public radiology datasets read in their published on-disk layout.

Address one as ``<preset>:<root_dir>[?option=value&...]``, e.g. ``nih-cxr14:/data/NIH?paper=1``.
``describe_dataset(name)`` tells what layout, labels, split rule and options a preset expects;
``paper=1`` applies the conventions of Baharoon et al. (arXiv 2312.02366) (explicit options win).

Test replicas of every layout: :mod:`radprobe.data.presets.replicas`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from radprobe.data.presets.registry import PRESETS, PresetInfo
from radprobe.errors import DataError

if TYPE_CHECKING:
    from radprobe.data.formats.common import Source
    from radprobe.data.spec import Spec

log = logging.getLogger(__name__)


def _info(name: str) -> PresetInfo:
    key = name.split(":", 1)[0].strip().lower()
    if key not in PRESETS:
        raise DataError(f"unknown dataset preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[key]


def describe_dataset(name: str) -> dict[str, Any]:
    """Metadata of a preset (layout, labels, split rule, modality, resolution, metric, citation, URL,
    options) or of a synthetic set; ``name`` may carry a ``:<path>`` suffix, which is ignored."""
    key = name.split(":", 1)[0].strip().lower()
    if key == "synthetic" and ":" in name:
        key = name.split(":", 1)[1]
    if key in PRESETS:
        return PRESETS[key].describe()
    from radprobe.data.synthetic import list_synthetic

    for row in list_synthetic():
        if row["name"] == key:
            return dict(row)
    raise DataError(
        f"unknown dataset {name!r}; presets: {', '.join(PRESETS)}; synthetic: "
        f"{', '.join(r['name'] for r in list_synthetic())}"
    )


def list_presets() -> list[dict[str, Any]]:
    """``describe_dataset`` of every preset, in registry order."""
    return [p.describe() for p in PRESETS.values()]


def expand_paper(info: PresetInfo, options: dict[str, str]) -> dict[str, str]:
    """Options with the paper's defaults filled in when ``paper=1`` (explicit options win)."""
    flag = options.get("paper", "").strip().lower()
    if flag in ("", "0", "false", "no", "off"):
        return dict(options)
    if flag not in ("1", "true", "yes", "on"):
        raise DataError(f"paper={options['paper']!r}: expected 1 or 0")
    from radprobe.data.spec import parse_query  # spec imports this package: import late

    return {**parse_query(info.paper, f"{info.name} paper options"), **options}


def index_preset(spec: Spec) -> Source:
    """Index ``<preset>:<root>`` with the preset's reader."""
    info = _info(spec.scheme)
    options = expand_paper(info, spec.options)
    module, _, func = info.module.partition(":")
    reader = getattr(importlib.import_module(module), func)
    src: Source = reader(replace(spec, options=options))
    if "paper" in options and options["paper"] not in ("", "0"):
        src.conventions.setdefault("paper", info.paper or "(no paper-specific options)")
    return src


def download_medmnist(name: str, size: int = 28, root: str = ".") -> str:
    """Download one MedMNIST file (checked against its published md5); see ``presets.medmnist``."""
    from radprobe.data.presets.medmnist import download_medmnist as _download

    return str(_download(name, size, root))


__all__ = ["PRESETS", "PresetInfo", "describe_dataset", "download_medmnist", "index_preset", "list_presets"]
