"""Chest X-ray classification presets: NIH ChestX-ray14 and CheXpert (layouts in ``registry.py``)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath

from radprobe.data.formats.common import Source
from radprobe.data.presets.common import find_file, finish, read_table, root_dir
from radprobe.data.presets.registry import CHEXPERT_ALL, CHEXPERT_COMPETITION, NIH_FINDINGS
from radprobe.data.problems import Problem, error, warning
from radprobe.data.records import ImageRef, Record
from radprobe.data.spec import Spec, opt_bool
from radprobe.errors import DataError

log = logging.getLogger(__name__)

NIH_TABLES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
NIH_PAPER_VAL = 10_002  # the paper's validation set: the last 10,002 entries of train_val_list.txt


# ---------------------------------------------------------------------------- NIH ChestX-ray14


def nih_images(root: Path) -> dict[str, str]:
    """Image file name -> path, from ``images/`` or the Kaggle ``images_001/images/`` ... folders."""
    out: dict[str, str] = {}
    folders = sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower().startswith("images"))
    for d in folders:
        sub = d / "images" if (d / "images").is_dir() else d
        with os.scandir(sub) as it:
            for e in it:
                if e.name.lower().endswith(".png") and e.is_file():
                    out.setdefault(e.name, e.path)
    return out


def _read_list(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"nih-cxr14: cannot read {path}: {e}") from None


def _val_rule(value: str | None) -> int | None:
    """``val=`` -> None (patient-level carve) or the number of trailing train_val entries."""
    v = (value or "patient").strip().lower()
    if v == "patient":
        return None
    if v == "last":
        return NIH_PAPER_VAL
    if v.startswith("last:") and v[5:].isdigit() and int(v[5:]) > 0:
        return int(v[5:])
    raise DataError(f"val={value!r}: expected patient, last (the paper's last {NIH_PAPER_VAL}) or last:<n>")


def _nih_splits(lists: dict[str, list[str]], val_last: int | None, issues: list[Problem]) -> dict[str, str]:
    """Image name -> split from the official lists (and ``val=last``); names in both lists are issues."""
    split_of: dict[str, str] = {}
    for list_name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        for k, name in enumerate(lists[list_name]):
            if name in split_of:
                issues.append(error(f"{list_name} line {k + 1}: {name} is also in another split list"))
            split_of[name] = split
    if val_last is not None:
        tv = lists["train_val_list.txt"]
        if val_last >= len(tv):
            raise DataError(f"val=last:{val_last}: train_val_list.txt has only {len(tv)} entries")
        for name in tv[-val_last:]:
            split_of[name] = "val"
    return split_of


def _nih_row(row: dict[str, str], where: str) -> tuple[set[str], str] | Problem:
    """A label-table row's finding tokens and patient, or the problem that leaves the row out."""
    name = row["Image Index"]
    tokens = {t.strip() for t in row["Finding Labels"].split("|") if t.strip()}
    if not tokens:
        return error(f"{where} ({name}): empty 'Finding Labels'")
    unknown = sorted(tokens - set(NIH_FINDINGS) - {"No Finding"})
    if unknown:
        return error(
            f"{where} ({name}): unknown finding(s) {unknown} in 'Finding Labels'; expected "
            f"'No Finding' or |-separated {', '.join(NIH_FINDINGS)}"
        )
    if "No Finding" in tokens and len(tokens) > 1:
        return error(f"{where} ({name}): 'No Finding' together with findings {sorted(tokens)}")
    patient = row["Patient ID"].lstrip("0") or row["Patient ID"]
    if not patient:
        return error(f"{where} ({name}): empty 'Patient ID'")
    return tokens, patient


def _nih_list_problems(
    lists: dict[str, list[str]], seen: set[str], unlisted: list[str], table: str
) -> list[Problem]:
    """Table rows in neither split list (left out), and list entries the table lacks."""
    issues: list[Problem] = []
    if unlisted:
        issues.append(
            warning(
                f"{len(unlisted)} image(s) of {table} are in neither train_val_list.txt nor "
                f"test_list.txt and are left out, e.g. {', '.join(unlisted[:5])}"
            )
        )
    for list_name in lists:
        for k, name in enumerate(lists[list_name]):
            if name not in seen:
                issues.append(error(f"{list_name} line {k + 1}: {name} is not in {table}"))
    return issues


def index_nih(spec: Spec) -> Source:
    root = root_dir(spec)
    opts = spec.options
    scheme = spec.scheme
    table = find_file(root, NIH_TABLES, "the label table", scheme)
    rows = read_table(table, NIH_COLUMNS, scheme)
    lists = {
        name: _read_list(find_file(root, (name,), "the official split list", scheme))
        for name in ("train_val_list.txt", "test_list.txt")
    }
    no_finding = opt_bool(opts, "no_finding")
    val_last = _val_rule(opts.get("val"))
    classes = (*NIH_FINDINGS, "No Finding") if no_finding else NIH_FINDINGS

    images = nih_images(root)
    if not images:
        raise DataError(
            f"{scheme}: no PNG images in {root}; expected images/*.png or images_001/images/*.png ... "
            "images_012/images/*.png"
        )
    issues: list[Problem] = []
    split_of = _nih_splits(lists, val_last, issues)

    records: list[Record] = []
    seen: set[str] = set()
    unlisted = []
    for i, row in enumerate(rows):
        name = row["Image Index"]
        where = f"{table.name} row {i + 2}"
        seen.add(name)
        parsed = _nih_row(row, where)
        if isinstance(parsed, Problem):
            issues.append(parsed)
            continue
        tokens, patient = parsed
        split = split_of.get(name)
        if split is None:
            unlisted.append(name)
            continue
        path = images.get(name)
        if path is None:
            issues.append(error(f"{where}: image {name} not found under {root}/images*/"))
            continue
        label = [int(c in tokens) for c in NIH_FINDINGS]
        if no_finding:
            label.append(int(tokens == {"No Finding"}))
        sid = name.rsplit(".", 1)[0]
        meta = {"row": i + 2, "manifest": table.name, "view": row.get("View Position", "")}
        records.append(Record(sid, patient, ImageRef(path, "image"), tuple(label), None, split, meta))
    issues += _nih_list_problems(lists, seen, unlisted, table.name)
    conventions = {
        "outputs": "14 findings + No Finding" if no_finding else "14 findings",
        "test": "official test_list.txt",
        "val": (
            f"last {val_last} entries of train_val_list.txt"
            if val_last is not None
            else "carved from train_val_list.txt at patient level"
        ),
    }
    return finish(spec, records, "multilabel", classes, root, issues, conventions, default_name="nih-cxr14")


# ---------------------------------------------------------------------------- CheXpert

CHEXPERT_POLICIES = ("zeros", "ones", "ignore")
CHEXPERT_TESTS = ("test.csv", "test_labels.csv")


def _chexpert_value(cell: str, policy: str) -> int | None:
    """A CheXpert label cell -> 0/1 (or -1 under U-Ignore); None for an unknown value."""
    v = cell.strip()
    if v == "":
        return 0  # not mentioned in the report: negative under every policy
    try:
        x = float(v)
    except ValueError:
        return None
    if x == 1.0:
        return 1
    if x == 0.0:
        return 0
    if x == -1.0:
        return {"zeros": 0, "ones": 1, "ignore": -1}[policy]
    return None


def _chexpert_rel(value: str, root: Path) -> PurePosixPath:
    """CSV paths start with the release folder (``CheXpert-v1.0-small/train/...``): make them relative
    to ``root``."""
    rel = PurePosixPath(value.replace("\\", "/"))
    if rel.parts and (rel.parts[0] == root.name or rel.parts[0].lower().startswith("chexpert")):
        rel = PurePosixPath(*rel.parts[1:])
    return rel


def index_chexpert(spec: Spec) -> Source:
    root = root_dir(spec)
    opts = spec.options
    scheme = spec.scheme
    issues: list[Problem] = []
    policy = (opts.get("uncertain") or "").strip().lower()
    if policy and policy not in CHEXPERT_POLICIES:
        raise DataError(f"uncertain={policy!r}: expected one of {', '.join(CHEXPERT_POLICIES)}")
    if not policy:
        policy = "zeros"
        msg = (
            f"{scheme}: no uncertain= policy given; using U-Zeros (-1 -> 0, as in the paper). Say "
            "uncertain=zeros|ones|ignore to choose explicitly"
        )
        log.warning(msg)
        issues.append(warning(msg))
    label_set = (opts.get("labels") or "competition").strip().lower()
    if label_set not in ("competition", "all"):
        raise DataError(f"labels={label_set!r}: expected competition or all")
    labels = CHEXPERT_COMPETITION if label_set == "competition" else CHEXPERT_ALL
    # the paper's sixth output: 1 where any of the labels was uncertain (-1), before the policy maps it
    uncertain_output = opt_bool(opts, "uncertain_output")
    classes = (*labels, "Uncertain") if uncertain_output else labels
    frontal_only = opt_bool(opts, "frontal")

    tables = [
        ("train", find_file(root, ("train.csv",), "the training labels", scheme)),
        ("val", find_file(root, ("valid.csv",), "the validation labels", scheme)),
    ]
    test = next((root / n for n in CHEXPERT_TESTS if (root / n).is_file()), None)
    if test is not None:
        tables.append(("test", test))
    records: list[Record] = []
    ignored = 0
    for split, table in tables:
        rows = read_table(table, ("Path", *labels), scheme)
        for i, row in enumerate(rows):
            where = f"{table.name} row {i + 2}"
            rel = _chexpert_rel(row["Path"], root)
            if "Frontal/Lateral" in row:
                frontal = row["Frontal/Lateral"].strip().lower() == "frontal"
            else:  # the test CSV has no view column; every CheXpert file name says the view
                frontal = "frontal" in rel.name.lower()
            if frontal_only and not frontal:
                continue
            label = []
            for c in labels:
                v = _chexpert_value(row[c], policy)
                if v is None:
                    issues.append(
                        error(
                            f"{where}: unknown label value {row[c]!r} in column {c!r}; expected 1.0, 0.0, "
                            "-1.0 or blank"
                        )
                    )
                    break
                label.append(v)
            else:
                if uncertain_output:
                    label.append(int(any(_chexpert_value(row[c], "ignore") == -1 for c in labels)))
                m = re.search(r"(patient\d+)", str(rel))
                if m is None:
                    issues.append(error(f"{where}: no patientNNNNN folder in path {row['Path']!r}"))
                    continue
                path = root / rel
                if not path.is_file():
                    issues.append(error(f"{where}: image not found: {path}"))
                    continue
                ignored += sum(v == -1 for v in label)
                sid = str(rel.with_suffix(""))
                meta = {"row": i + 2, "manifest": table.name, "frontal": frontal}
                records.append(
                    Record(sid, m.group(1), ImageRef(str(path), "image"), tuple(label), None, split, meta)
                )
    if ignored:
        issues.append(
            warning(
                f"uncertain=ignore: {ignored} uncertain label(s) stay -1; training code must mask them "
                "(U-Ignore), they are not negatives"
            )
        )
    conventions = {
        "uncertain": policy,
        "views": "frontal" if frontal_only else "all",
        "labels": label_set,
        "test": test.name if test is not None else "carved from train at patient level",
    }
    if uncertain_output:  # absent otherwise, so the digests of five-output datasets stay as they were
        conventions["uncertain_output"] = "1: any label uncertain (-1) before the policy"
    return finish(spec, records, "multilabel", classes, root, issues, conventions, default_name="chexpert")
