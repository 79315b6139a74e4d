"""Indexing: turn a parsed spec into records, classes and a task, collecting per-sample problems.

Indexing never reads pixel data (except mask values when segmentation classes must be inferred);
``check.py`` does that. Problems with single samples (missing label, missing file, unknown split,
duplicated id) are collected rather than raised, so ``check_dataset`` can report all of them;
``load_dataset`` raises on the first error.

Folder layouts (``folder:``, ``nifti:`` and ``dicom:`` share them; the scheme names the intent)::

    <dir>/<class>/**/<file>                     classification, one sample per file
    <dir>/<class>/**/<series folder>/*.dcm      classification, one 3D sample per DICOM series
    <dir>/{train,val,test}/<class>/...          the same with given splits (aliases: valid, testing, ...)
    <dir>/images/<name>.<ext> + <dir>/masks/<name>[_mask|_seg|_label|_gt].<ext>
                                                segmentation (also imagesTr/labelsTr, labels/, and
                                                nnU-Net "_0000" channel suffixes); optionally under
                                                {train,val,test}/

Sample ids are paths relative to the dataset root without suffix (``#<slice>`` appended for slices).
Patient ids come from a manifest column, ``patient_re`` (``re.search`` on that relative path: first
group, else the whole match), the DICOM PatientID tag, or else the sample id.
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import (
    VOLUME_KINDS,
    ReadOptions,
    dicom_header,
    kind_of,
    read_mask,
    strip_suffix,
    volume_depth,
)
from radprobe.data.records import ImageRef, Record, TaskType
from radprobe.data.spec import Spec, opt_bool, opt_int, opt_list, opt_window
from radprobe.data.splits import normalize_split
from radprobe.errors import DataError

TASKS = ("binary", "multiclass", "multilabel", "segmentation")
# fmt: off
NEGATIVE_NAMES = frozenset({
    "0", "normal", "negative", "neg", "no finding", "no_finding", "nofinding", "healthy", "benign",
    "false", "no", "absent", "control", "none",
})
# fmt: on
PATH_COLS = ("path", "image", "image_path", "filepath", "file", "filename", "img", "Path")
MASK_COLS = ("mask", "mask_path", "segmentation", "seg", "label_path")
ID_COLS = ("sample_id", "id", "image_id")
PATIENT_COLS = ("patient_id", "patient", "PatientID", "Patient ID", "subject_id", "subject", "case_id")
SPLIT_COLS = ("split", "fold", "set", "subset")
LABEL_COLS = ("label", "labels", "class", "target", "diagnosis")
IMAGE_DIRS = ("images", "imagestr", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels", "labelstr", "segmentations", "seg", "gt")
MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "_gt", "_segmentation")
IGNORED_SUFFIXES = (".csv", ".tsv", ".json", ".txt", ".md", ".yaml", ".yml", ".xlsx", ".xls", ".pdf", ".log")


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


def expand_slices(records: list[Record], issues: list[Problem]) -> list[Record]:
    """One 2D record per slice of each volume record (``slices=1``)."""
    out = []
    for r in records:
        if r.image.kind not in VOLUME_KINDS or r.image.index is not None:
            out.append(r)
            continue
        try:
            depth = volume_depth(r.image)
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


# ---------------------------------------------------------------------------- manifests


def _read_table(path: Path, scheme: str) -> list[dict[str, str]]:
    import pandas as pd

    try:
        if scheme == "parquet":
            df = pd.read_parquet(path)
            df = df.astype(object).where(df.notna(), "")
        else:
            sep = "\t" if path.name.lower().endswith(".tsv") else ","
            df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except Exception as e:  # pandas/pyarrow raise many types for malformed tables
        raise DataError(f"cannot read manifest {path}: {e}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return [{k: str(v).strip() for k, v in row.items()} for row in df.to_dict(orient="records")]


def _norm_cell(value: str) -> str:
    """``1.0`` -> ``1`` so numeric labels read the same from CSV and parquet."""
    v = value.strip()
    if re.fullmatch(r"[-+]?\d+(\.0*)?", v):
        return str(int(float(v)))
    return v


def _binary_value(value: str, uncertain: str | None) -> int | None:
    v = _norm_cell(value).lower()
    if v in ("1", "true", "yes"):
        return 1
    if v in ("0", "false", "no"):
        return 0
    if uncertain and v in ("-1", ""):
        return 1 if uncertain == "ones" else 0
    return None


def _pick(
    options: dict[str, str], opt: str, defaults: tuple[str, ...], columns: list[str], path: Path
) -> str | None:
    if options.get(opt):
        col = options[opt]
        if col not in columns:
            raise DataError(
                f"manifest {path} has no column {col!r} (given as {opt}=); columns: {', '.join(columns)}"
            )
        return col
    lower = {c.lower(): c for c in columns}
    for d in defaults:
        if d in columns:
            return d
        if d.lower() in lower:
            return lower[d.lower()]
    return None


def _manifest_ref(
    value: str,
    base: Path,
    key: str | None,
    index: int | None,
    axis: int,
    what: str,
    where: str,
    issues: list[Problem],
) -> ImageRef | None:
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.exists():
        issues.append(error(f"{where}: {what} file not found: {p}"))
        if kind_of(p) is None:
            return None
    kind = kind_of(p)
    if kind is None:
        issues.append(error(f"{where}: unsupported {what} file type: {p}"))
        return None
    return ImageRef(str(p), kind, index=index, axis=axis, key=key if kind == "h5" else None)


def index_manifest(spec: Spec) -> Source:
    path = Path(spec.path)
    opts = spec.options
    rows = _read_table(path, spec.scheme)
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    columns = list(rows[0])
    issues: list[Problem] = []
    base = Path(opts["root"]).expanduser() if opts.get("root") else path.parent
    if not base.is_absolute():
        base = path.parent / base
    base = base.resolve()

    path_col = _pick(opts, "path", PATH_COLS, columns, path)
    if path_col is None:
        raise DataError(
            f"manifest {path} has no image path column; expected one of {', '.join(PATH_COLS[:6])} "
            f"or set path=<column> (columns: {', '.join(columns)})"
        )
    mask_col = _pick(opts, "mask", MASK_COLS, columns, path)
    id_col = _pick(opts, "id", ID_COLS, columns, path)
    patient_col = _pick(opts, "patient", PATIENT_COLS, columns, path)
    split_col = _pick(opts, "split", SPLIT_COLS, columns, path)
    index_col = _pick(opts, "index", (), columns, path)
    sep = opts.get("sep") or None
    uncertain = (opts.get("uncertain") or "").lower() or None
    if uncertain not in (None, "zeros", "ones"):
        raise DataError(f"uncertain={uncertain!r}: expected zeros or ones")
    explicit_task = opts.get("task") or None
    if explicit_task not in (None, *TASKS):
        raise DataError(f"task={explicit_task!r}: expected one of {', '.join(TASKS)}")
    used = {c for c in (path_col, mask_col, id_col, patient_col, split_col, index_col) if c}

    if opts.get("label"):
        label_cols = opt_list(opts["label"])
        for c in label_cols:
            if c not in columns:
                raise DataError(f"manifest {path} has no label column {c!r}; columns: {', '.join(columns)}")
    elif explicit_task == "segmentation":
        label_cols = []
    elif (c := _pick(opts, "label", LABEL_COLS, columns, path)) is not None:
        label_cols = [c]
    elif mask_col:
        label_cols = []  # masks and no label column: segmentation
    else:
        label_cols = [
            c
            for c in columns
            if c not in used
            and any(r[c] != "" for r in rows)
            and all(_binary_value(r[c], uncertain) is not None or r[c] == "" for r in rows)
        ]
        if not label_cols:
            raise DataError(
                f"manifest {path} has no label column; expected 'label', 0/1 columns, a mask column, or "
                f"label=<column>[,<column>...] (columns: {', '.join(columns)})"
            )
    if explicit_task == "segmentation" and not mask_col:
        raise DataError(f"manifest {path}: task=segmentation needs a mask column (mask=<column>)")
    multi = len(label_cols) > 1 or bool(sep) or explicit_task == "multilabel"
    task: TaskType
    if mask_col and not label_cols:
        task = "segmentation"
    elif multi:
        task = "multilabel"
    else:
        task = "binary"  # refined once classes are known

    explicit_classes = opt_list(opts.get("classes")) or None
    negative = opts.get("negative")
    if task == "multilabel" and not sep:
        classes: tuple[str, ...] = tuple(explicit_classes or label_cols)
        if len(classes) != len(label_cols):
            raise DataError(
                f"classes= names {len(classes)} labels but label= gives {len(label_cols)} columns"
            )
    elif task == "multilabel":
        tokens = {t.strip() for r in rows for t in r[label_cols[0]].split(sep) if t.strip()} - {negative}
        classes = order_classes(tokens, explicit_classes) if explicit_classes else tuple(sorted(tokens))
    elif task == "segmentation":
        classes = ()
    else:
        observed = {_norm_cell(r[label_cols[0]]) for r in rows} - {""}
        classes = order_classes(observed, explicit_classes)
        task = infer_task(classes, explicit_task)
    class_index = {c: i for i, c in enumerate(classes)}

    patient_rule = PatientRule(opts.get("patient_re"))
    axis = axis_option(opts)
    key, mask_key = opts.get("key") or None, opts.get("mask_key") or None
    records: list[Record] = []
    offset = 1 if spec.scheme == "parquet" else 2  # CSV: header is line 1
    for i, row in enumerate(rows):
        where = f"{path.name} row {i + offset}"

        index = None
        if index_col and row[index_col] != "":
            try:
                index = int(float(row[index_col]))
            except ValueError:
                issues.append(error(f"{where}: {index_col}={row[index_col]!r} is not an integer"))
                continue

        if not row[path_col]:
            issues.append(error(f"{where}: empty image path in column {path_col!r}"))
            continue
        image = _manifest_ref(row[path_col], base, key, index, axis, "image", where, issues)
        if image is None:
            continue
        mask = None
        if mask_col:
            if not row[mask_col]:
                if task == "segmentation":
                    issues.append(error(f"{where}: missing mask path in column {mask_col!r}"))
                    continue
            else:
                mask = _manifest_ref(row[mask_col], base, mask_key, index, axis, "mask", where, issues)
                if mask is None:
                    continue
        sample_id = row[id_col] if id_col else rel_id(Path(image.path), base)
        if not id_col and image.index is not None:
            sample_id = f"{sample_id}#{image.index}"
        if not sample_id:
            issues.append(error(f"{where}: empty sample id in column {id_col!r}"))
            continue
        label: int | tuple[int, ...] | None = None
        if task == "multilabel" and not sep:
            values = []
            for c in label_cols:
                v = _binary_value(row[c], uncertain)
                if v is None:
                    what = "missing label" if row[c] == "" else f"label {row[c]!r} is not 0/1"
                    issues.append(error(f"{where} (sample {sample_id}): {what} in column {c!r}"))
                    break
                values.append(v)
            else:
                label = tuple(values)
            if label is None:
                continue
        elif task == "multilabel":
            cell = row[label_cols[0]]
            if cell == "":
                issues.append(
                    error(f"{where} (sample {sample_id}): missing label in column {label_cols[0]!r}")
                )
                continue
            tokens = {t.strip() for t in cell.split(sep) if t.strip()} - {negative}
            unknown = sorted(tokens - set(class_index))
            if unknown:
                issues.append(error(f"{where} (sample {sample_id}): label(s) {unknown} not in classes"))
                continue
            label = tuple(int(c in tokens) for c in classes)
        elif task != "segmentation":
            cell = _norm_cell(row[label_cols[0]])
            if cell == "":
                issues.append(
                    error(f"{where} (sample {sample_id}): missing label in column {label_cols[0]!r}")
                )
                continue
            if cell not in class_index:
                issues.append(
                    error(f"{where} (sample {sample_id}): label {cell!r} not in classes {list(classes)}")
                )
                continue
            label = class_index[cell]
        rel = rel_id(Path(image.path), base)
        patient = row[patient_col] if patient_col else patient_rule(rel, issues, where)
        if patient_col and not patient:
            issues.append(warning(f"{where} (sample {sample_id}): empty patient id; using the sample id"))
        split = None
        if split_col and row[split_col]:
            split = normalize_split(row[split_col])
            if split is None:
                issues.append(error(f"{where} (sample {sample_id}): unknown split {row[split_col]!r}"))
                continue
        records.append(
            Record(
                sample_id,
                patient or sample_id,
                image,
                label,
                mask,
                split,
                meta={"row": i + offset, "manifest": path.name},
            )
        )
    has_patients = bool(patient_col or patient_rule.regex)
    return _finish(spec, records, task, classes, path.stem, base, issues, has_patients, opts)


def _finish(
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
    mask_values = None
    if task == "segmentation":
        classes, mask_values = seg_classes(records, opts, issues)
    elif len(classes) < 2 and task != "multilabel":
        issues.append(
            error(f"{spec.path}: found {len(classes)} class(es) {list(classes)}; need at least two")
        )
    if opt_bool(opts, "slices"):
        records = expand_slices(records, issues)
    ndim = ndim_of(records, issues, spec.path)
    return Source(
        name=opts.get("name") or default_name,
        task=task,
        classes=classes,
        records=records,
        ndim=ndim,
        root=root,
        modality=opts.get("modality", ""),
        read=read_options(opts),
        mask_values=mask_values,
        has_patients=has_patients,
        issues=issues,
    )


# ---------------------------------------------------------------------------- folder trees


def _hidden(p: Path) -> bool:
    return p.name.startswith((".", "_")) or p.name == "radprobe.yaml"


def _children(d: Path) -> tuple[list[Path], list[Path]]:
    entries = sorted(p for p in d.iterdir() if not _hidden(p))
    return [p for p in entries if p.is_dir()], [p for p in entries if p.is_file()]


def _sample_kind(p: Path) -> str | None:
    kind = kind_of(p)
    return kind if kind in ("image", "dicom", "nifti") else None


def _is_series(files: list[Path]) -> bool:
    """A folder holds one DICOM series (a 3D sample) rather than separate 2D images."""
    if len(files) < 2:
        return False
    try:
        heads = [dicom_header(str(f)) for f in (files[0], files[-1])]
    except DataError:
        return False
    uids = {str(getattr(h, "SeriesInstanceUID", "")) for h in heads}
    return len(uids) == 1 and "" not in uids and all(hasattr(h, "ImagePositionPatient") for h in heads)


def _class_samples(class_dir: Path, issues: list[Problem]) -> list[tuple[Path, str]]:
    """(path, kind) of every sample under a class folder; DICOM series folders count as one sample."""
    out: list[tuple[Path, str]] = []

    def walk(d: Path) -> None:
        dirs, files = _children(d)
        dicoms = [f for f in files if kind_of(f) == "dicom"]
        others = [f for f in files if f not in dicoms and not f.name.lower().endswith(IGNORED_SUFFIXES)]
        if d != class_dir and dicoms and not others and not dirs and _is_series(dicoms):
            out.append((d, "dicom-series"))
            return
        for f in files:
            kind = "dicom" if f in dicoms else _sample_kind(f)
            if kind:
                out.append((f, kind))
            elif not f.name.lower().endswith(IGNORED_SUFFIXES):
                issues.append(warning(f"ignored file of unsupported type: {f}"))
        for sub in dirs:
            walk(sub)

    walk(class_dir)
    return out


def _seg_dirs(dirs: list[Path]) -> tuple[Path, Path] | None:
    by_name = {d.name.lower(): d for d in dirs}
    images = next((by_name[n] for n in IMAGE_DIRS if n in by_name), None)
    masks = next((by_name[n] for n in MASK_DIRS if n in by_name), None)
    if images is None or masks is None or len(dirs) > 3:
        return None
    return images, masks


def _mask_key(rel: str) -> str:
    low = rel.lower()
    for s in MASK_SUFFIXES:
        if low.endswith(s):
            return rel[: -len(s)]
    return rel


def _image_key(rel: str) -> str:
    return re.sub(r"_\d{4}$", "", rel)  # nnU-Net channel suffix


def _files(d: Path, issues: list[Problem]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(d.rglob("*")):
        if not f.is_file() or any(_hidden(Path(part)) for part in f.relative_to(d).parts):
            continue
        if _sample_kind(f) is None:
            if not f.name.lower().endswith(IGNORED_SUFFIXES):
                issues.append(warning(f"ignored file of unsupported type: {f}"))
            continue
        out[rel_id(f, d)] = f
    return out


def index_tree(spec: Spec) -> Source:
    root = Path(spec.path)
    opts = spec.options
    issues: list[Problem] = []
    dirs, files = _children(root)
    split_dirs = [(normalize_split(d.name), d) for d in dirs]
    if dirs and all(s is not None for s, _ in split_dirs):
        layout = [(s, d) for s, d in split_dirs]
        for f in files:
            if _sample_kind(f):
                issues.append(error(f"{f} is outside the split folders, so it has no split or label"))
    else:
        layout = [(None, root)]
    patient_rule = PatientRule(opts.get("patient_re"))
    axis = axis_option(opts)
    explicit_classes = opt_list(opts.get("classes")) or None
    found: list[tuple[str | None, str | None, Path, str, Path | None]] = []  # split, class, path, kind, mask
    seg_flags = set()
    class_names: set[str] = set()
    for split, base in layout:
        sub_dirs, sub_files = _children(base)
        pair = _seg_dirs(sub_dirs)
        seg_flags.add(pair is not None)
        if pair is not None:
            images, masks = _files(pair[0], issues), _files(pair[1], issues)
            mask_by_key = {_mask_key(k): v for k, v in masks.items()}
            used = set()
            for k, img in images.items():
                m = mask_by_key.get(_image_key(k)) or mask_by_key.get(k)
                if m is None:
                    issues.append(error(f"no mask for image {img} in {pair[1]}"))
                    continue
                used.add(m)
                found.append((split, None, img, _sample_kind(img) or "image", m))
            for m in sorted(set(masks.values()) - used):
                issues.append(warning(f"mask {m} has no matching image in {pair[0]}"))
            continue
        for f in sub_files:
            if _sample_kind(f):
                issues.append(error(f"{f} is not inside a class folder, so it has no label"))
        for class_dir in sub_dirs:
            class_names.add(class_dir.name)
            for p, kind in _class_samples(class_dir, issues):
                found.append((split, class_dir.name, p, kind, None))
    if len(seg_flags) > 1:
        raise DataError(f"{root}: some split folders hold images/masks and others class folders")
    segmentation = seg_flags == {True}

    if segmentation:
        classes: tuple[str, ...] = ()
        task: TaskType = "segmentation"
    else:
        classes = order_classes(class_names, explicit_classes)
        unknown = sorted(class_names - set(classes))
        if unknown:
            raise DataError(f"{root}: class folders {unknown} are not in classes={','.join(classes)}")
        task = infer_task(classes, opts.get("task") or None)
        tables = [f for f in files if f.name.lower().endswith((".csv", ".tsv", ".parquet"))]
        if len(classes) < 2 and tables:
            raise DataError(
                f"{root}: found class folder(s) {list(classes)} only; to use the manifest, give its path "
                f"(e.g. {tables[0]})"
            )
    class_index = {c: i for i, c in enumerate(classes)}

    records: list[Record] = []
    dicom_patients = False
    for split, cls, p, kind, mask_path in found:
        rel = rel_id(p, root)
        patient = patient_rule(rel, issues, str(p))
        if patient is None and not patient_rule.regex and kind in ("dicom", "dicom-series"):
            head = p if kind == "dicom" else next(iter(sorted(x for x in p.iterdir() if x.is_file())), p)
            try:
                patient = str(getattr(dicom_header(str(head)), "PatientID", "") or "") or None
                dicom_patients |= patient is not None
            except DataError:
                pass  # unreadable: check_dataset reports it
        image = ImageRef(str(p), kind, axis=axis)
        mask = ImageRef(str(mask_path), _sample_kind(mask_path) or "image", axis=axis) if mask_path else None
        label = class_index[cls] if cls is not None else None
        records.append(Record(rel, patient or rel, image, label, mask, split))
    has_patients = bool(patient_rule.regex) or dicom_patients
    return _finish(spec, records, task, classes, root.name, root, issues, has_patients, opts)


# ---------------------------------------------------------------------------- npz (MedMNIST)


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes in an .npz file, read from the headers without decompressing the data."""
    out: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(f)
                out[name[:-4]] = tuple(int(s) for s in shape)
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"cannot read npz file {path}: {e}") from None
    return out


def index_npz(spec: Spec) -> Source:
    path = Path(spec.path)
    opts = spec.options
    issues: list[Problem] = []
    shapes = npz_shapes(path)
    groups: list[tuple[str | None, str]] = [
        (s, f"{s}_") for s in ("train", "val", "test") if f"{s}_images" in shapes
    ]
    if not groups and "images" in shapes:
        groups = [(None, "")]
    if not groups:
        raise DataError(
            f"npz file {path} has no train_images/val_images/test_images (or images) array; "
            f"has: {', '.join(sorted(shapes))}"
        )
    segmentation = all(f"{p}masks" in shapes for _, p in groups) and not any(
        f"{p}labels" in shapes for _, p in groups
    )
    labels: dict[str, np.ndarray] = {}
    if not segmentation:
        try:
            with np.load(path, allow_pickle=False) as z:
                for _, p in groups:
                    if f"{p}labels" not in z.files:
                        raise DataError(f"npz file {path} has {p}images but no {p}labels")
                    labels[p] = np.asarray(z[f"{p}labels"])
        except DataError:
            raise
        except Exception as e:  # zip/format errors
            raise DataError(f"cannot read npz file {path}: {e}") from None
    first = shapes[f"{groups[0][1]}images"]
    ndim = 3 if len(first) == 4 and first[-1] not in (1, 3, 4) else 2
    multilabel = bool(labels) and any(v.ndim == 2 and v.shape[1] > 1 for v in labels.values())
    explicit_classes = opt_list(opts.get("classes")) or None
    if segmentation:
        task: TaskType = "segmentation"
        classes: tuple[str, ...] = ()
    elif multilabel:
        width = max(v.shape[1] for v in labels.values())
        classes = tuple(explicit_classes or [f"label_{i}" for i in range(width)])
        task = "multilabel"
    else:
        top = max(int(v.max()) for v in labels.values() if v.size)
        classes = tuple(explicit_classes or [str(i) for i in range(top + 1)])
        task = infer_task(classes, opts.get("task") or None)
    records: list[Record] = []
    for split, p in groups:
        n = shapes[f"{p}images"][0]
        lab = labels.get(p)
        if lab is not None:
            lab = lab.reshape(len(lab), -1)
            if len(lab) != n:
                issues.append(error(f"{path}: {p}labels has {len(lab)} rows but {p}images has {n}"))
                continue
        if segmentation and shapes[f"{p}masks"][0] != n:
            issues.append(error(f"{path}: {p}masks has {shapes[f'{p}masks'][0]} items but {p}images has {n}"))
            continue
        for i in range(n):
            sid = f"{split or 'sample'}-{i:05d}"
            image = ImageRef(str(path), "npz", index=i, key=f"{p}images")
            mask = ImageRef(str(path), "npz", index=i, key=f"{p}masks") if segmentation else None
            label: int | tuple[int, ...] | None = None
            if lab is not None:
                row = lab[i]
                if task == "multilabel":
                    if row.size != len(classes) or not np.isin(row, (0, 1)).all():
                        issues.append(error(f"{path}: {p}labels[{i}] = {row.tolist()} is not a 0/1 vector"))
                        continue
                    label = tuple(int(v) for v in row)
                else:
                    label = int(row[0])
                    if not 0 <= label < len(classes):
                        issues.append(
                            error(f"{path}: {p}labels[{i}] = {label} is outside 0..{len(classes) - 1}")
                        )
                        continue
            records.append(Record(sid, sid, image, label, mask, split))
    src = _finish(spec, records, task, classes, path.name.split(".")[0], path.parent, issues, False, opts)
    src.ndim = ndim
    return src


def index(spec: Spec) -> Source:
    """Index a parsed (non-synthetic) spec."""
    from radprobe.data.presets.registry import PRESETS

    if spec.scheme in PRESETS:
        from radprobe.data.presets import index_preset

        return index_preset(spec)
    if spec.scheme in ("csv", "parquet"):
        return index_manifest(spec)
    if spec.scheme == "npz":
        return index_npz(spec)
    if spec.scheme in ("folder", "nifti", "dicom"):
        return index_tree(spec)
    raise DataError(f"dataset scheme {spec.scheme!r} cannot be indexed here")


def duplicate_issues(records: list[Record]) -> list[Problem]:
    """One error per sample id used more than once, naming the manifest rows or files."""
    counts = Counter(r.sample_id for r in records)
    out = []
    for sid, n in counts.items():
        if n > 1:
            where = [
                f"{r.meta['manifest']} row {r.meta['row']}" if "row" in r.meta else r.image.path
                for r in records
                if r.sample_id == sid
            ]
            out.append(error(f"duplicated sample id {sid!r} ({n} times: {', '.join(where)})"))
    return out
