"""Indexing dispatch: a parsed spec -> the indexer of its format or preset -> a ``Source``.

The per-format indexers live in :mod:`radprobe.data.formats`, the presets' in
:mod:`radprobe.data.presets`; both import shared types from ``formats.common``, never this module.
"""

from __future__ import annotations

from collections import Counter

from radprobe.data.formats.common import RootGuard, Source
from radprobe.data.formats.folder import index_tree
from radprobe.data.formats.manifest import index_manifest
from radprobe.data.formats.npz import index_npz
from radprobe.data.presets import index_preset
from radprobe.data.presets.registry import PRESETS
from radprobe.data.problems import Problem, error
from radprobe.data.records import Record, origin
from radprobe.data.spec import Spec
from radprobe.errors import DataError


def _index(spec: Spec) -> Source:
    if spec.scheme in PRESETS:
        return index_preset(spec)
    if spec.scheme in ("csv", "parquet"):
        return index_manifest(spec)
    if spec.scheme == "npz":
        return index_npz(spec)
    if spec.scheme in ("folder", "nifti", "dicom"):
        return index_tree(spec)
    raise DataError(f"dataset scheme {spec.scheme!r} cannot be indexed here")


def index(spec: Spec) -> Source:
    """Index a parsed (non-synthetic) spec.

    Raises :class:`OutsideRootError` when a file of any format or preset resolves outside the
    dataset root (symlinks followed), unless the spec says ``allow_outside_root=1``.
    """
    src = _index(spec)
    if spec.scheme not in ("csv", "parquet"):  # manifests check each cell as they read it, naming the row
        RootGuard(src.root, spec.options).check_records(src.records)
    return src


def duplicate_issues(records: list[Record]) -> list[Problem]:
    """One error per sample id used more than once, naming the manifest rows or files."""
    counts = Counter(r.sample_id for r in records)
    out = []
    for sid, n in counts.items():
        if n > 1:
            where = [origin(r) for r in records if r.sample_id == sid]
            out.append(error(f"duplicated sample id {sid!r} ({n} times: {', '.join(where)})"))
    return out
