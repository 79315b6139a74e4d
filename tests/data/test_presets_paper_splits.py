"""``paper=1`` (``split=paper``) gives the released code's cases per split: Montgomery, Shenzhen, BTCV,
AMOS and MSD Heart, each in a folder with the real file names (empty files: nothing is read)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from radprobe.data import ReadOptions, load_dataset
from radprobe.data.presets.paper_splits import BTCV_CASES, HEART_CASES
from radprobe.data.presets.registry import PRESETS
from radprobe.errors import DataError


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def _splits(spec: str) -> dict[str, set[str]]:
    ds = load_dataset(spec)
    return {s: {r.sample_id for r in ds.split(s)} for s in ("train", "val", "test")}


def _released_by_position(names: list[str], picks: list[list[int]]) -> list[list[str]]:
    """The authors' moves, written as they are: pick positions, then remove the picked names."""
    left, out = list(names), []
    for positions in picks:
        chosen = [left[i] for i in positions]
        for name in chosen:
            left.remove(name)
        out.append(chosen)
    return [*out, left]


# ---------------------------------------------------------------------------- BTCV


def _btcv(tmp_path: Path) -> Path:
    raw = tmp_path / "BTCV" / "RawData" / "Training"
    for c in BTCV_CASES:
        _touch(raw / "img" / f"img{c:04d}.nii.gz", raw / "label" / f"label{c:04d}.nii.gz")
    return tmp_path / "BTCV"


def test_btcv_paper_trains_on_even_volumes_and_tests_on_odd_ones(tmp_path: Path) -> None:
    root = _btcv(tmp_path)
    got = _splits(f"btcv:{root}?paper=1")
    odd = {f"img{c:04d}" for c in BTCV_CASES if c % 2}
    even = {f"img{c:04d}" for c in BTCV_CASES if not c % 2}
    # btcv.py:169: even positions of the sorted listing (odd case numbers) -> val/, run as the test set
    assert got["test"] == odd and len(odd) == 15
    # no validation set in the released runs: radprobe carves one from the 15 train volumes
    assert got["train"] | got["val"] == even and got["val"] and not got["train"] & got["val"]
    assert load_dataset(f"btcv:{root}?paper=1").conventions["split"].startswith("paper: train = even")
    assert _splits(f"btcv:{root}?paper=1&split=")["test"] != odd  # split= turns the paper split off
    # the imagesTr + dataset_0.json conversion (24 training / 6 validation) gets the same split
    conv = tmp_path / "conv"
    entries = [
        {"image": f"imagesTr/img{c:04d}.nii.gz", "label": f"labelsTr/label{c:04d}.nii.gz"} for c in BTCV_CASES
    ]
    _touch(*(conv / e[k] for e in entries for k in ("image", "label")))
    (conv / "dataset_0.json").write_text(json.dumps({"training": entries[:24], "validation": entries[24:]}))
    assert _splits(f"btcv:{conv}?paper=1")["test"] == odd


def test_btcv_paper_names_the_missing_volume_in_one_line(tmp_path: Path) -> None:
    root = _btcv(tmp_path)
    (root / "RawData" / "Training" / "img" / "img0023.nii.gz").unlink()
    (root / "RawData" / "Training" / "label" / "label0023.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"^split=paper needs BTCV's 30 labelled volumes .*: missing img0023$"
    ):
        load_dataset(f"btcv:{root}?paper=1")


def test_btcv_paper_reads_the_stored_slices_through_the_released_clamp(tmp_path: Path) -> None:
    import nibabel as nib

    from radprobe.data.presets.replicas import make_btcv

    make_btcv(tmp_path, n=40)  # LPS-like affine, so stored and canonical planes differ
    raw = tmp_path / "BTCV" / "RawData" / "Training"
    for c in range(11, 21):  # BTCV's 30 labelled volumes are 1-10 and 21-40
        (raw / "img" / f"img{c:04d}.nii.gz").unlink()
        (raw / "label" / f"label{c:04d}.nii.gz").unlink()
    root = tmp_path / "BTCV"
    ds = load_dataset(f"btcv:{root}?paper=1&slices=1")
    assert ds.read == ReadOptions(window=(-212.0, 1624.0), orient="stored")
    for r in ds.split("test")[:12:5]:
        # btcv.py:87-88 and btcv_slice.py:72-79: stored slices, torch.clamp(-1024, 600) at load time
        x = nib.load(r.image.path).get_fdata().transpose(2, 0, 1)[r.image.index]
        y = nib.load(r.mask.path).get_fdata().transpose(2, 0, 1)[r.mask.index]
        np.testing.assert_allclose(ds.load_image(r), (np.clip(x, -1024, 600) + 1024) / 1624, atol=1e-6)
        np.testing.assert_array_equal(ds.load_mask(r), y)
    paper = load_dataset(f"btcv:{root}?paper=1")
    assert paper.manifest_digest() != load_dataset(f"btcv:{root}?split=paper").manifest_digest()
    # a plain spec reads as before this option existed: same read options, so the same digest
    plain = load_dataset(f"btcv:{root}")
    assert plain.read.to_dict() == {"window": None, "norm": "auto", "bits": None, "channel": 0}
    assert plain.manifest_digest() == load_dataset(f"btcv:{root}?orient=canonical").manifest_digest()
    explicit = load_dataset(f"btcv:{root}?paper=1&orient=canonical&window=")  # explicit options win
    assert explicit.read == ReadOptions() and explicit.conventions["paper"] == PRESETS["btcv"].paper


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("btcv", {"split": "paper", "window": "-212,1624", "orient": "stored"}),
        ("amos", {"split": "paper", "window": "-212,1624", "orient": "stored"}),
        ("msd", {"split": "paper", "norm": "minmax", "orient": "stored"}),
    ],
)
def test_paper_expands_to_the_released_volume_reading(preset: str, expected: dict[str, str]) -> None:
    from radprobe.data.presets import expand_paper

    assert expand_paper(PRESETS[preset], {"paper": "1"}) == {**expected, "paper": "1"}
    assert expand_paper(PRESETS[preset], {"paper": "1", "orient": "canonical"})["orient"] == "canonical"


# ---------------------------------------------------------------------------- AMOS


def _amos(tmp_path: Path) -> Path:
    """300 labelled CT cases (ids <= 500) over imagesTr / imagesVa, plus MRI cases the split ignores."""
    base = tmp_path / "amos22"
    ct = [n for n in range(1, 501) if n % 5 != 0][:300]
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": []}
    for i, num in enumerate([*ct, 540, 541, 585]):
        folder, key = ("Va", "validation") if i % 3 == 2 else ("Tr", "training")
        img, lab = f"images{folder}/amos_{num:04d}.nii.gz", f"labels{folder}/amos_{num:04d}.nii.gz"
        _touch(base / img, base / lab)
        entries[key].append({"image": f"./{img}", "label": f"./{lab}"})
    labels = {"0": "background", **{str(i): f"organ{i}" for i in range(1, 16)}}
    (base / "dataset.json").write_text(json.dumps({"labels": labels, **entries}))
    return base


def test_amos_paper_takes_80_20_50_ct_volumes_by_position_as_the_released_cell(tmp_path: Path) -> None:
    root = _amos(tmp_path)
    got = _splits(f"amos:{root}?paper=1")
    names = sorted(f"amos_{n:04d}" for n in range(1, 501) if n % 5 != 0)[:300]
    arange = [np.arange(0, n, n / k).round().astype("int") for n, k in ((300, 80), (220, 20), (200, 50))]
    train, val, test, unused = _released_by_position(names, [list(a) for a in arange])
    assert (got["train"], got["val"], got["test"]) == (set(train), set(val), set(test))
    assert [len(train), len(val), len(test), len(unused)] == [80, 20, 50, 150]
    assert "amos_0001" in got["train"] and "amos_0540" not in set().union(*got.values())
    # amos.py:80-86 clamps CT to [-1024, 600] too; slices as stored (amos.py:131-132)
    assert load_dataset(f"amos:{root}?paper=1").read == ReadOptions(window=(-212.0, 1624.0), orient="stored")
    with pytest.raises(
        DataError, match=r"^amos: split=paper uses the CT volumes \(subset=ct\); got subset=all$"
    ):
        load_dataset(f"amos:{root}?paper=1&subset=all")


def test_amos_paper_names_missing_files_and_wrong_counts_in_one_line(tmp_path: Path) -> None:
    root = _amos(tmp_path)
    (root / "imagesVa" / "amos_0007.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"^split=paper needs AMOS22's 300 labelled CT volumes in .*: missing amos_0007$"
    ):
        load_dataset(f"amos:{root}?paper=1")
    meta = json.loads((root / "dataset.json").read_text())
    meta["validation"] = [e for e in meta["validation"] if "amos_0007" not in e["image"]]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"300 labelled CT volumes .*dataset.json lists 299$"):
        load_dataset(f"amos:{root}?paper=1")


# ---------------------------------------------------------------------------- MSD Heart


def _heart(tmp_path: Path) -> Path:
    base = tmp_path / "Task02_Heart"
    training = []
    for c in HEART_CASES:
        _touch(base / "imagesTr" / f"la_{c:03d}.nii.gz", base / "labelsTr" / f"la_{c:03d}.nii.gz")
        _touch(base / "imagesTr" / f"._la_{c:03d}.nii.gz")  # the tarball's AppleDouble files
        training.append({"image": f"./imagesTr/la_{c:03d}.nii.gz", "label": f"./labelsTr/la_{c:03d}.nii.gz"})
    meta = {"labels": {"0": "background", "1": "left atrium"}, "modality": {"0": "MRI"}, "training": training}
    (base / "dataset.json").write_text(json.dumps(meta))
    return base


def test_msd_heart_paper_is_the_inferred_12_4_4_with_a_warning(tmp_path: Path) -> None:
    root = _heart(tmp_path)
    got = _splits(f"msd:{root}?paper=1")
    assert got["test"] == {"la_003", "la_010", "la_018", "la_023"}
    assert got["val"] == {"la_004", "la_011", "la_019", "la_024"}
    train = sorted(got["train"])
    # the released notebook's train slices run from la_005_000.npy to la_030_109.npy
    assert len(train) == 12 and (train[0], train[-1]) == ("la_005", "la_030")
    # msd_heart.py:65-70: no clamp (MRI), so a linear min-max per volume; slices as stored
    assert load_dataset(f"msd:{root}?paper=1").read == ReadOptions(norm="minmax", orient="stored")
    from radprobe.data import check_dataset

    assert any("no Task02_Heart split" in p.message for p in check_dataset(f"msd:{root}?paper=1"))


def test_msd_heart_paper_slices_keep_every_slice_in_their_volumes_split(tmp_path: Path) -> None:
    import nibabel as nib

    root = _heart(tmp_path)
    for c in HEART_CASES:  # 4 slices each; the label only on slice 1, so 3 of 4 slices are empty
        lab = np.zeros((5, 5, 4), np.uint8)
        lab[1:3, 1:3, 1] = 1
        for folder, arr in (("imagesTr", np.full((5, 5, 4), c, np.int16)), ("labelsTr", lab)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / folder / f"la_{c:03d}.nii.gz"))
    ds = load_dataset(f"msd:{root}?paper=1&slices=1")
    assert len(ds.records) == 4 * len(HEART_CASES)  # the released slice_it keeps every slice, empty or not
    volumes = {s: {r.meta["volume"] for r in ds.split(s)} for s in ("train", "val", "test")}
    assert volumes["test"] == {"la_003", "la_010", "la_018", "la_023"} and len(volumes["train"]) == 12
    assert all(len(ds.split(s)) == 4 * len(volumes[s]) for s in volumes)


def test_msd_paper_refuses_a_missing_heart_volume_and_other_tasks_in_one_line(tmp_path: Path) -> None:
    root = _heart(tmp_path)
    for f in ("imagesTr", "labelsTr"):
        (root / f / "la_010.nii.gz").unlink()
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = [e for e in meta["training"] if "la_010" not in e["image"]]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        DataError, match=r"^split=paper needs Task02_Heart's 20 labelled volumes .*: missing la_010$"
    ):
        load_dataset(f"msd:{root}?paper=1")
    spleen = root.rename(tmp_path / "Task09_Spleen")
    with pytest.raises(
        DataError, match=r"^msd: split=paper exists for Task02_Heart only .*got Task09_Spleen"
    ):
        load_dataset(f"msd:{spleen}?paper=1")


# ---------------------------------------------------------------------------- Montgomery / Shenzhen


def _montgomery(tmp_path: Path, n: int = 138) -> Path:
    base = tmp_path / "MontgomerySet"
    for i in range(n):
        name = f"MCUCXR_{3 * i + 1:04d}_{i % 2}.png"
        _touch(base / "CXR_png" / name, *(base / "ManualMask" / s / name for s in ("leftMask", "rightMask")))
    return base


def test_montgomery_paper_is_mc_make_splits_by_position(tmp_path: Path) -> None:
    root = _montgomery(tmp_path)
    got = _splits(f"montgomery:{root}?paper=1")
    names = sorted(p.stem for p in (root / "CXR_png").iterdir())
    test, val, train = _released_by_position(
        names, [list(range(0, 138, math.ceil(138 / 46))), list(range(0, 92, math.ceil(92 / 23)))]
    )
    assert (got["train"], got["val"], got["test"]) == (set(train), set(val), set(test))
    assert (len(train), len(val), len(test)) == (69, 23, 46) and "MCUCXR_0001_0" in got["test"]
    with pytest.raises(DataError, match=r"^montgomery: split=paper fixes every case's split; drop patients="):
        load_dataset(f"montgomery:{root}?paper=1&patients=69,23,46")


def test_montgomery_paper_names_an_unmasked_image_and_refuses_another_count(tmp_path: Path) -> None:
    root = _montgomery(tmp_path)
    (root / "ManualMask" / "leftMask" / "MCUCXR_0010_1.png").unlink()
    with pytest.raises(DataError, match=r"^split=paper needs both lung masks .*: missing for MCUCXR_0010_1$"):
        load_dataset(f"montgomery:{root}?paper=1")
    root = _montgomery(tmp_path / "short", n=137)
    with pytest.raises(
        DataError, match=r"^split=paper picks by position among the 138 Montgomery .* has 137$"
    ):
        load_dataset(f"montgomery:{root}?paper=1")


def test_shenzhen_paper_is_shenzhen_make_splits_over_masked_images(tmp_path: Path) -> None:
    base = tmp_path / "ChinaSet_AllFiles"
    for i in range(662):
        stem = f"CHNCXR_{i + 1:04d}_{int(i >= 326)}"
        _touch(base / "CXR_png" / f"{stem}.png")
        if i % 6 or i >= 6 * 96:  # 96 images without a mask, spread out as in the release
            _touch(base / "mask" / f"{stem}_mask.png")
    got = _splits(f"shenzhen:{base}?paper=1")
    masked = sorted(p.name[: -len("_mask.png")] for p in (base / "mask").iterdir())
    assert len(masked) == 566
    test, val, train = _released_by_position(
        masked, [list(range(0, 566, math.ceil(566 / 114))), list(range(0, 452, math.ceil(452 / 91)))]
    )
    assert (got["train"], got["val"], got["test"]) == (set(train), set(val), set(test))
    assert (len(train), len(val), len(test)) == (361, 91, 114)
    (base / "mask" / f"{masked[3]}_mask.png").unlink()
    with pytest.raises(DataError, match=r"among the 566 Shenzhen images with a mask; .* has 565$"):
        load_dataset(f"shenzhen:{base}?paper=1")
