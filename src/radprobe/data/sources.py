"""Former home of indexing, kept so ``radprobe.data.sources`` imports keep working.

The dispatcher is :mod:`radprobe.data.index`; per-format indexers and the shared ``Source`` type are in
:mod:`radprobe.data.formats`. Nothing in radprobe imports this module.
"""

from __future__ import annotations

from radprobe.data.formats.common import (
    NEGATIVE_NAMES,
    TASKS,
    PatientRule,
    Source,
    axis_option,
    expand_slices,
    infer_task,
    ndim_of,
    order_classes,
    read_options,
    rel_id,
    seg_classes,
)
from radprobe.data.formats.folder import index_tree
from radprobe.data.formats.manifest import index_manifest
from radprobe.data.formats.npz import index_npz, npz_shapes
from radprobe.data.index import duplicate_issues, index

__all__ = [
    "NEGATIVE_NAMES",
    "TASKS",
    "PatientRule",
    "Source",
    "axis_option",
    "duplicate_issues",
    "expand_slices",
    "index",
    "index_manifest",
    "index_npz",
    "index_tree",
    "infer_task",
    "ndim_of",
    "npz_shapes",
    "order_classes",
    "read_options",
    "rel_id",
    "seg_classes",
]
