"""Files a dataset names must resolve inside its root; ``allow_outside_root=1`` opts out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radprobe.data import OutsideRootError, check_dataset, load_dataset
from radprobe.errors import RadprobeError


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((8, 8), value, np.uint8) + np.eye(8, dtype=np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    return _png(tmp_path / "outside_secret.png", value=200)


def _manifest(root: Path, bad: str, column: str = "path") -> Path:
    """A usable 12-row manifest whose row 5 (file line 5) names ``bad`` in ``column``."""
    rows = []
    for i in range(12):
        _png(root / "img" / f"{i}.png", value=i)
        _png(root / "mask" / f"{i}.png", value=i % 2)
        rows.append({"path": f"img/{i}.png", "label": i % 2, "patient_id": f"P{i}"})
    rows[3][column] = bad
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    return root / "m.csv"


def _refused(spec: str, *needles: str) -> str:
    with pytest.raises(OutsideRootError) as e:
        load_dataset(spec)
    with pytest.raises(OutsideRootError):
        check_dataset(spec)  # a refusal, not one problem among others
    msg = str(e.value)
    assert "\n" not in msg and "outside the dataset root" in msg and "allow_outside_root=1" in msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_dotdot_escape_is_refused(tmp_path: Path, secret: Path) -> None:
    csv = _manifest(tmp_path / "a" / "b", "../../outside_secret.png")
    _refused(f"csv:{csv}", "m.csv row 5", "'../../outside_secret.png'", str(secret))


def test_absolute_path_outside_is_refused_even_with_root(tmp_path: Path, secret: Path) -> None:
    csv = _manifest(tmp_path / "d", str(secret))
    _refused(f"csv:{csv}", "m.csv row 5", str(secret))
    _refused(f"csv:{csv}?root={tmp_path / 'd'}", "m.csv row 5", str(secret))


def test_symlink_inside_the_root_pointing_outside_is_refused(tmp_path: Path, secret: Path) -> None:
    csv = _manifest(tmp_path / "d", "img/link.png")
    (tmp_path / "d" / "img" / "link.png").symlink_to(secret)
    _refused(f"csv:{csv}", "m.csv row 5", "'img/link.png'", str(secret))
    # the same in a folder layout, which has no manifest: the message names the file
    folder = tmp_path / "tree"
    for i in range(6):
        _png(folder / ("normal" if i % 2 else "effusion") / f"{i}.png", value=i)
    (folder / "normal" / "link.png").symlink_to(secret)
    _refused(f"folder:{folder}", str(folder / "normal" / "link.png"), str(secret))


def test_mask_paths_are_checked_too(tmp_path: Path, secret: Path) -> None:
    root = tmp_path / "seg"
    rows = [{"image": f"img/{i}.png", "mask": f"mask/{i}.png"} for i in range(6)]
    for r in rows:
        _png(root / r["image"])
        _png(root / r["mask"], value=1)
    rows[2]["mask"] = "../outside_secret.png"
    pd.DataFrame(rows).to_csv(root / "seg.csv", index=False)
    _refused(f"csv:{root / 'seg.csv'}", "seg.csv row 4", "mask path", "'../outside_secret.png'")


def test_paths_that_stay_inside_are_fine(tmp_path: Path) -> None:
    csv = _manifest(tmp_path / "d", "mask/../img/3.png")
    (tmp_path / "d" / "img" / "alias.png").symlink_to(tmp_path / "d" / "img" / "0.png")
    ds = load_dataset(f"csv:{csv}")
    assert len(ds.records) == 12


def test_allow_outside_root_opts_in(tmp_path: Path, secret: Path) -> None:
    csv = _manifest(tmp_path / "a" / "b", "../../outside_secret.png")
    ds = load_dataset(f"csv:{csv}?allow_outside_root=1")
    assert any(Path(r.image.path).resolve() == secret for r in ds.records)
    assert not [p for p in check_dataset(f"csv:{csv}?allow_outside_root=1") if p.severity == "error"]
    assert issubclass(OutsideRootError, RadprobeError)


def _radprobe() -> Path:
    exe = Path(sys.executable).with_name("radprobe")
    if not exe.is_file():
        pytest.skip("the radprobe console script is not installed next to this interpreter")
    return exe


@pytest.mark.parametrize("command", ["check", "eval", "study"])
def test_cli_refuses_with_one_line_and_exit_2(command: str, tmp_path: Path, secret: Path) -> None:
    csv = _manifest(tmp_path / "a" / "b", "../../outside_secret.png")
    out = tmp_path / "run"
    study = tmp_path / "study.yaml"
    study.write_text(f"backbones: [test:vit-tiny]\ndatasets: ['csv:{csv}']\nprotocols: [knn]\n")
    args = {
        "check": ["data", "check", f"csv:{csv}"],
        "eval": ["eval", "-b", "test:vit-tiny", "-d", f"csv:{csv}", "-p", "knn", "--out", str(out)],
        "study": ["study", "run", str(study), "--out", str(out)],
    }[command]
    env = {**os.environ, "RADPROBE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [str(_radprobe()), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "m.csv row 5" in lines[0] and "outside_secret.png" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("results.db")) and not out.exists()
