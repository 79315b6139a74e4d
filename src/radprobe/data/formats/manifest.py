"""``csv:`` / ``parquet:`` manifests: one row per sample naming its image, label(s), patient, split, mask.

Column names are picked from common defaults or given as options (see :mod:`radprobe.data.spec`);
relative paths resolve against ``root=`` (default: the manifest's folder).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from radprobe.data.formats.common import (
    TASKS,
    PatientRule,
    RootGuard,
    Source,
    axis_option,
    finish_source,
    infer_task,
    order_classes,
    rel_id,
)
from radprobe.data.problems import Problem, error, warning
from radprobe.data.readers import kind_of
from radprobe.data.records import ImageRef, Record, TaskType
from radprobe.data.spec import Spec, opt_list
from radprobe.data.splits import normalize_split
from radprobe.errors import DataError

PATH_COLS = ("path", "image", "image_path", "filepath", "file", "filename", "img", "Path")
MASK_COLS = ("mask", "mask_path", "segmentation", "seg", "label_path")
ID_COLS = ("sample_id", "id", "image_id")
PATIENT_COLS = ("patient_id", "patient", "PatientID", "Patient ID", "subject_id", "subject", "case_id")
SPLIT_COLS = ("split", "fold", "set", "subset")
LABEL_COLS = ("label", "labels", "class", "target", "diagnosis")


DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe", ",": "comma"}


def _delimiter_hint(path: Path, sep: str) -> str:
    """``; ...`` when the header line splits on another delimiter than ``sep`` (a CSV saved by a
    spreadsheet in a locale with decimal commas, say), else ``""``."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline()
    except OSError:
        return ""
    found = max(DELIMITERS, key=header.count)
    if found == sep or header.count(found) <= header.count(sep):
        return ""
    kind = ".tsv manifests are read tab-separated" if sep == "\t" else "manifests are read comma-separated"
    return (
        f"; its header is {DELIMITERS[found]}-separated ({header.strip()[:60]!r}) but {kind}: "
        f"save it with {DELIMITERS[sep]}s"
    )


def _read_table(path: Path, scheme: str) -> list[dict[str, str]]:
    import pandas as pd

    sep = "\t" if path.name.lower().endswith(".tsv") else ","
    try:
        if scheme == "parquet":
            df = pd.read_parquet(path)
            df = df.astype(object).where(df.notna(), "")
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep)
    except Exception as e:  # pandas/pyarrow raise many types for malformed tables
        hint = _delimiter_hint(path, sep) if scheme != "parquet" else ""
        raise DataError(f"cannot read manifest {path}: {str(e).strip()}{hint}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if scheme != "parquet" and len(df.columns) == 1 and (hint := _delimiter_hint(path, sep)):
        raise DataError(f"manifest {path} has a single column{hint}")
    return [{k: str(v).strip() for k, v in row.items()} for row in df.to_dict(orient="records")]


# Cells that mean "no value": pandas writes a missing float as an empty cell, other tools as NaN or NA.
# (``none`` is left out: it is a class name in some datasets, see NEGATIVE_NAMES.)
MISSING_CELLS = frozenset({"", "nan", "-nan", "+nan", "na", "n/a", "#n/a", "<na>", "null"})


def _missing(value: str) -> bool:
    return value.strip().lower() in MISSING_CELLS


def _missing_label(where: str, value: str, column: str) -> _RowError:
    shown = f" {value!r}" if value.strip() else ""
    return _RowError(f"{where}: missing label{shown} in column {column!r}; expected a class name or 0/1")


def _norm_cell(value: str) -> str:
    """``1.0`` -> ``1`` so numeric labels read the same from CSV and parquet."""
    v = value.strip()
    if re.fullmatch(r"[-+]?\d+(\.0*)?", v):
        return str(int(float(v)))
    return v


def _binary_value(value: str, uncertain: str | None) -> int | None:
    v = "" if _missing(value) else _norm_cell(value).lower()
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


class _RowError(Exception):
    """A manifest row that cannot become a sample; the message is reported as one error."""


@dataclass
class _Plan:
    """How each row of one manifest becomes a record: its columns, task and classes."""

    path: Path
    base: Path
    offset: int  # file line (CSV: 2, after the header) or parquet row number of the first row
    path_col: str
    mask_col: str | None
    id_col: str | None
    patient_col: str | None
    split_col: str | None
    index_col: str | None
    label_cols: list[str]
    task: TaskType
    classes: tuple[str, ...]
    sep: str | None
    negative: str | None
    uncertain: str | None
    key: str | None
    mask_key: str | None
    axis: int
    patient_rule: PatientRule
    guard: RootGuard
    class_index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.class_index = {c: i for i, c in enumerate(self.classes)}


def _manifest_ref(
    plan: _Plan, value: str, key: str | None, index: int | None, what: str, where: str, issues: list[Problem]
) -> ImageRef | None:
    """The file a cell names, relative to the root; None (reported in ``issues``) when unusable."""
    p = Path(value).expanduser()
    p = p if p.is_absolute() else plan.base / p
    plan.guard.check(str(p), where, f"{what} path", shown=repr(value))
    if not p.exists():
        issues.append(error(f"{where}: {what} file not found: {p}"))
        if kind_of(p) is None:
            return None
    kind = kind_of(p)
    if kind is None:
        issues.append(error(f"{where}: unsupported {what} file type: {p}"))
        return None
    return ImageRef(str(p), kind, index=index, axis=plan.axis, key=key if kind == "h5" else None)


def _base(path: Path, opts: dict[str, str]) -> Path:
    """The folder relative paths resolve against: ``root=`` (relative to the manifest) or the manifest's."""
    base = Path(opts["root"]).expanduser() if opts.get("root") else path.parent
    if not base.is_absolute():
        base = path.parent / base
    return base.resolve()


def _label_columns(
    opts: dict[str, str],
    rows: list[dict[str, str]],
    path: Path,
    used: set[str],
    mask_col: str | None,
    explicit_task: str | None,
    uncertain: str | None,
) -> list[str]:
    """``label=`` columns, else a default label column, else (no mask) every 0/1 column."""
    columns = list(rows[0])
    if opts.get("label"):
        label_cols = opt_list(opts["label"])
        for c in label_cols:
            if c not in columns:
                raise DataError(f"manifest {path} has no label column {c!r}; columns: {', '.join(columns)}")
        return label_cols
    if explicit_task == "segmentation":
        return []
    if (c := _pick(opts, "label", LABEL_COLS, columns, path)) is not None:
        return [c]
    if mask_col:
        return []  # masks and no label column: segmentation
    label_cols = [
        c
        for c in columns
        if c not in used
        and any(not _missing(r[c]) for r in rows)
        and all(_binary_value(r[c], uncertain) is not None or _missing(r[c]) for r in rows)
    ]
    if not label_cols:
        raise DataError(
            f"manifest {path} has no label column; expected 'label', 0/1 columns, a mask column, or "
            f"label=<column>[,<column>...] (columns: {', '.join(columns)})"
        )
    return label_cols


def _task_and_classes(
    opts: dict[str, str],
    rows: list[dict[str, str]],
    label_cols: list[str],
    mask_col: str | None,
    explicit_task: str | None,
) -> tuple[TaskType, tuple[str, ...]]:
    sep = opts.get("sep") or None
    explicit_classes = opt_list(opts.get("classes")) or None
    if mask_col and not label_cols:
        return "segmentation", ()
    if not (len(label_cols) > 1 or sep or explicit_task == "multilabel"):
        observed = {_norm_cell(r[label_cols[0]]) for r in rows if not _missing(r[label_cols[0]])}
        classes = order_classes(observed, explicit_classes)
        return infer_task(classes, explicit_task), classes
    if not sep:
        classes = tuple(explicit_classes or label_cols)
        if len(classes) != len(label_cols):
            raise DataError(
                f"classes= names {len(classes)} labels but label= gives {len(label_cols)} columns"
            )
        return "multilabel", classes
    negative = opts.get("negative")
    cells = [r[label_cols[0]] for r in rows if not _missing(r[label_cols[0]])]
    tokens = {t.strip() for cell in cells for t in cell.split(sep) if t.strip()} - {negative}
    classes = order_classes(tokens, explicit_classes) if explicit_classes else tuple(sorted(tokens))
    return "multilabel", classes


def _plan(spec: Spec, rows: list[dict[str, str]]) -> _Plan:
    """Pick the columns and work out task and classes; raise for a manifest that cannot be read."""
    path, opts = Path(spec.path), spec.options
    columns = list(rows[0])
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
    uncertain = (opts.get("uncertain") or "").lower() or None
    if uncertain not in (None, "zeros", "ones"):
        raise DataError(f"uncertain={uncertain!r}: expected zeros or ones")
    explicit_task = opts.get("task") or None
    if explicit_task not in (None, *TASKS):
        raise DataError(f"task={explicit_task!r}: expected one of {', '.join(TASKS)}")
    used = {c for c in (path_col, mask_col, id_col, patient_col, split_col, index_col) if c}
    label_cols = _label_columns(opts, rows, path, used, mask_col, explicit_task, uncertain)
    if explicit_task == "segmentation" and not mask_col:
        raise DataError(f"manifest {path}: task=segmentation needs a mask column (mask=<column>)")
    task, classes = _task_and_classes(opts, rows, label_cols, mask_col, explicit_task)
    base = _base(path, opts)
    return _Plan(
        path=path,
        base=base,
        offset=1 if spec.scheme == "parquet" else 2,  # CSV: header is line 1
        path_col=path_col,
        mask_col=mask_col,
        id_col=id_col,
        patient_col=patient_col,
        split_col=split_col,
        index_col=index_col,
        label_cols=label_cols,
        task=task,
        classes=classes,
        sep=opts.get("sep") or None,
        negative=opts.get("negative"),
        uncertain=uncertain,
        key=opts.get("key") or None,
        mask_key=opts.get("mask_key") or None,
        axis=axis_option(opts),
        patient_rule=PatientRule(opts.get("patient_re")),
        guard=RootGuard(base, opts),
    )


def _row_refs(
    plan: _Plan, row: dict[str, str], where: str, issues: list[Problem]
) -> tuple[ImageRef, ImageRef | None] | None:
    """Image and mask of a row; None when a file is unusable (reported in ``issues``)."""
    index = None
    if plan.index_col and row[plan.index_col] != "":
        try:
            index = int(float(row[plan.index_col]))
        except ValueError:
            raise _RowError(f"{where}: {plan.index_col}={row[plan.index_col]!r} is not an integer") from None
    if not row[plan.path_col]:
        raise _RowError(f"{where}: empty image path in column {plan.path_col!r}")
    image = _manifest_ref(plan, row[plan.path_col], plan.key, index, "image", where, issues)
    if image is None:
        return None
    mask = None
    if plan.mask_col and row[plan.mask_col]:
        mask = _manifest_ref(plan, row[plan.mask_col], plan.mask_key, index, "mask", where, issues)
        if mask is None:
            return None
    elif plan.mask_col and plan.task == "segmentation":
        raise _RowError(f"{where}: missing mask path in column {plan.mask_col!r}")
    return image, mask


def _row_label(plan: _Plan, row: dict[str, str], where: str) -> int | tuple[int, ...] | None:
    """The label of a row (None for segmentation); raise ``_RowError`` for a missing or unknown one."""
    if plan.task == "segmentation":
        return None
    first = plan.label_cols[0]
    if plan.task == "multilabel" and not plan.sep:
        values = []
        for c in plan.label_cols:
            v = _binary_value(row[c], plan.uncertain)
            if v is None and _missing(row[c]):
                raise _missing_label(where, row[c], c)
            if v is None:
                raise _RowError(f"{where}: label {row[c]!r} in column {c!r} is not 0/1")
            values.append(v)
        return tuple(values)
    if plan.task == "multilabel":
        cell = row[first]
        if _missing(cell):
            raise _missing_label(where, cell, first)
        tokens = {t.strip() for t in cell.split(plan.sep) if t.strip()} - {plan.negative}
        unknown = sorted(tokens - set(plan.classes))
        if unknown:
            raise _RowError(f"{where}: label(s) {unknown} not in classes")
        return tuple(int(c in tokens) for c in plan.classes)
    if _missing(row[first]):
        raise _missing_label(where, row[first], first)
    cell = _norm_cell(row[first])
    if cell not in plan.class_index:
        raise _RowError(f"{where}: label {cell!r} not in classes {list(plan.classes)}")
    return plan.class_index[cell]


def _row_record(plan: _Plan, i: int, row: dict[str, str], issues: list[Problem]) -> Record | None:
    where = f"{plan.path.name} row {i + plan.offset}"
    refs = _row_refs(plan, row, where, issues)
    if refs is None:
        return None
    image, mask = refs
    sample_id = row[plan.id_col] if plan.id_col else rel_id(Path(image.path), plan.base)
    if not plan.id_col and image.index is not None:
        sample_id = f"{sample_id}#{image.index}"
    if not sample_id:
        raise _RowError(f"{where}: empty sample id in column {plan.id_col!r}")
    where = f"{where} (sample {sample_id})"
    label = _row_label(plan, row, where)
    rel = rel_id(Path(image.path), plan.base)
    patient = row[plan.patient_col] if plan.patient_col else plan.patient_rule(rel, issues, where)
    if plan.patient_col and not patient:
        issues.append(warning(f"{where}: empty patient id; using the sample id"))
    split = None
    if plan.split_col and row[plan.split_col]:
        split = normalize_split(row[plan.split_col])
        if split is None:
            raise _RowError(f"{where}: unknown split {row[plan.split_col]!r}")
    meta = {"row": i + plan.offset, "manifest": plan.path.name}
    return Record(sample_id, patient or sample_id, image, label, mask, split, meta=meta)


def index_manifest(spec: Spec) -> Source:
    """Index a ``csv:``/``parquet:`` manifest: one record per usable row, a problem per unusable one."""
    path = Path(spec.path)
    rows = _read_table(path, spec.scheme)
    if not rows:
        raise DataError(f"manifest {path} has no rows")
    plan = _plan(spec, rows)
    issues: list[Problem] = []
    records: list[Record] = []
    for i, row in enumerate(rows):
        try:
            record = _row_record(plan, i, row, issues)
        except _RowError as e:
            issues.append(error(str(e)))
            continue
        if record is not None:
            records.append(record)
    has_patients = bool(plan.patient_col or plan.patient_rule.regex)
    return finish_source(
        spec,
        records,
        plan.task,
        plan.classes,
        display_name(path),
        plan.base,
        issues,
        has_patients,
        spec.options,
    )


# Manifest file names that say nothing about the data: such a dataset is named after its folder.
GENERIC_STEMS = frozenset(
    {"manifest", "labels", "label", "data", "dataset", "index", "metadata", "meta", "train"}
)


def display_name(path: Path) -> str:
    """A manifest's default dataset name (``name=`` overrides it): its file name, or its folder's when
    the file name is generic (``mri/manifest.csv`` is ``mri``, not ``manifest``)."""
    stem = path.name.split(".")[0]
    if stem.lower() in GENERIC_STEMS and path.parent.name:
        return path.parent.name
    return stem
