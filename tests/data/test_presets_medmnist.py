"""MedMNIST preset: published file names and sizes, label names, 3D sets, MedMNIST+ zero-padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radprobe.data import check_dataset, load_dataset
from radprobe.data.presets import medmnist
from radprobe.data.presets.medmnist_info import MEDMNIST
from radprobe.data.presets.replicas import make_medmnist
from radprobe.errors import DataError


def test_medmnist_table_covers_v2_and_plus_sizes() -> None:
    assert len(MEDMNIST) == 18
    for name, info in MEDMNIST.items():
        assert set(info.md5) == ({28, 64} if info.ndim == 3 else {28, 64, 128, 224}), name
        assert all(len(h) == 32 for h in info.md5.values())
    assert (
        medmnist.url("chestmnist", 224)
        == "https://zenodo.org/records/10519652/files/chestmnist_224.npz?download=1"
    )
    assert medmnist.file_name("organmnist3d", 28) == "organmnist3d.npz"


def test_medmnist_file_spec_uses_published_splits_and_names(tmp_path: Path) -> None:
    spec = make_medmnist(tmp_path, name="pneumoniamnist", size=28)
    ds = load_dataset(spec)
    assert ds.task == "binary" and ds.classes == ("normal", "pneumonia") and ds.name == "pneumoniamnist"
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [24, 8, 10]
    assert ds.split_file is None  # nothing carved
    assert ds.load_image(ds.records[0]).shape == (28, 28)


def test_medmnist_folder_spec_multilabel_chest(tmp_path: Path) -> None:
    make_medmnist(tmp_path, name="chestmnist", size=64)
    ds = load_dataset(f"medmnist:{tmp_path}?name=chestmnist&size=64")
    assert ds.task == "multilabel" and len(ds.classes) == 14 and ds.classes[0] == "atelectasis"
    assert ds.labels(ds.split("train")).shape == (24, 14)
    assert ds.conventions["size"] == "64"


def test_medmnist_3d_and_rgb_sets(tmp_path: Path) -> None:
    ds = load_dataset(make_medmnist(tmp_path, name="organmnist3d", size=28, counts=(11, 11, 11)))
    assert ds.ndim == 3 and ds.task == "multiclass" and len(ds.classes) == 11
    assert ds.load_image(ds.records[0]).shape == (28, 28, 28)
    rgb = load_dataset(make_medmnist(tmp_path, name="bloodmnist", size=28, counts=(8, 8, 8)))
    assert rgb.load_image(rgb.records[0]).shape == (28, 28, 3)


def test_medmnist_plus_zero_padding_to_224(tmp_path: Path) -> None:
    spec = make_medmnist(tmp_path, name="pneumoniamnist", size=64)
    plain = load_dataset(spec)
    padded = load_dataset(f"{spec}?paper=1")
    a, b = plain.load_image(plain.records[0]), padded.load_image(padded.records[0])
    assert b.shape == (224, 224) and np.array_equal(b[80:144, 80:144], a)
    assert b.sum() == pytest.approx(a.sum()) and padded.conventions["pad"] == "224"
    assert padded.manifest_digest() != plain.manifest_digest()
    with pytest.raises(DataError, match="pad= applies to 2D sets"):
        load_dataset(f"{make_medmnist(tmp_path, name='nodulemnist3d')}?pad=224")


def test_medmnist_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"missing chestmnist_224.npz .*zenodo.*md5 45bd33e6.*download_medmnist"
    ):
        load_dataset(f"medmnist:{tmp_path}?name=chestmnist&size=224")
    with pytest.raises(DataError, match="published at sizes 28, 64, not 224"):
        load_dataset(f"medmnist:{tmp_path}?name=organmnist3d&size=224")
    with pytest.raises(DataError, match="unknown MedMNIST set 'xraymnist'"):
        load_dataset(f"medmnist:{tmp_path}?name=xraymnist")
    wrong = tmp_path / "wrong"
    make_medmnist(wrong, name="pneumoniamnist", size=64)
    (wrong / "pneumoniamnist_64.npz").rename(wrong / "pneumoniamnist_128.npz")
    (msg,) = [p.message for p in check_dataset(f"medmnist:{wrong / 'pneumoniamnist_128.npz'}")]
    assert "pneumoniamnist_128.npz:train_images holds images of shape (64, 64)" in msg and "(128, 128)" in msg
    bad = Path(make_medmnist(tmp_path / "b", name="breastmnist").split(":", 1)[1])
    arrays = dict(np.load(bad))
    arrays["test_labels"][3] = 7
    np.savez(bad, **arrays)
    problems = check_dataset(f"medmnist:{bad}")
    assert any(
        "test_labels[3] = 7 is outside 0..1" in p.message and "breastmnist.npz" in p.message for p in problems
    )
