"""NIH ChestX-ray14 and CheXpert presets, on replicas of their published layouts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from radprobe.data import Problem, check_dataset, check_leakage, load_dataset
from radprobe.data.presets.registry import CHEXPERT_ALL, CHEXPERT_COMPETITION, NIH_FINDINGS
from radprobe.data.presets.replicas import make_chexpert, make_nih
from radprobe.errors import DataError


def _one(problems: list[Problem], severity: str, *needles: str) -> str:
    hits = [p.message for p in problems if p.severity == severity and all(n in p.message for n in needles)]
    assert hits, f"no {severity} mentions {needles}; got:\n" + "\n".join(map(str, problems))
    assert all("\n" not in h for h in hits)
    return hits[0]


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


# ---------------------------------------------------------------------------- NIH


@pytest.fixture
def nih(tmp_path: Path) -> Path:
    make_nih(tmp_path / "NIH")
    return tmp_path / "NIH"


def test_nih_official_test_list_and_patient_level_val(nih: Path) -> None:
    ds = load_dataset(f"nih-cxr14:{nih}")
    assert ds.task == "multilabel" and ds.classes == NIH_FINDINGS
    assert sorted(f"{r.sample_id}.png" for r in ds.split("test")) == sorted(_lines(nih / "test_list.txt"))
    train_val = {f"{r.sample_id}.png" for s in ("train", "val") for r in ds.split(s)}
    assert train_val == set(_lines(nih / "train_val_list.txt"))
    assert ds.split("val") and check_leakage(ds.records) == []
    assert ds.conventions["val"] == "carved from train_val_list.txt at patient level"
    table = pd.read_csv(nih / "Data_Entry_2017.csv", dtype=str)
    findings = dict(zip(table["Image Index"], table["Finding Labels"], strict=True))
    patients = dict(zip(table["Image Index"], table["Patient ID"], strict=True))
    for r in ds.records:
        tokens = set(findings[f"{r.sample_id}.png"].split("|"))
        assert r.label == tuple(int(c in tokens) for c in NIH_FINDINGS)
        assert r.patient_id == patients[f"{r.sample_id}.png"]


def test_nih_no_finding_output_and_kaggle_layout(tmp_path: Path) -> None:
    make_nih(tmp_path / "K", layout="kaggle")
    assert (tmp_path / "K" / "images_002" / "images").is_dir()
    ds = load_dataset(f"nih-cxr14:{tmp_path / 'K'}?no_finding=1")
    assert ds.classes == (*NIH_FINDINGS, "No Finding")
    table = pd.read_csv(tmp_path / "K" / "Data_Entry_2017.csv", dtype=str)
    none = set(table.loc[table["Finding Labels"] == "No Finding", "Image Index"])
    for r in ds.records:
        assert r.label[-1] == int(f"{r.sample_id}.png" in none)  # type: ignore[index]
        assert r.label[-1] + sum(r.label[:-1]) >= 1  # type: ignore[index]


def test_nih_paper_rule_takes_the_last_train_val_entries(nih: Path) -> None:
    ds = load_dataset(f"nih-cxr14:{nih}?paper=1&val=last:7")  # explicit val= wins over paper's 10,002
    tv = _lines(nih / "train_val_list.txt")
    assert [f"{r.sample_id}.png" for r in ds.split("val")] == tv[-7:]
    assert len(ds.classes) == 15 and ds.conventions["val"] == "last 7 entries of train_val_list.txt"
    with pytest.raises(DataError, match=r"val=last:10002: train_val_list.txt has only \d+ entries"):
        load_dataset(f"nih-cxr14:{nih}?paper=1")
    with pytest.raises(DataError, match="val='first'"):
        load_dataset(f"nih-cxr14:{nih}?val=first")


def test_nih_missing_list_and_wrong_header_are_named(nih: Path) -> None:
    (nih / "test_list.txt").unlink()
    (msg,) = [p.message for p in check_dataset(f"nih-cxr14:{nih}")]
    assert "missing test_list.txt" in msg and str(nih) in msg
    make_nih(nih.parent / "H")
    table = nih.parent / "H" / "Data_Entry_2017.csv"
    table.write_text(table.read_text().replace("Finding Labels", "Findings", 1))
    (msg,) = [p.message for p in check_dataset(f"nih-cxr14:{nih.parent / 'H'}")]
    assert "Data_Entry_2017.csv lacks column(s) 'Finding Labels'" in msg
    assert "'Image Index', 'Finding Labels', 'Patient ID'" in msg


def test_nih_bad_rows_and_files_are_named(nih: Path) -> None:
    table = nih / "Data_Entry_2017.csv"
    lines = table.read_text().splitlines()
    third = lines[3].split(",")
    third[1] = "Covid"
    lines[3] = ",".join(third)
    table.write_text("\n".join(lines) + "\n")
    fourth = lines[4].split(",")[0]
    (nih / "images" / fourth).unlink()
    fifth = lines[5].split(",")[0]
    (nih / "images" / fifth).write_bytes(b"\x89PNG truncated")
    with open(nih / "test_list.txt", "a") as f:
        f.write("99999999_000.png\n")
    problems = check_dataset(f"nih-cxr14:{nih}")
    _one(problems, "error", "Data_Entry_2017.csv row 4", "unknown finding(s) ['Covid']")
    _one(problems, "error", "row 5", f"image {fourth} not found")
    _one(problems, "error", "unreadable image", fifth)
    _one(problems, "error", "test_list.txt line", "99999999_000.png is not in Data_Entry_2017.csv")
    # loading reads no pixels: the corrupt PNG is check_dataset's to find
    with pytest.raises(DataError, match=r"unknown finding.*\(and 2 more"):
        load_dataset(f"nih-cxr14:{nih}")


# ---------------------------------------------------------------------------- CheXpert


@pytest.fixture
def chexpert(tmp_path: Path) -> Path:
    return Path(make_chexpert(tmp_path).split(":", 1)[1])


def _row(ds, manifest: str, row: int):  # type: ignore[no-untyped-def]
    return next(r for r in ds.records if r.meta.get("manifest") == manifest and r.meta.get("row") == row)


@pytest.mark.parametrize(("policy", "value"), [("zeros", 0), ("ones", 1), ("ignore", -1)])
def test_chexpert_uncertainty_policy_is_applied(chexpert: Path, policy: str, value: int) -> None:
    ds = load_dataset(f"chexpert:{chexpert}?uncertain={policy}")
    assert ds.classes == CHEXPERT_COMPETITION and ds.conventions["uncertain"] == policy
    assert _row(ds, "train.csv", 2).label == (value,) * 5  # the replica's first row is all -1.0
    assert _row(ds, "train.csv", 3).label == (1,) * 5
    table = pd.read_csv(chexpert / "train.csv", dtype=str, keep_default_na=False)
    for i, row in table.iterrows():
        rec = _row(ds, "train.csv", int(i) + 2)
        for c, got in zip(CHEXPERT_COMPETITION, rec.label, strict=True):  # type: ignore[arg-type]
            want = {"1.0": 1, "0.0": 0, "": 0, "-1.0": value}[row[c]]  # blank = not mentioned = 0
            assert got == want
    problems = check_dataset(f"chexpert:{chexpert}?uncertain={policy}")
    assert not [p for p in problems if p.severity == "error"]
    if policy == "ignore":
        _one(problems, "warning", "uncertain=ignore", "must mask them")


def test_chexpert_default_policy_is_loud_and_in_the_digest(chexpert: Path) -> None:
    ds = load_dataset(f"chexpert:{chexpert}")
    assert ds.conventions["uncertain"] == "zeros"
    _one(check_dataset(f"chexpert:{chexpert}"), "warning", "no uncertain= policy given", "U-Zeros")
    explicit = load_dataset(f"chexpert:{chexpert}?uncertain=zeros")
    assert explicit.manifest_digest() == ds.manifest_digest()
    recorded = replace(ds, conventions={**ds.conventions, "uncertain": "ones"})
    assert recorded.manifest_digest() != ds.manifest_digest()  # the policy itself is hashed
    assert load_dataset(f"chexpert:{chexpert}?uncertain=ones").manifest_digest() != ds.manifest_digest()
    assert len(load_dataset(f"chexpert:{chexpert}?labels=all").classes) == len(CHEXPERT_ALL)


def test_chexpert_frontal_only_with_official_splits(chexpert: Path) -> None:
    ds = load_dataset(f"chexpert:{chexpert}?paper=1")
    assert ds.conventions["views"] == "frontal" and ds.conventions["test"] == "test_labels.csv"
    assert all(r.image.path.endswith("_frontal.jpg") for r in ds.records)
    frontal = pd.read_csv(chexpert / "train.csv", dtype=str)["Frontal/Lateral"].eq("Frontal").sum()
    assert len(ds.split("train")) == frontal
    assert all(r.sample_id.startswith("valid/") for r in ds.split("val"))
    assert all(r.sample_id.startswith("test/") for r in ds.split("test"))
    assert check_leakage(ds.records) == []
    every = load_dataset(f"chexpert:{chexpert}?uncertain=zeros")
    assert any(r.image.path.endswith("_lateral.jpg") for r in every.split("test"))


def test_chexpert_without_test_csv_carves_test_by_patient(tmp_path: Path) -> None:
    root = Path(make_chexpert(tmp_path, test=False, patients=14).split(":", 1)[1])
    ds = load_dataset(f"chexpert:{root}?uncertain=zeros")
    assert ds.split("test") and all(r.sample_id.startswith("train/") for r in ds.split("test"))
    assert ds.conventions["test"] == "carved from train at patient level"
    assert check_leakage(ds.records) == []


def test_chexpert_faults_are_named(chexpert: Path) -> None:
    spec = f"chexpert:{chexpert}?uncertain=zeros"
    train = chexpert / "train.csv"
    text = train.read_text()
    lines = text.splitlines()
    cells = lines[4].split(",")
    cells[5 + CHEXPERT_ALL.index("Edema")] = "2.0"
    lines[4] = ",".join(cells)
    train.write_text("\n".join(lines) + "\n")
    missing = chexpert.parent / lines[5].split(",")[0]
    missing.unlink()
    problems = check_dataset(spec)
    _one(problems, "error", "train.csv row 5", "unknown label value '2.0' in column 'Edema'")
    _one(problems, "error", "train.csv row 6", "image not found", missing.name)
    train.write_text(text.replace("Pleural Effusion", "Effusion", 1))
    (msg,) = [p.message for p in check_dataset(spec) if p.severity == "error"]
    assert "train.csv lacks column(s) 'Pleural Effusion'" in msg and "'Path', 'Atelectasis'" in msg
    (chexpert / "valid.csv").unlink()
    (msg,) = [p.message for p in check_dataset(spec) if p.severity == "error"]
    assert "missing valid.csv" in msg
    with pytest.raises(DataError, match="uncertain='maybe'"):
        load_dataset(f"chexpert:{chexpert}?uncertain=maybe")


def test_chexpert_paper_adds_the_uncertain_output(chexpert: Path) -> None:
    ds = load_dataset(f"chexpert:{chexpert}?paper=1")
    assert ds.classes == (*CHEXPERT_COMPETITION, "Uncertain")
    table = pd.read_csv(chexpert / "train.csv", dtype=str, keep_default_na=False)
    frontal = table[table["Frontal/Lateral"] == "Frontal"]
    for i, row in frontal.iterrows():
        rec = _row(ds, "train.csv", int(i) + 2)
        flagged = any(row[c] == "-1.0" for c in CHEXPERT_COMPETITION)
        assert rec.label[-1] == int(flagged)  # type: ignore[index]
        assert rec.label[:5] == tuple({"1.0": 1, "-1.0": 0}.get(row[c], 0) for c in CHEXPERT_COMPETITION)  # type: ignore[index]
    five = load_dataset(f"chexpert:{chexpert}?frontal=1&uncertain=zeros")
    assert "uncertain_output" not in five.conventions and len(five.classes) == 5
