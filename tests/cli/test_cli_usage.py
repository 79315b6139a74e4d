"""Malformed invocations of the installed `radprobe` executable: one line on stderr, exit 2.

USAGE is a table so that a new command or option adds a row, not a test. ``{out}`` stands for a run
directory that must not be created, ``{run}`` for an existing (empty) directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_exe import run_radprobe, stderr_lines

EVAL = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-o", "{out}"]
EXTRACT = ["extract", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary"]
COMPARE = ["compare", "{run}", "--a", "test:vit-tiny", "--b", "test:cnn-tiny"]
STUDY_RUN = ["study", "run", "study.yaml", "-o", "{out}"]

# (id, argv, a word the one line must name)
USAGE: list[tuple[str, list[str], str]] = [
    ("unknown-command", ["bogus"], "bogus"),
    ("unknown-root-flag", ["--bogus"], "--bogus"),
    ("eval-no-dataset", ["eval", "-b", "test:vit-tiny", "-o", "{out}"], "--dataset"),
    ("eval-no-backbone", ["eval", "-d", "synthetic:cls2d-binary", "-o", "{out}"], "--backbone"),
    ("eval-no-out", ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary"], "--out"),
    ("eval-batch-0", [*EVAL, "--batch-size", "0"], "--batch-size"),
    ("eval-batch-negative", [*EVAL, "--batch-size", "-3"], "--batch-size"),
    ("eval-batch-text", [*EVAL, "--batch-size", "abc"], "--batch-size"),
    ("eval-batch-no-value", [*EVAL, "--batch-size"], "--batch-size"),
    ("eval-resolution-negative", [*EVAL, "--resolution", "-8"], "--resolution"),
    ("eval-resolution-0", [*EVAL, "--resolution", "0"], "--resolution"),
    ("eval-resolution-float", [*EVAL, "--resolution", "22.5"], "--resolution"),
    ("eval-bootstrap-negative", [*EVAL, "--bootstrap", "-1"], "--bootstrap"),
    ("eval-seed-text", [*EVAL, "--seed", "abc"], "--seed"),
    ("eval-seed-negative", [*EVAL, "--seed", "-1"], "--seed"),
    ("eval-seed-too-big", [*EVAL, "--seed", str(2**32)], "--seed"),
    ("eval-workers-negative", [*EVAL, "--num-workers", "-1"], "--num-workers"),
    ("eval-unknown-flag", [*EVAL, "--frob"], "--frob"),
    ("eval-extra-argument", [*EVAL, "stray"], "stray"),
    ("eval-volume-pool", [*EVAL, "--volume-pool", "median"], "median"),
    ("extract-batch-0", [*EXTRACT, "--batch-size", "0"], "--batch-size"),
    ("extract-resolution-negative", [*EXTRACT, "--resolution", "-8"], "--resolution"),
    ("extract-no-backbone", ["extract", "-d", "synthetic:cls2d-binary"], "--backbone"),
    ("results-format-xml", ["results", "{run}", "--format", "xml"], "--format"),
    ("results-format-short", ["results", "{run}", "-f", "yaml"], "yaml"),
    ("results-no-dir", ["results"], "run_dir"),
    ("results-unknown-flag", ["results", "{run}", "--bogus"], "--bogus"),
    ("compare-no-b", ["compare", "{run}", "--a", "test:vit-tiny"], "--b"),
    ("compare-bootstrap-0", [*COMPARE, "--bootstrap", "0"], "--bootstrap"),
    ("compare-bootstrap-text", [*COMPARE, "--bootstrap", "many"], "--bootstrap"),
    ("compare-seed-negative", [*COMPARE, "--seed", "-1"], "--seed"),
    ("study-unknown-command", ["study", "frob"], "frob"),
    ("study-run-no-study", ["study", "run"], "study"),
    ("study-run-workers-0", [*STUDY_RUN, "--workers", "0"], "--workers"),
    ("study-run-ray-cpus-0", [*STUDY_RUN, "--ray-cpus", "0"], "--ray-cpus"),
    ("study-run-ray-gpus-negative", [*STUDY_RUN, "--ray-gpus", "-1"], "--ray-gpus"),
    ("study-run-unknown-flag", [*STUDY_RUN, "--fast"], "--fast"),
    ("study-status-no-dir", ["study", "status"], "run_dir"),
    ("study-plan-no-study", ["study", "plan"], "study"),
    ("data-unknown-command", ["data", "frob"], "frob"),
    ("data-check-no-spec", ["data", "check"], "spec"),
    ("cache-prune-max-gb-negative", ["cache", "prune", "--max-gb", "-1"], "--max-gb"),
    ("cache-prune-older-than-text", ["cache", "prune", "--older-than", "x"], "--older-than"),
    ("cache-unknown-command", ["cache", "frob"], "frob"),
    ("cache-list-unknown-flag", ["cache", "list", "--bogus"], "--bogus"),
    ("backbones-unknown-flag", ["backbones", "--bogus"], "--bogus"),
    ("datasets-extra-argument", ["datasets", "extra"], "extra"),
    ("report-no-dir", ["report"], "run_dir"),
    ("report-unknown-flag", ["report", "{run}", "--bogus"], "--bogus"),
    ("demo-workers-0", ["demo", "--workers", "0", "-o", "{out}"], "--workers"),
    ("assets-unknown-command", ["assets", "frob"], "frob"),
]


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.mark.parametrize(("argv", "culprit"), [pytest.param(a, c, id=i) for i, a, c in USAGE])
def test_usage_error_is_one_line_exit_2(tmp_path: Path, argv: list[str], culprit: str) -> None:
    out, run = tmp_path / "out", tmp_path / "run"
    run.mkdir()
    before = _files(tmp_path)
    p = run_radprobe([a.format(out=out, run=run) for a in argv], cwd=tmp_path)
    lines = stderr_lines(p)
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1, p.stderr
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in p.stdout + p.stderr
    assert not out.exists()
    assert _files(tmp_path) == before


def test_usage_table_is_big_and_unique() -> None:
    assert len(USAGE) >= 40
    assert len({i for i, _, _ in USAGE}) == len(USAGE)


@pytest.mark.parametrize("argv", [[], ["study"], ["data"]])
def test_a_bare_group_shows_its_help_and_exits_2(tmp_path: Path, argv: list[str]) -> None:
    p = run_radprobe(argv, cwd=tmp_path)
    assert p.returncode == 2
    assert "Usage" in p.stdout + p.stderr and "Traceback" not in p.stdout + p.stderr


def test_help_exits_0(tmp_path: Path) -> None:
    p = run_radprobe(["eval", "--help"], cwd=tmp_path)
    assert p.returncode == 0 and "--batch-size" in p.stdout


def test_debug_shows_the_traceback_of_a_usage_error(tmp_path: Path) -> None:
    p = run_radprobe(["--debug", "eval", "-b", "x", "-d", "y", "-o", "o", "--batch-size", "0"], cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" in p.stderr
