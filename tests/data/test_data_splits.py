"""Splits: deterministic, patient-level, stratified, saved and reused; leakage detection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radprobe.data import ImageRef, Record, assign_splits, check_leakage, load_dataset
from radprobe.errors import DataError


def _records(n_patients: int = 200, per: int = 3, pos_rate: float = 0.1, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        positive = rng.random() < pos_rate
        for k in range(per):
            out.append(Record(f"s{p}_{k}", f"P{p}", ImageRef(f"/x/{p}_{k}.png"), int(positive and k == 0)))
    return out


def test_assignment_is_deterministic_and_seeded() -> None:
    recs = _records()
    a = [r.split for r in assign_splits(recs, "binary", seed=3)]
    b = [r.split for r in assign_splits(recs, "binary", seed=3)]
    c = [r.split for r in assign_splits(recs, "binary", seed=4)]
    assert a == b and a != c


def test_assignment_is_patient_level_and_close_to_fractions() -> None:
    out = assign_splits(_records(), "binary", seed=0, fractions=(0.7, 0.1, 0.2))
    assert check_leakage(out) == []
    sizes = Counter(r.split for r in out)
    assert sizes["train"] / 600 == pytest.approx(0.7, abs=0.03)
    assert sizes["val"] / 600 == pytest.approx(0.1, abs=0.03)
    assert sizes["test"] / 600 == pytest.approx(0.2, abs=0.03)


def test_assignment_is_stratified() -> None:
    recs = _records(n_patients=300, pos_rate=0.12)
    out = assign_splits(recs, "binary", seed=1)
    overall = np.mean([r.label for r in out])
    for split in ("train", "val", "test"):
        rate = np.mean([r.label for r in out if r.split == split])
        assert rate == pytest.approx(overall, abs=0.02), split


def test_multilabel_rare_label_reaches_every_split() -> None:
    rng = np.random.default_rng(0)
    recs = []
    for p in range(100):
        for k in range(2):
            lab = (int(rng.random() < 0.4), int(rng.random() < 0.3), int(p % 25 == 0 and k == 0))
            recs.append(Record(f"s{p}_{k}", f"P{p}", ImageRef("x.png"), lab))
    out = assign_splits(recs, "multilabel", seed=0)
    assert sum(r.label[2] for r in out) == 4  # type: ignore[index]
    for split in ("train", "val", "test"):
        assert any(r.label[2] for r in out if r.split == split), split  # type: ignore[index]


def test_existing_splits_respected_and_val_carved_from_train() -> None:
    recs = [
        Record(f"s{i}", f"P{i // 2}", ImageRef("x.png"), i % 2, split="test" if i >= 80 else "train")
        for i in range(100)
    ]
    out = assign_splits(recs, "binary", seed=0)
    assert [r.split for r in out[80:]] == ["test"] * 20
    val = [r for r in out if r.split == "val"]
    assert 8 <= len(val) <= 12  # 0.1 / (0.7 + 0.1) of the 80 train samples
    assert check_leakage(out) == []
    complete = [Record(r.sample_id, r.patient_id, r.image, r.label, split=r.split) for r in out]
    assert [r.split for r in assign_splits(complete, "binary")] == [r.split for r in out]


def test_bad_fractions_and_partial_splits() -> None:
    with pytest.raises(DataError, match="fractions"):
        assign_splits(_records(10), "binary", fractions=(0.5, 0.5, 0.5))
    recs = _records(10)
    recs[0] = Record("s0", "P0", ImageRef("x"), 0, split="train")
    with pytest.raises(DataError, match="has no split"):
        assign_splits(recs, "binary")


def test_check_leakage_names_patient_and_samples() -> None:
    recs = assign_splits(_records(50), "binary", seed=0)
    train = next(r for r in recs if r.split == "train")
    leaked = Record("leak", train.patient_id, ImageRef("y.png"), 0, split="test")
    msgs = check_leakage([*recs, leaked])
    assert len(msgs) == 1
    assert train.patient_id in msgs[0] and "leak" in msgs[0] and train.sample_id in msgs[0]
    assert "train" in msgs[0] and "test" in msgs[0]


def _dataset(root: Path, n: int = 40) -> Path:
    rows = []
    for i in range(n):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(root / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": int(i % 3 == 0), "patient_id": f"P{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def test_split_file_saved_and_reused(tmp_path: Path, private_cache: Path) -> None:
    csv = _dataset(tmp_path)
    ds = load_dataset(str(csv), split_seed=7)
    assert ds.split_file is not None
    split_file = Path(ds.split_file)
    assert split_file.parent == private_cache / "splits" and split_file.is_file()
    table = pd.read_csv(split_file, dtype=str)
    assert list(table.columns) == ["sample_id", "patient_id", "split"]
    assert dict(zip(table.sample_id, table.split, strict=True)) == {r.sample_id: r.split for r in ds.records}
    # The file is the source of truth on reload: an edit is picked up.
    first = ds.records[0]
    moved = "test" if first.split != "test" else "train"
    table.loc[table.sample_id == first.sample_id, "split"] = moved
    table.to_csv(split_file, index=False)
    again = load_dataset(str(csv), split_seed=7)
    assert again.records[0].split == moved
    assert again.split_digest("test") != ds.split_digest("test")
    # Another seed gets its own file.
    other = load_dataset(str(csv), split_seed=8)
    assert other.split_file != ds.split_file
    assert not list(split_file.parent.glob("*.tmp"))


def test_loaded_dataset_splits_have_no_leakage(tmp_path: Path) -> None:
    ds = load_dataset(str(_dataset(tmp_path, 60)), split_seed=1)
    assert check_leakage(ds.records) == []
    assert set(ds.splits()) == {"train", "val", "test"}
    patients = {s: set(ds.patients(v)) for s, v in ds.splits().items()}
    assert not (patients["train"] & patients["test"]) and not (patients["val"] & patients["test"])
