"""Output paths and study contents that cannot work are one line before anything runs or is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "radprobe")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-o", "f.txt/run"],
         "--out f.txt/run: f.txt is a file, not a directory"),
        (["study", "run", "s.yaml", "-o", "f.txt/run"], "--out f.txt/run: f.txt is a file, not a directory"),
        (["results", "run", "-f", "csv", "--output", "run"], "--output run: is a directory"),
        (["results", "run", "-f", "csv", "--output", "f.txt/rows.csv"], "f.txt is a file, not a directory"),
        (["report", "run", "-o", "f.txt/report"], "--out f.txt/report: f.txt is a file, not a directory"),
    ],
)  # fmt: skip
def test_an_output_path_through_a_file_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "f.txt").write_text("a file")
    (tmp_path / "s.yaml").write_text(
        "backbones: [test:vit-tiny]\ndatasets: [synthetic:cls2d-binary]\nprotocols: [knn]\n"
    )
    from radprobe.results import ResultStore

    with ResultStore(tmp_path / "run") as store:  # a readable run directory
        store.add_jobs([("a", {})])
    res = _run(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip().splitlines() == [f"error: {needle}"]
        if "results" not in args
        else needle in res.stderr
    )
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("study", "needle"),
    [
        ("protocols: [knn]\nseeds: [-1]\n", "seeds.0: Input should be greater than or equal to 0"),
        ("protocols: [seg-linear]\n", "datasets.0: protocols=seg-linear: needs a segmentation dataset"),
    ],
)
def test_a_study_that_cannot_run_writes_nothing(tmp_path: Path, study: str, needle: str) -> None:
    (tmp_path / "s.yaml").write_text(
        "backbones: [test:vit-tiny]\ndatasets: [synthetic:cls2d-binary]\n" + study
    )
    res = _run("study", "run", "s.yaml", "-o", "out", cwd=tmp_path)
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def test_a_study_asking_augmented_views_of_volumes_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "backbones: [test:vit-tiny]\ndatasets: [synthetic:cls3d]\nprotocols: {linear: {train_views: 2}}\n"
    )
    res = _run("study", "run", "s.yaml", "-o", "out", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: datasets.0: linear: augmented training views are drawn on 2D images; synthetic:cls3d is 3D"
    ]
    assert not (tmp_path / "out").exists()
