"""Diagnostics go to stderr, one line each: `data check` problems and unreadable weights files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from cli_exe import run_radprobe, stderr_lines
from PIL import Image


def _broken_manifest(root: Path) -> Path:
    rows = []
    for i in range(12):
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(root / "img" / f"{i}.png")
        rows.append(
            {"path": f"img/{i}.png", "label": ["a", "b"][i % 2], "split": "train" if i < 8 else "test"}
        )
    rows[3]["path"] = "img/missing.png"
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_data_check_prints_problems_on_stderr_and_the_verdict_on_stdout(tmp_path: Path) -> None:
    manifest = _broken_manifest(tmp_path / "ds")
    p = run_radprobe(["data", "check", f"csv:{manifest}"], cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    errors = [line for line in stderr_lines(p) if line.startswith("error")]
    assert any("missing.png" in line for line in errors), p.stderr
    assert "missing.png" not in p.stdout and "error:" not in p.stdout
    assert "1 error(s)" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_an_empty_weights_file_is_one_line_naming_it(tmp_path: Path) -> None:
    weights = tmp_path / "empty.pth"
    weights.write_bytes(b"")
    args = ["extract", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "--weights", str(weights)]
    p = run_radprobe(args, cwd=tmp_path)
    lines = stderr_lines(p)
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert str(weights) in lines[0] and "empty, not a checkpoint" in lines[0]
    assert "EOFError" not in p.stderr and "Traceback" not in p.stderr
