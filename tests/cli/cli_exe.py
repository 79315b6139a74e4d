"""Run the installed `radprobe` console script, as a user would, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def radprobe_exe() -> str:
    """The console script installed beside this interpreter (the one users run)."""
    exe = shutil.which("radprobe", path=str(Path(sys.executable).parent)) or shutil.which("radprobe")
    if exe is None:
        pytest.fail("the radprobe console script is not installed: pip install -e .")
    return exe


def run_radprobe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``radprobe ARGS`` in ``cwd``; the environment (RADPROBE_CACHE, PYTHONPATH) is inherited."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [radprobe_exe(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def stderr_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stderr.splitlines() if line.strip()]
