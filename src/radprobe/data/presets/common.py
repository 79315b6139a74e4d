"""Helpers shared by the preset readers: required files and columns, split options, the final Source."""

from __future__ import annotations

from pathlib import Path

from radprobe.data.formats.common import Source, expand_slices, ndim_of, read_options
from radprobe.data.presets.registry import PRESETS
from radprobe.data.problems import Problem
from radprobe.data.readers import VOLUME_KINDS
from radprobe.data.records import Record, TaskType
from radprobe.data.spec import Spec, opt_bool, opt_list
from radprobe.errors import DataError


def root_dir(spec: Spec) -> Path:
    """The preset's root folder (the spec parser has checked that it exists)."""
    root = Path(spec.path)
    if not root.is_dir():
        raise DataError(f"{spec.scheme}: expects a dataset folder, got the file {root}")
    return root


def find_file(root: Path, names: tuple[str, ...], what: str, scheme: str) -> Path:
    """The first of ``names`` that exists in ``root``; else an error naming every candidate."""
    for n in names:
        if (root / n).is_file():
            return root / n
    listed = " or ".join(names)
    raise DataError(f"{scheme}: missing {listed} in {root} ({what})")


def read_table(path: Path, required: tuple[str, ...], scheme: str) -> list[dict[str, str]]:
    """CSV rows as stripped strings; a missing column is an error naming the expected columns."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises many types for malformed CSV
        raise DataError(f"{scheme}: cannot read {path}: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        got = [c for c in df.columns if not c.startswith("Unnamed")]
        raise DataError(
            f"{scheme}: {path.name} lacks column(s) {', '.join(map(repr, missing))}; expected columns "
            f"{', '.join(map(repr, required))} (found: {', '.join(map(repr, got))})"
        )
    return [{k: str(v).strip() for k, v in row.items()} for row in df.to_dict(orient="records")]


def split_numbers(
    spec: Spec, *, patients_allowed: bool
) -> tuple[tuple[float, float, float] | None, tuple[int, int, int] | None]:
    """``fractions=`` (shares or counts, normalised) and ``patients=`` (exact counts) options."""
    opts = spec.options
    fractions = counts = None
    if opts.get("fractions"):
        try:
            vals = [float(v) for v in opt_list(opts["fractions"])]
        except ValueError:
            vals = []
        if len(vals) != 3 or min(vals) < 0 or sum(vals) <= 0:
            raise DataError(f"fractions={opts['fractions']!r}: expected three non-negative numbers")
        fractions = (vals[0] / sum(vals), vals[1] / sum(vals), vals[2] / sum(vals))
    if opts.get("patients"):
        if not patients_allowed:
            raise DataError(f"{spec.scheme}: patients= needs a dataset without official splits")
        try:
            ints = [int(v) for v in opt_list(opts["patients"])]
        except ValueError:
            ints = []
        if len(ints) != 3 or min(ints) < 0:
            raise DataError(f"patients={opts['patients']!r}: expected three counts, e.g. 69,23,46")
        if fractions is not None:
            raise DataError(f"{spec.scheme}: give fractions= or patients=, not both")
        counts = (ints[0], ints[1], ints[2])
    return fractions, counts


def finish(
    spec: Spec,
    records: list[Record],
    task: TaskType,
    classes: tuple[str, ...],
    root: Path,
    issues: list[Problem],
    conventions: dict[str, str],
    *,
    default_name: str | None = None,
    patients_allowed: bool = False,
    modality: str = "",
) -> Source:
    """The Source of a preset: slices expanded on request, split options and conventions attached."""
    opts = spec.options
    fractions, counts = split_numbers(spec, patients_allowed=patients_allowed)
    read = read_options(opts)
    if opt_bool(opts, "slices"):
        if not any(r.image.kind in VOLUME_KINDS for r in records):
            raise DataError(f"{spec.scheme}: slices=1 applies to volumes; this dataset holds 2D images")
        records = expand_slices(records, issues, read.orient)
    return Source(
        name=opts.get("name") or default_name or spec.scheme,
        task=task,
        classes=classes,
        records=records,
        ndim=ndim_of(records, issues, spec.path),
        root=root,
        modality=modality or PRESETS[spec.scheme].modality,
        read=read,
        mask_values=None,
        has_patients=True,
        issues=issues,
        conventions=conventions,
        fractions=fractions,
        patient_counts=counts,
    )
