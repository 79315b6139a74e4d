"""The Dataset object and ``load_dataset``: index a spec, validate, assign splits, load pixels."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.data.classes import class_problems
from radprobe.data.formats.common import Source
from radprobe.data.index import duplicate_issues, index
from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import ReadOptions, read_image, read_mask
from radprobe.data.records import SPLITS, ImageRef, Record, TaskType, labels_array, origin
from radprobe.data.spec import Spec, opt_list, parse_spec, validate_options
from radprobe.data.splits import (
    apply_split_file,
    assign_patient_counts,
    assign_splits,
    check_fractions,
    check_leakage,
    split_file_path,
    write_split_file,
)
from radprobe.errors import DataError
from radprobe.utils import digest

DIGEST_VERSION = 1
LOGGED_WARNINGS = 3
log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """A loaded dataset: records with splits, and the readers that turn them into arrays.

    Plain data only, so it pickles to DataLoader workers. Treat ``records`` as read-only: the
    manifest digest is cached per record content.
    """

    name: str
    spec: str
    task: TaskType
    classes: tuple[str, ...]
    records: list[Record]
    ndim: int = 2
    root: str = ""
    modality: str = ""
    read: ReadOptions = field(default_factory=ReadOptions)
    mask_values: tuple[int, ...] | None = None
    has_patients: bool = True
    split_file: str | None = None
    # Label/split conventions a preset applied (e.g. CheXpert's uncertainty policy); part of the digest.
    conventions: dict[str, str] = field(default_factory=dict)
    # A labelled dataset whose records also carry masks (``mask_classes=``): the mask class names,
    # so the same images serve segmentation protocols through ``view("segmentation")``.
    mask_classes: tuple[str, ...] = ()
    _digest_cache: dict[int, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def kinds(self) -> tuple[str, ...]:
        """What this dataset can be evaluated as: ``classification``, ``segmentation`` or both."""
        if self.task == "segmentation":
            return ("segmentation",)
        return ("classification", "segmentation") if self.mask_classes else ("classification",)

    def view(self, kind: str) -> Dataset:
        """This dataset as a ``classification`` or ``segmentation`` dataset (the same records and
        splits). A labelled dataset with ``mask_classes`` has both views; any other only its own."""
        if kind not in self.kinds():
            raise DataError(f"dataset {self.name} has no {kind} view; it is a {self.task} dataset")
        if kind == "segmentation" and self.task != "segmentation":
            return replace(self, task="segmentation", classes=self.mask_classes, mask_classes=())
        return self

    def split(self, name: str) -> list[Record]:
        """Records of one split (``train``/``val``/``test``), in dataset order."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == name]

    def splits(self) -> dict[str, list[Record]]:
        """Non-empty splits in train/val/test order."""
        out = {s: self.split(s) for s in SPLITS}
        return {s: recs for s, recs in out.items() if recs}

    def load_image(self, record: Record) -> np.ndarray:
        """float32 in [0, 1]: (H, W) or (H, W, 3); (D, H, W) for 3D datasets."""
        with _naming_row(record):
            return read_image(record.image, self.read)

    def load_mask(self, record: Record) -> np.ndarray:
        """int64 class-index map with the image's spatial shape."""
        if record.mask is None:
            raise DataError(f"sample {record.sample_id} of dataset {self.name} has no mask")
        with _naming_row(record):
            raw = read_mask(record.mask, self.read)  # the image's orientation (orient=)
        if self.mask_values is not None:
            values = np.asarray(self.mask_values)
            order = np.argsort(values)
            ordered = values[order]
            pos = np.clip(np.searchsorted(ordered, raw), 0, len(values) - 1)
            ok = ordered[pos] == raw
            if not ok.all():
                bad = np.unique(raw[~ok])[:5].tolist()
                raise DataError(
                    f"mask {record.mask.path} has values {bad} not in mask_values {list(self.mask_values)}"
                )
            return order[pos].astype(np.int64)
        if len(self.classes) == 2 and raw.size and raw.max() > 1:
            return (raw > 0).astype(np.int64)  # binary masks are often stored as 0/255
        return raw

    def labels(self, records: list[Record]) -> np.ndarray:
        """(N,) int64 class indices, or (N, C) int64 multi-hot for multilabel."""
        return labels_array(records, self.task, len(self.classes))

    def patients(self, records: list[Record]) -> np.ndarray:
        """Patient ids as a str array (for patient-level bootstrap)."""
        return np.asarray([r.patient_id for r in records], dtype=str)

    def _rel(self, path: str) -> str:
        if self.root:
            try:
                return Path(path).relative_to(self.root).as_posix()
            except ValueError:
                pass
        return Path(path).as_posix()

    def _ref(self, ref: ImageRef | None) -> list[Any] | None:
        if ref is None:
            return None
        return [self._rel(ref.path), ref.kind, ref.index, ref.axis, ref.key]

    def manifest_digest(self) -> str:
        """Digest of name, task, classes, read options, every record and each referenced file's size.

        Paths enter relative to the dataset root, so moving the dataset does not change it.
        """
        key = hash(
            (
                self.name,
                self.task,
                self.classes,
                self.ndim,
                self.read,
                self.mask_values,
                self.mask_classes,
                tuple(sorted(self.conventions.items())),
                tuple(self.records),
            )
        )
        if key not in self._digest_cache:
            sizes: dict[str, int | None] = {}
            rows = []
            for r in self.records:
                for ref in (r.image, r.mask):
                    if ref is not None:
                        rel = self._rel(ref.path)
                        if rel not in sizes:
                            sizes[rel] = _size(ref.path)
                label = list(r.label) if isinstance(r.label, tuple) else r.label
                rows.append(
                    [r.sample_id, r.patient_id, r.split, self._ref(r.image), self._ref(r.mask), label]
                )
            payload = {
                "v": DIGEST_VERSION,
                "name": self.name,
                "task": self.task,
                "classes": list(self.classes),
                "ndim": self.ndim,
                "read": self.read.to_dict(),
                "mask_values": self.mask_values,
                "records": rows,
                "sizes": sizes,
            }
            if self.conventions:  # absent otherwise, so digests of plain datasets stay as they were
                payload["conventions"] = dict(sorted(self.conventions.items()))
            if self.mask_classes:  # likewise
                payload["mask_classes"] = list(self.mask_classes)
            self._digest_cache.clear()
            self._digest_cache[key] = digest(payload)
        return self._digest_cache[key]

    def split_digest(self, name: str) -> str:
        """Digest of the manifest digest and the ordered sample ids of one split."""
        return digest(
            {
                "manifest": self.manifest_digest(),
                "split": name,
                "ids": [r.sample_id for r in self.split(name)],
            }
        )

    def summary(self) -> dict[str, Any]:
        """Counts for listings and logs."""
        out: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "ndim": self.ndim,
            "classes": list(self.classes),
            "samples": len(self.records),
            "patients": len({r.patient_id for r in self.records}),
            "splits": {s: len(v) for s, v in self.splits().items()},
        }
        if self.conventions:
            out["conventions"] = dict(self.conventions)
        return out


@contextlib.contextmanager
def _naming_row(record: Record) -> Iterator[None]:
    """Prefix read errors with the record's manifest row: the file path alone is hard to find in a
    manifest of thousands of rows."""
    try:
        yield
    except DataError as e:
        if record.meta.get("row") is None:
            raise
        raise DataError(f"{origin(record)} (sample {record.sample_id}): {e}") from None


def _size(path: str) -> int | None:
    try:
        if os.path.isdir(path):
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return os.path.getsize(path)
    except OSError:
        return None


def _source(spec_text: str) -> tuple[Source, Spec]:
    """The indexed source and the spec it was indexed from (a synthetic set's generated one)."""
    spec = parse_spec(spec_text)
    if spec.scheme == "synthetic":
        from radprobe.data.synthetic import ensure_synthetic, synthetic_spec

        name = spec.path
        inner = parse_spec(synthetic_spec(name, ensure_synthetic(name)))
        inner = replace(inner, text=spec.text, options={**inner.options, **spec.options})
        validate_options(inner.scheme, inner.options, spec.text)
        src = index(inner)
        if "name" not in spec.options:
            src.name = name
        return src, inner
    return index(spec), spec


def build(
    spec: str,
    *,
    split_seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    save: bool = True,
) -> tuple[Dataset, list[Problem]]:
    """Index, validate and split a dataset, returning it with every problem found.

    ``save=False`` (used by checks) neither writes nor requires a split file. A source may bring its
    own fractions or exact patient counts (preset options ``fractions=``/``patients=``); they win.
    """
    fr = check_fractions(fractions)
    src, parsed = _source(spec)
    text = parsed.text
    if src.fractions is not None:
        fr = check_fractions(src.fractions)
    issues = list(src.issues) + duplicate_issues(src.records)
    ds = Dataset(
        name=src.name,
        spec=text,
        task=src.task,
        classes=src.classes,
        records=src.records,
        ndim=src.ndim,
        root=str(src.root),
        modality=src.modality,
        read=src.read,
        mask_values=src.mask_values,
        has_patients=src.has_patients,
        conventions=dict(src.conventions),
        mask_classes=src.mask_classes,
    )
    present = {r.split for r in ds.records}
    if not ds.records:
        issues.append(error(f"dataset {text} has no usable samples"))
        return ds, issues
    counts = src.patient_counts
    complete = None not in present and all(s in present for s, f in zip(SPLITS, fr, strict=True) if f > 0)
    if counts is not None or not complete:
        path = split_file_path(ds.manifest_digest(), split_seed, counts or fr)
        records = apply_split_file(ds.records, path) if path.is_file() else None
        if records is None:
            try:
                if counts is not None:
                    records = assign_patient_counts(ds.records, ds.task, counts, seed=split_seed)
                else:
                    records = assign_splits(ds.records, ds.task, seed=split_seed, fractions=fr)
            except DataError as e:
                issues.append(error(f"dataset {text}: {e}"))
                return ds, issues
            if save and not any(p.severity == "error" for p in issues):
                write_split_file(path, records)
        ds = replace(ds, records=records, split_file=str(path))
        issues.extend(_empty_splits(ds, counts or fr))
    explicit = bool(opt_list(parsed.options.get("classes")))
    try:
        issues.extend(class_problems(ds.records, ds.task, ds.classes, ds.root, explicit))
    except ValueError as e:  # labels that do not fit the task (a preset bug, not user data)
        issues.append(error(f"dataset {ds.name}: {e}"))
    return ds, issues


def _empty_splits(ds: Dataset, shares: tuple[float, ...]) -> list[Problem]:
    """A split left empty despite its share (too few patients): say so here, since eval, studies and
    fine-tuning refuse such a dataset only later, with less to go on."""
    empty = [s for s, f in zip(SPLITS, shares, strict=True) if f > 0 and not ds.split(s)]
    if not empty:
        return []
    which = f"splits {' and '.join(empty)} are" if len(empty) > 1 else f"split {empty[0]} is"
    patients = len({r.patient_id for r in ds.records})
    wanted = sum(1 for f in shares if f > 0)
    return [
        warning(
            f"{which} empty: {patients} patient(s) "
            f"({len(ds.records)} sample(s)) cannot fill {', '.join(SPLITS)} at shares "
            f"{', '.join(f'{f:g}' for f in shares)}, and eval needs every split; add samples from at "
            f"least {wanted} patients (or give each sample a split: a split column, or train/val/test "
            "folders)"
        )
    ]


def _log_warnings(spec: str, warnings: list[Problem]) -> None:
    """Log the first few warnings and a count of the rest, which ``radprobe data check`` lists."""
    for p in warnings[:LOGGED_WARNINGS]:
        log.warning("dataset %s: %s", spec, p.message)
    if len(warnings) > LOGGED_WARNINGS:
        log.warning(
            "dataset %s: %d more warning(s); run `radprobe data check %s` to list them",
            spec,
            len(warnings) - LOGGED_WARNINGS,
            spec,
        )


def load_dataset(
    spec: str, *, split_seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> Dataset:
    """Load a dataset from a spec string (see ``radprobe.data.spec``), with train/val/test splits.

    Raises :class:`DataError` on the first problem that makes the dataset unusable; use
    ``check_dataset`` to list them all.
    """
    ds, issues = build(spec, split_seed=split_seed, fractions=fractions)
    errors = [p for p in issues if p.severity == "error"]
    if errors:
        more = (
            f" (and {len(errors) - 1} more; run `radprobe data check` on it to list all)"
            if len(errors) > 1
            else ""
        )
        raise DataError(f"dataset {spec}: {errors[0].message}{more}")
    _log_warnings(spec, [p for p in issues if p.severity == "warning"])
    leaks = check_leakage(ds.records)
    if leaks:
        # Given splits are respected even when they leak; say so, since it inflates test metrics.
        log.warning("dataset %s: %d patient(s) appear in several splits, e.g. %s", spec, len(leaks), leaks[0])
    return ds
