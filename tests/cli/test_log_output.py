"""Output written to a log (not a terminal): tables laid out whole, progress as plain lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from radprobe import progress

EXE = str(Path(sys.executable).parent / "radprobe")


def test_tables_in_a_log_are_not_cut_at_80_columns() -> None:
    res = subprocess.run([EXE, "datasets"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "cls2d-binary" in res.stdout and "…" not in res.stdout  # names whole, nothing elided
    assert max(len(line) for line in res.stdout.splitlines()) > 80


def test_progress_in_a_log_is_plain_periodic_lines(capsys: pytest.CaptureFixture[str]) -> None:
    bar = progress.PlainProgress("img", every_s=0.0)
    with bar:
        task = bar.add_task("vit · train", total=4)
        bar.advance(task, 2)
        bar.update(task, advance=2)
        bar.update(task, completed=4)  # finished already: said once
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["vit · train: 2/4", "vit · train: 4/4"]
    assert all(line.endswith("img/s)") for line in lines)
