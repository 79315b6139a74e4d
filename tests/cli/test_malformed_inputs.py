"""A subset of bench/malformed_inputs.py held to its pass criteria through the installed executable.

The bench runs every case of its table (before and after a change); these are the ones that the
usage table of test_cli_usage.py does not cover and that are refused before any feature extraction:
bad protocol options, datasets that leave their root or have bad content, bad study files and
unreadable results.db files. A case passes with an exit code it allows, at most two stderr lines, no
traceback, nothing created or changed outside the cache, and no file outside the data root read.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import malformed_inputs as bench

SUBSET = [
    # protocols, their options and checkpoints
    "eval-knn-ks-0",
    "eval-mil-on-2d",
    "eval-weights-empty-pth",
    # datasets: files outside the root, then bad content
    "check-csv-dotdot",
    "check-csv-absolute",
    "check-csv-symlink",
    "check-folder-symlink",
    "check-seg-mask-dotdot",
    "check-nan-label",
    "check-stray-label",
    "check-semicolon-csv",
    "check-truncated-png",
    "check-missing-image",
    "check-empty-manifest",
    "check-unknown-spec-option",
    # study files
    "study-run-invalid-yaml",
    "study-run-knn-ks-0",
    "study-run-dataset-outside-root",
    "study-run-db-garbage",
    # results.db files that are no store, and the cache
    "results-db-empty",
    "results-db-foreign",
    "results-db-is-a-folder",
    "report-db-garbage",
    "eval-out-db-garbage",
    "cache-prune-no-filter",
]
CASES = {c.id: c for c in bench.CASES}


@pytest.fixture(scope="module")
def shared() -> Iterator[bench.Shared]:
    s = bench.Shared(bench.radprobe_exe())
    yield s
    s.close()


def test_the_table_is_big_unique_and_wired() -> None:
    ids = [c.id for c in bench.CASES + bench.CONTROLS]
    assert len(bench.CASES) >= 100
    assert len(set(ids)) == len(ids)
    assert {s for c in bench.CASES + bench.CONTROLS for s in c.setup} <= set(bench.FIXTURES)
    assert set(SUBSET) <= set(CASES)
    assert all(0 not in c.codes for c in bench.CASES)


@pytest.mark.parametrize("case_id", ["control-csv-clean", "control-folder-clean"])
def test_the_fixtures_are_valid_datasets(case_id: str, shared: bench.Shared) -> None:
    control = next(c for c in bench.CONTROLS if c.id == case_id)
    rec = bench.run_case(control, shared, bench.radprobe_exe())
    assert rec["passed"], rec


@pytest.mark.parametrize("case_id", SUBSET)
def test_malformed_input_is_refused_cleanly(case_id: str, shared: bench.Shared) -> None:
    rec = bench.run_case(CASES[case_id], shared, bench.radprobe_exe())
    assert rec["exit"] in rec["allowed_exit"], rec
    assert not rec["traceback"], rec
    assert rec["stderr_lines"] <= 2, rec
    assert not rec["leftovers"], rec
    assert not rec["read_outside"], rec
    assert rec["passed"]
