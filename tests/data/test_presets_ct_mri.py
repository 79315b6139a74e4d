"""SARS-CoV-2 CT (slice folders -> volumes) and Figshare brain-tumour MRI (.mat v7.3) presets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from radprobe.data import Problem, check_dataset, check_leakage, load_dataset
from radprobe.data.presets.replicas import make_brain_tumor, make_sars, write_cjdata_mat
from radprobe.data.readers import natural_key, stack_files
from radprobe.errors import DataError


def _one(problems: list[Problem], severity: str, *needles: str) -> str:
    hits = [p.message for p in problems if p.severity == severity and all(n in p.message for n in needles)]
    assert hits, f"no {severity} mentions {needles}; got:\n" + "\n".join(map(str, problems))
    return hits[0]


# ---------------------------------------------------------------------------- SARS-CoV-2 CT


@pytest.fixture
def sars(tmp_path: Path) -> Path:
    make_sars(tmp_path)
    return tmp_path


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["10.png", "2.png", "1.png", "IM (10).png", "IM (9).png", "b.png", "A.png"]
    assert sorted(names, key=natural_key) == [
        "1.png",
        "2.png",
        "10.png",
        "A.png",
        "b.png",
        "IM (9).png",
        "IM (10).png",
    ]


def test_sars_slices_are_stacked_in_natural_order(sars: Path) -> None:
    patient = sars / "New_Data_CoV2" / "Covid" / "Patient 99"
    patient.mkdir()
    for k in range(1, 13):  # slice k has mean 8k: a text sort (1, 10, 11, 12, 2, ...) would show
        Image.fromarray(np.full((12, 12), 8 * k, np.uint8)).save(patient / f"{k}.png")
    assert [Path(f).name for f in stack_files(str(patient))][:4] == ["1.png", "2.png", "3.png", "4.png"]
    ds = load_dataset(f"sars-cov-2-ct:{sars}")
    rec = next(r for r in ds.records if r.sample_id == "Covid/Patient 99")
    vol = ds.load_image(rec)
    assert vol.shape == (12, 12, 12) and ds.ndim == 3
    assert np.all(np.diff(vol.mean(axis=(1, 2))) > 0)


def test_sars_labels_patients_and_exact_patient_split(sars: Path) -> None:
    ds = load_dataset(f"sars-cov-2-ct:{sars}?patients=6,4,4")
    assert ds.task == "binary" and ds.classes == ("not COVID", "COVID")
    for r in ds.records:
        assert r.label == int(r.sample_id.startswith("Covid/")) and r.patient_id == r.sample_id
    assert Counter(r.split for r in ds.records) == {"train": 6, "val": 4, "test": 4}
    for split in ("train", "val", "test"):
        assert {r.label for r in ds.split(split)} == {0, 1}, split  # stratified
    source = load_dataset(f"sars-cov-2-ct:{sars}?labels=source")
    assert source.classes == ("Covid", "Healthy", "Others") and source.task == "multiclass"
    with pytest.raises(DataError, match="patient counts 90/50/70 sum to 210 but the dataset has 14"):
        load_dataset(f"sars-cov-2-ct:{sars}?paper=1")


def test_sars_slices_option_gives_2d_samples(sars: Path) -> None:
    vols = load_dataset(f"sars-cov-2-ct:{sars}")
    ds = load_dataset(f"sars-cov-2-ct:{sars}?slices=1")
    assert ds.ndim == 2
    depth = {r.sample_id: ds.load_image(r).shape for r in ds.records[:3]}
    assert all(s == (12, 12) for s in depth.values())
    assert len(ds.records) == sum(len(stack_files(r.image.path)) for r in vols.records)
    assert check_leakage(ds.records) == []  # slices of one patient stay together


def test_sars_faults_are_named(sars: Path) -> None:
    base = sars / "New_Data_CoV2"
    odd = base / "Healthy" / "Patient 2" / "2.png"
    Image.fromarray(np.zeros((20, 12), np.uint8)).save(odd)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(base / "Others" / "loose.png")
    problems = check_dataset(f"sars-cov-2-ct:{sars}")
    _one(problems, "error", "slices differ in size", "Patient 2", "2.png")
    _one(problems, "error", "Others", "outside patient folders", "loose.png")
    (base / "Pneumonia").mkdir()
    (msg,) = [p.message for p in check_dataset(f"sars-cov-2-ct:{sars}")]
    assert "unknown class folder(s) ['Pneumonia']" in msg


# ---------------------------------------------------------------------------- brain tumour


@pytest.fixture
def brain(tmp_path: Path) -> Path:
    make_brain_tumor(tmp_path)
    return tmp_path


def _cjdata(path: Path) -> tuple[int, str]:
    with h5py.File(path, "r") as f:
        label = int(f["cjdata/label"][()].ravel()[0])
        pid = "".join(chr(c) for c in f["cjdata/PID"][()].ravel())
    return label, pid


def test_brain_tumor_labels_and_pid_grouping(brain: Path) -> None:
    ds = load_dataset(f"brain-tumor-mri:{brain}")
    assert ds.task == "multiclass" and ds.classes == ("meningioma", "glioma", "pituitary")
    files = sorted((brain / "brainTumorDataPublic_1-99").glob("*.mat"))
    assert len(ds.records) == len(files)  # cvind.mat is not a sample
    for r in ds.records:
        label, pid = _cjdata(Path(r.image.path))
        assert r.label == label - 1 and r.patient_id == pid
    by_patient: dict[str, set[str]] = {}
    for r in ds.records:
        by_patient.setdefault(r.patient_id, set()).add(r.split or "")
    assert all(len(s) == 1 for s in by_patient.values()) and len(by_patient) == 9
    img = ds.load_image(ds.records[0])
    assert img.shape == (20, 16) and img.dtype == np.float32  # MATLAB column-major undone


def test_brain_tumor_paper_fractions_and_segmentation(brain: Path) -> None:
    ds = load_dataset(f"brain-tumor-mri:{brain}?paper=1")
    assert ds.conventions["paper"] == "fractions=1344,718,1002" and ds.split_file
    assert "1344" not in Path(ds.split_file).name  # stored as normalised fractions
    seg = load_dataset(f"brain-tumor-mri:{brain}?task=segmentation")
    assert seg.task == "segmentation" and seg.classes == ("background", "tumor")
    mask = seg.load_mask(seg.records[0])
    assert mask.shape == (20, 16) and mask[5:10, 4:9].all() and mask.sum() == 25


def test_brain_tumor_faults_are_named(brain: Path) -> None:
    folder = brain / "brainTumorDataPublic_1-99"
    truncated = folder / "2.mat"
    truncated.write_bytes(truncated.read_bytes()[:700])
    write_cjdata_mat(folder / "3.mat", np.ones((20, 16)), 4, "123", np.zeros((20, 16)))
    (folder / "4.mat").write_bytes(b"MATLAB 5.0 MAT-file, Platform: PCWIN64" + b"\0" * 100)
    problems = check_dataset(f"brain-tumor-mri:{brain}")
    _one(problems, "error", str(truncated), "truncated or not a MATLAB v7.3 (HDF5) file")
    _one(problems, "error", "3.mat", "cjdata.label = 4", "expected 1 (meningioma)")
    _one(problems, "error", "4.mat", "MATLAB v5")
    assert all("\n" not in p.message for p in problems)
    with pytest.raises(DataError, match=r"/2\.mat"):
        load_dataset(f"brain-tumor-mri:{brain}")
