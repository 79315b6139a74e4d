"""``csv:`` / ``parquet:`` manifests: one row per sample naming its image, label(s), patient, split, mask.

Column names are picked from common defaults or given as options (see :mod:`radprobe.data.spec`);
relative paths resolve against ``root=`` (default: the manifest's folder).
"""

from __future__ import annotations

import re
from pathlib import Path

from radprobe.data.formats.common import (
    TASKS,
    PatientRule,
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
    return finish_source(spec, records, task, classes, path.stem, base, issues, has_patients, opts)
