"""Preset registry: listing, describe_dataset, spec parsing and options; every replica checks clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radprobe.data import check_dataset, describe_dataset, list_datasets, load_dataset, parse_spec
from radprobe.data.presets import PRESETS
from radprobe.data.presets.replicas import REPLICAS, make_replica
from radprobe.errors import DataError

META_KEYS = {
    "name", "spec", "example", "task", "modality", "ndim", "description", "source", "layout", "labels",
    "split_rule", "resolution", "metric", "citation", "url", "options", "paper",
}  # fmt: skip


def test_list_datasets_has_every_preset_with_metadata_and_keeps_synthetic() -> None:
    rows = list_datasets()
    by_name = {r["name"]: r for r in rows}
    assert {"cls2d-binary", "seg3d"} <= set(by_name)
    assert set(PRESETS) == {
        "nih-cxr14", "chexpert", "sars-cov-2-ct", "brain-tumor-mri", "montgomery", "shenzhen", "btcv",
        "amos", "msd", "medmnist",
    }  # fmt: skip
    for name in PRESETS:
        row = by_name[name]
        assert set(row) >= META_KEYS, name
        assert row["spec"] == f"{name}:<root_dir>" and row["example"].startswith(f"{name}:")
        assert row["url"].startswith("http") and row["citation"] and row["layout"]
    assert all("spec" in r for r in rows)
    json.dumps(rows)  # `radprobe datasets --json` must serialise it


def test_describe_dataset_reports_conventions() -> None:
    nih = describe_dataset("nih-cxr14")
    assert "train_val_list.txt" in nih["layout"] and "test_list.txt" in nih["layout"]
    assert "10,002" in nih["split_rule"] and nih["resolution"] == 224
    assert "no_finding" in nih["options"] and nih["paper"] == "no_finding=1&val=last"
    chex = describe_dataset("chexpert:/anywhere")  # a spec suffix is ignored
    assert "uncertain" in chex["options"] and "Pleural Effusion" in chex["labels"]
    assert describe_dataset("montgomery")["resolution"] == 448
    assert describe_dataset("synthetic:seg2d")["source"] == "synthetic"
    with pytest.raises(DataError, match=r"unknown dataset 'nope'.*nih-cxr14"):
        describe_dataset("nope")


def test_cli_datasets_json_lists_presets() -> None:
    from typer.testing import CliRunner

    from radprobe.cli import app

    out = CliRunner().invoke(app, ["datasets", "--json"])
    assert out.exit_code == 0, out.output
    specs = {r["spec"] for r in json.loads(out.output)}
    assert "nih-cxr14:<root_dir>" in specs and "synthetic:cls2d-binary" in specs


def test_preset_spec_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nih-cxr14: dataset not found at .*nihcc"):
        parse_spec(f"nih-cxr14:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match=r"unknown option\(s\) bogus for chexpert; valid: .*uncertain"):
        parse_spec(f"chexpert:{tmp_path}?bogus=1")
    with pytest.raises(DataError, match=r"unknown dataset scheme 'nih'.*nih-cxr14:<root_dir>"):
        parse_spec(f"nih:{tmp_path}")
    with pytest.raises(DataError, match=r"paper='maybe'"):
        load_dataset(f"{make_replica('montgomery', tmp_path)}?paper=maybe")


def test_sidecar_options_apply_to_presets(tmp_path: Path) -> None:
    spec = make_replica("montgomery", tmp_path)
    (Path(spec.split(":", 1)[1]) / "radprobe.yaml").write_text("lungs: merged\n")
    assert load_dataset(spec).classes == ("background", "lung")


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_every_replica_loads_and_checks_clean(preset: str, tmp_path: Path) -> None:
    spec = make_replica(preset, tmp_path / preset)
    ds = load_dataset(spec)
    info = PRESETS[preset]
    if isinstance(info.ndim, int):
        assert ds.ndim == info.ndim
    if info.task != "per set":
        assert ds.task == info.task
    assert {r.split for r in ds.records} == {"train", "val", "test"}
    errors = [p for p in check_dataset(spec) if p.severity == "error"]
    assert errors == [], errors
    assert ds.conventions  # every preset records what it applied


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("kind", ["png", "jpg", "mat", "nifti", "npz", "dicom"])
def test_truncated_files_of_every_preset_format_give_one_line_errors(kind: str, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from radprobe.data import ImageRef, read_image
    from radprobe.data.presets.replicas import write_cjdata_mat
    from radprobe.data.synthetic import write_dicom

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (64, 64)).astype(np.uint8)
    if kind in ("png", "jpg"):
        path = tmp_path / f"x.{kind}"
        Image.fromarray(arr).save(path)
        ref = ImageRef(str(path), "image")
    elif kind == "mat":
        path = tmp_path / "1.mat"
        write_cjdata_mat(path, arr.astype(np.int16), 1, "7", arr > 100)
        ref = ImageRef(str(path), "h5", key="cjdata/image")
    elif kind == "nifti":
        import nibabel as nib

        path = tmp_path / "x.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(32, 32, 16)).astype(np.float32), np.eye(4)), str(path))
        ref = ImageRef(str(path), "nifti")
    elif kind == "npz":
        path = tmp_path / "x.npz"
        np.savez_compressed(path, train_images=rng.integers(0, 255, (50, 28, 28)).astype(np.uint8))
        ref = ImageRef(str(path), "npz", index=3, key="train_images")
    else:
        path = write_dicom(tmp_path / "x.dcm", arr.astype(np.uint16) * 16)
        ref = ImageRef(str(path), "dicom")
    read_image(ref)  # intact
    _truncate(path)
    with pytest.raises(DataError) as err:
        read_image(ref)
    assert path.name in str(err.value) and "\n" not in str(err.value)
