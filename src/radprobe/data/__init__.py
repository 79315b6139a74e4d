"""Datasets: spec strings -> records with patient-level splits -> float32 [0, 1] images and masks.

Public API::

    load_dataset(spec, *, split_seed=0, fractions=(0.7, 0.1, 0.2)) -> Dataset
    list_datasets() -> list[dict]
    describe_dataset(name) -> dict
    check_dataset(spec) -> list[Problem]   (raises OutsideRootError, as load_dataset does, for files
                                            outside the dataset root: a refusal, not a problem)

Public datasets are read in their published layout through presets (``nih-cxr14:/data/NIH``, ...):
:mod:`radprobe.data.presets`.

Spec syntax and options: :mod:`radprobe.data.spec`. Intensity handling: :mod:`radprobe.data.readers`.
Split policy and split files: :mod:`radprobe.data.splits`. Test data: :mod:`radprobe.data.synthetic`.
"""

from __future__ import annotations

from typing import Any

from radprobe.data.check import check_dataset
from radprobe.data.dataset import Dataset, load_dataset
from radprobe.data.formats.common import OutsideRootError
from radprobe.data.presets import describe_dataset, list_presets
from radprobe.data.problems import Problem
from radprobe.data.readers import ReadOptions, read_image, read_mask
from radprobe.data.records import SPLITS, ImageRef, Record, TaskType, labels_array
from radprobe.data.spec import SPEC_FORMS, parse_spec
from radprobe.data.splits import assign_splits, check_leakage
from radprobe.data.synthetic import list_synthetic, make_synthetic


def list_datasets() -> list[dict[str, Any]]:
    """Synthetic sets, then presets: name, spec, task, modality, ndim, description, source, format
    (presets add layout, labels, split_rule, resolution, metric, citation, url, options, paper).
    Other data is loaded by path, see ``SPEC_FORMS``."""
    return [*list_synthetic(), *list_presets()]


__all__ = [
    "SPEC_FORMS",
    "SPLITS",
    "Dataset",
    "ImageRef",
    "OutsideRootError",
    "Problem",
    "ReadOptions",
    "Record",
    "TaskType",
    "assign_splits",
    "check_dataset",
    "check_leakage",
    "describe_dataset",
    "labels_array",
    "list_datasets",
    "load_dataset",
    "make_synthetic",
    "parse_spec",
    "read_image",
    "read_mask",
]
