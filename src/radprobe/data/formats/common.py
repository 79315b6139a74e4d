"""What every indexer shares: the ``Source`` it returns and helpers for classes, tasks and patients.

Indexing never reads pixel data (except mask values when segmentation classes must be inferred);
``check.py`` does that. Problems with single samples (missing label, missing file, unknown split,
duplicated id) are collected rather than raised, so ``check_dataset`` can report all of them;
``load_dataset`` raises on the first error.

Sample ids are paths relative to the dataset root without suffix (``#<slice>`` appended for slices).
Patient ids come from a manifest column, ``patient_re`` (``re.search`` on that relative path: first
group, else the whole match), the DICOM PatientID tag, or else the sample id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from radprobe.data.problems import Problem, error
from radprobe.data.readers import (
    MASK_SET_KINDS,
    VOLUME_KINDS,
    ReadOptions,
    mask_set_files,
    read_mask,
    strip_suffix,
    volume_depth,
)
from radprobe.data.records import ImageRef, Record, TaskType
from radprobe.data.spec import Spec, opt_bool, opt_int, opt_list, opt_window
from radprobe.errors import DataError

TASKS = ("binary", "multiclass", "multilabel", "segmentation")
# fmt: off
NEGATIVE_NAMES = frozenset({
    "0", "normal", "negative", "neg", "no finding", "no_finding", "nofinding", "healthy", "benign",
    "false", "no", "absent", "control", "none",
})
# fmt: on


@dataclass
class Source:
    """What indexing found: everything a Dataset needs plus the problems met on the way."""

    name: str
    task: TaskType
    classes: tuple[str, ...]
    records: list[Record]
    ndim: int
    root: Path
    modality: str = ""
    read: ReadOptions = field(default_factory=ReadOptions)
    mask_values: tuple[int, ...] | None = None
    has_patients: bool = True
    issues: list[Problem] = field(default_factory=list)
    conventions: dict[str, str] = field(default_factory=dict)
    fractions: tuple[float, float, float] | None = None  # overrides load_dataset's fractions
    patient_counts: tuple[int, int, int] | None = None  # exact patients per split instead of fractions
    mask_classes: tuple[str, ...] = ()  # a labelled dataset whose records also carry masks


# ---------------------------------------------------------------------------- the data root

OUTSIDE_ROOT_HINT = (
    "move the file under the root, set root= to a folder that holds it, or add allow_outside_root=1 "
    "to the spec if the manifest is trusted"
)


class OutsideRootError(DataError):
    """A file of the dataset resolves outside its root; refused unless ``allow_outside_root=1``."""


class RootGuard:
    """Refuses files that resolve (``..``, absolute paths, symlinks) outside the dataset root.

    Manifests travel between people and machines; a row must not make radprobe read (and report
    results on) files its author chose anywhere on the reader's disk.
    """

    def __init__(self, root: Path | str, options: dict[str, str]) -> None:
        self.root = os.path.realpath(root)
        self.allowed = opt_bool(options, "allow_outside_root")
        self._dirs: dict[str, str] = {}  # realpath of each folder, as most files share a few folders
        self._seen: set[str] = set()

    def real(self, path: str) -> str:
        """``os.path.realpath(path)``, resolving each parent folder once."""
        head, tail = os.path.split(path)
        if tail in ("", ".", ".."):
            return os.path.realpath(path)
        if head not in self._dirs:
            self._dirs[head] = os.path.realpath(head or ".")
        full = os.path.join(self._dirs[head], tail)
        return os.path.realpath(full) if os.path.islink(full) else full

    def inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def check(self, path: str, where: str, what: str, shown: str | None = None) -> None:
        """Raise ``OutsideRootError`` naming ``where`` and the path (``shown``: as the manifest gives it)."""
        if self.allowed or path in self._seen:
            return
        real = self.real(path)
        if not self.inside(real):
            raise OutsideRootError(
                f"{where}: {what} {shown or repr(path)} resolves to {real}, outside the dataset root "
                f"{self.root}; {OUTSIDE_ROOT_HINT}"
            )
        self._seen.add(path)

    def check_ref(self, ref: ImageRef, where: str, what: str) -> None:
        """Every file ``ref`` reads: mask-set members, and symlinks inside series/stack folders."""
        if self.allowed or ref.path in self._seen:
            return
        files = mask_set_files(ref) if ref.kind in MASK_SET_KINDS else [ref.path]
        for f in files[1:]:
            self.check(f, where, what)
        if ref.kind in ("dicom-series", "image-stack") and os.path.isdir(ref.path):
            with os.scandir(ref.path) as entries:
                for e in entries:
                    if e.is_symlink():
                        self.check(e.path, where, what)
        self.check(ref.path, where, what)

    def check_records(self, records: list[Record]) -> None:
        """Check each record's image and mask, naming its manifest row or else its sample id."""
        if self.allowed:
            return
        for r in records:
            row = r.meta.get("row")
            where = f"{r.meta['manifest']} row {row}" if row is not None else f"sample {r.sample_id}"
            self.check_ref(r.image, where, "image")
            if r.mask is not None:
                self.check_ref(r.mask, where, "mask")


# ---------------------------------------------------------------------------- shared helpers


def rel_id(path: Path, root: Path) -> str:
    """Sample id from a path: relative to ``root`` (when inside it), posix, without suffix."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = path
    parts = list(rel.parts)
    parts[-1] = strip_suffix(parts[-1])
    return "/".join(parts)


def order_classes(observed: Iterable[str], explicit: list[str] | None) -> tuple[str, ...]:
    """Class order: ``explicit`` if given; else numeric or case-insensitive sort, and for two classes a
    "normal"-like one first so index 1 is the positive class."""
    if explicit:
        return tuple(explicit)
    names = sorted(set(observed))
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return tuple(sorted(names, key=int))
    names.sort(key=lambda n: (n.lower(), n))
    if len(names) == 2 and names[1].lower() in NEGATIVE_NAMES and names[0].lower() not in NEGATIVE_NAMES:
        names.reverse()
    return tuple(names)


def infer_task(classes: tuple[str, ...], explicit: str | None) -> TaskType:
    """binary for two classes, else multiclass; an explicit ``task=`` must fit single-label data."""
    if explicit in (None, ""):
        return "binary" if len(classes) == 2 else "multiclass"
    if explicit not in ("binary", "multiclass"):
        raise DataError(f"task={explicit!r} does not fit single-label data; expected binary or multiclass")
    if explicit == "binary" and len(classes) != 2:
        raise DataError(f"task=binary but {len(classes)} classes were found: {list(classes)}")
    return explicit  # type: ignore[return-value]


class PatientRule:
    """Patient id from ``patient_re`` on a sample's relative path."""

    def __init__(self, pattern: str | None) -> None:
        self.pattern = pattern
        try:
            self.regex = re.compile(pattern) if pattern else None
        except re.error as e:
            raise DataError(f"patient_re={pattern!r} is not a valid regular expression: {e}") from None

    def __call__(self, rel: str, issues: list[Problem], what: str) -> str | None:
        if self.regex is None:
            return None
        m = self.regex.search(rel)
        if not m:
            issues.append(error(f"{what}: patient_re={self.pattern!r} does not match {rel!r}"))
            return None
        return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)


def read_options(options: dict[str, str]) -> ReadOptions:
    return ReadOptions(
        window=opt_window(options.get("window")),
        norm=(options.get("norm") or "auto").lower(),
        bits=opt_int(options, "bits"),
        channel=opt_int(options, "channel", 0) or 0,
        pad=opt_int(options, "pad"),
        orient=(options.get("orient") or "canonical").strip().lower(),
    )


def axis_option(options: dict[str, str]) -> int:
    axis = opt_int(options, "axis", 2)
    if axis not in (0, 1, 2):
        raise DataError(f"axis={axis}: expected 0, 1 or 2")
    return axis  # type: ignore[return-value]


def seg_classes(
    records: list[Record], options: dict[str, str], issues: list[Problem]
) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """Segmentation class names and value mapping: from options, else from the mask values present."""
    names = opt_list(options.get("classes"))
    values = opt_list(options.get("mask_values"))
    mask_values: tuple[int, ...] | None = None
    if values:
        try:
            mask_values = tuple(int(v) for v in values)
        except ValueError:
            raise DataError(f"mask_values={options['mask_values']!r}: expected integers") from None
        if names and len(names) != len(mask_values):
            raise DataError(f"classes ({len(names)}) and mask_values ({len(mask_values)}) differ in length")
    if names:
        return tuple(names), mask_values
    if mask_values:
        return ("background", *(f"class_{i}" for i in range(1, len(mask_values)))), mask_values
    # Reading every mask is the only way to know the classes; name them with classes= to skip it.
    present: set[int] = set()
    seen: set[tuple[str, str | None, int | None]] = set()
    for r in records:
        assert r.mask is not None
        key = (r.mask.path, r.mask.key, r.mask.index if r.mask.kind not in VOLUME_KINDS else None)
        if key in seen:
            continue
        seen.add(key)
        try:
            present.update(int(v) for v in np.unique(read_mask(replace(r.mask, index=key[2]))))
        except DataError:
            continue  # reported by check_dataset
    present.add(0)
    top = max(present)
    if top + 1 <= 2 * len(present):
        return ("background", *(f"class_{i}" for i in range(1, top + 1))), None
    ordered = tuple(sorted(present))
    return ("background", *(f"class_{i}" for i in range(1, len(ordered)))), ordered


def expand_slices(records: list[Record], issues: list[Problem], orient: str = "canonical") -> list[Record]:
    """One 2D record per slice of each volume record (``slices=1``); ``orient`` as the dataset's
    ``ReadOptions.orient``, which decides a NIfTI's depth along ``axis``."""
    out = []
    for r in records:
        if r.image.kind not in VOLUME_KINDS or r.image.index is not None:
            out.append(r)
            continue
        try:
            depth = volume_depth(r.image, orient)
        except DataError as e:
            issues.append(error(f"sample {r.sample_id}: {e}"))
            continue
        for k in range(depth):
            mask = replace(r.mask, index=k, axis=r.image.axis) if r.mask is not None else None
            out.append(
                replace(
                    r,
                    sample_id=f"{r.sample_id}#{k}",
                    image=replace(r.image, index=k),
                    mask=mask,
                    meta={**r.meta, "volume": r.sample_id, "slice": k},
                )
            )
    return out


def ndim_of(records: list[Record], issues: list[Problem], where: str) -> int:
    volumes = {r.image.kind in VOLUME_KINDS and r.image.index is None for r in records}
    if len(volumes) > 1:
        issues.append(error(f"{where} mixes 2D images and 3D volumes; use one kind per dataset"))
    return 3 if volumes == {True} else 2


def finish_source(
    spec: Spec,
    records: list[Record],
    task: TaskType,
    classes: tuple[str, ...],
    default_name: str,
    root: Path,
    issues: list[Problem],
    has_patients: bool,
    opts: dict[str, str],
) -> Source:
    """The ``Source`` of indexed records: segmentation classes, ``slices=1`` expansion, dimensionality."""
    read = read_options(opts)
    mask_values = None
    mask_classes: tuple[str, ...] = ()
    if task == "segmentation":
        classes, mask_values = seg_classes(records, opts, issues)
    elif opts.get("mask_classes"):
        mask_classes, mask_values = _label_masks(spec, records, opts, issues)
    if task != "segmentation" and len(classes) < 2 and task != "multilabel":
        issues.append(
            error(f"{spec.path}: found {len(classes)} class(es) {list(classes)}; need at least two")
        )
    if opt_bool(opts, "slices"):
        records = expand_slices(records, issues, read.orient)
    ndim = ndim_of(records, issues, spec.path)
    return Source(
        name=opts.get("name") or default_name,
        task=task,
        classes=classes,
        records=records,
        ndim=ndim,
        root=root,
        modality=opts.get("modality", ""),
        read=read,
        mask_values=mask_values,
        has_patients=has_patients,
        issues=issues,
        mask_classes=mask_classes,
    )


def _label_masks(
    spec: Spec, records: list[Record], opts: dict[str, str], issues: list[Problem]
) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """Mask classes of a labelled dataset (``mask_classes=``): every record must name a mask."""
    missing = [r.sample_id for r in records if r.mask is None]
    if missing:
        raise DataError(
            f"{spec.path}: mask_classes= is set but {len(missing)} row(s) name no mask, e.g. sample "
            f"{missing[0]!r}; give every row a mask or drop mask_classes="
        )
    names = {"classes": opts["mask_classes"]}
    if "mask_values" in opts:
        names["mask_values"] = opts["mask_values"]
    classes, values = seg_classes(records, names, issues)
    if len(classes) < 2:
        raise DataError(
            f"mask_classes={opts['mask_classes']!r}: expected at least two classes (background first)"
        )
    return classes, values
