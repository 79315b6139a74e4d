"""`radprobe eval` on segmentation data it must refuse: exit 2, one stderr line naming the file and what
was expected, and nothing written (the run folder is not even created)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_exe import run_radprobe, stderr_lines
from PIL import Image

from radprobe.cli import main

UNET = ["--set", "seg-unet.epochs=0", "--set", "seg-unet.min_steps=1", "--set", "seg-unet.channels=[4,8]"]


def _seg_folder(root: Path, n: int = 12) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((16, 16), np.uint8)
        mask[4:10, 3 + i % 4 : 9 + i % 4] = 1
        mask[12:14, 2:5] = 2
        Image.fromarray(mask * 200 + 20).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{i:02d}.png")
    (root / "radprobe.yaml").write_text(yaml.safe_dump({"classes": ["background", "organ", "lesion"]}))
    return root


def _eval(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "-b",
        "test:vit-tiny",
        "-d",
        f"folder:{root}",
        "-p",
        "seg-unet",
        "--out",
        str(out),
        *extra,
    ]


def test_mask_label_beyond_the_classes_is_refused_through_the_cli(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "ds")
    bad = root / "masks" / "p05.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[0, 0] = 7
    Image.fromarray(mask).save(bad)
    p = run_radprobe(_eval(root, tmp_path / "run", *UNET), cwd=tmp_path)
    lines = stderr_lines(p)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert str(bad) in lines[0] and "[7] outside the 3 classes" in lines[0]
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


def test_nsd_in_mm_without_voxel_spacing_is_refused_through_the_cli(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "ds")
    p = run_radprobe(
        _eval(root, tmp_path / "run", *UNET, "--set", "seg-unet.nsd_tolerance_mm=2"), cwd=tmp_path
    )
    lines = stderr_lines(p)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "--set seg-unet.nsd_tolerance_mm=2: needs the voxel spacing" in lines[0]
    assert str(root / "images") in lines[0] and "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()


def test_mask_shape_mismatch_names_both_files_through_the_cli(tmp_path: Path) -> None:
    root = _seg_folder(tmp_path / "ds")
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(root / "masks" / "p03.png")
    p = run_radprobe(_eval(root, tmp_path / "run", *UNET), cwd=tmp_path)
    lines = stderr_lines(p)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "image/mask shape mismatch" in lines[0]
    assert str(root / "images" / "p03.png") in lines[0] and str(root / "masks" / "p03.png") in lines[0]
    assert "(16, 16)" in lines[0] and "(16, 12)" in lines[0]
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["0", "-1", "wide", "nan"])
def test_bad_nsd_tolerance_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    root = _seg_folder(tmp_path / "ds")
    code = main(_eval(root, tmp_path / "run", *UNET, "--set", f"seg-unet.nsd_tolerance_mm={value}"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1
    assert "seg-unet.nsd_tolerance_mm=" in err[0] and "expected a positive number of mm" in err[0]
    assert not (tmp_path / "run").exists()
