"""A run directory whose results.db is not a readable store: every command that reads or writes it
says so in one line naming the file, exits 2, and changes nothing there."""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from cli_exe import run_radprobe, stderr_lines

from radprobe.results import ResultRow, ResultStore

STUDY = {
    "name": "bad-store",
    "backbones": ["test:vit-tiny"],
    "datasets": ["synthetic:cls2d-binary"],
    "protocols": {"knn": {"ks": [5]}},
    "bootstrap": 0,
}


def _row(i: int) -> ResultRow:
    return ResultRow(
        eval_key=f"e{i}",
        run_id="r",
        backbone="test:vit-tiny",
        weights_digest="w",
        dataset="synthetic:cls2d-binary",
        manifest_digest="m",
        split_digest="s",
        protocol="knn",
        metric="auroc",
        value=0.5,
        warnings=["w" * 400],  # rows big enough to span many pages, so truncation cuts data
    )


@pytest.fixture(scope="module")
def real_db(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    run = tmp_path_factory.mktemp("real")
    with ResultStore(run) as store:
        store.add_jobs([(f"j{i}", {"i": i}) for i in range(20)])
        store.write([_row(i) for i in range(100)])
    return (run / "results.db").read_bytes()


def _other_schema(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE songs (title TEXT, seconds INTEGER)")
    con.execute("INSERT INTO songs VALUES ('a', 1)")
    con.commit()
    con.close()


BAD = {
    "random-bytes": lambda p, real: p.write_bytes(random.Random(0).randbytes(8192)),
    "truncated": lambda p, real: p.write_bytes(real[: len(real) // 2]),
    "empty": lambda p, real: p.write_bytes(b""),
    "other-schema": lambda p, real: _other_schema(p),
}
COMMANDS = {
    "results": ["results", "{run}"],
    "study-status": ["study", "status", "{run}"],
    "report": ["report", "{run}"],
    "study-run": ["study", "run", "{study}", "-o", "{run}"],
    "compare": ["compare", "{run}", "--a", "test:vit-tiny", "--b", "test:cnn-tiny"],
    "eval": ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-o", "{run}"],
}


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_unreadable_store_is_one_line_exit_2_and_nothing_rewritten(
    tmp_path: Path, real_db: bytes, kind: str, command: str
) -> None:
    run, study = tmp_path / "run", tmp_path / "study.yaml"
    run.mkdir()
    study.write_text(yaml.safe_dump(STUDY))
    shutil.copy(study, run / "study.yaml")  # as an earlier `study run` left it
    db = run / "results.db"
    BAD[kind](db, real_db)
    before = _snapshot(tmp_path)
    args = [a.format(run=run, study=study) for a in COMMANDS[command]]
    p = run_radprobe(args, cwd=tmp_path)
    lines = stderr_lines(p)
    assert p.returncode == 2, p.stderr
    assert len(lines) == 1, p.stderr
    assert str(db) in lines[0] and "not a readable radprobe store" in lines[0], lines[0]
    assert "Traceback" not in p.stdout + p.stderr
    assert _snapshot(tmp_path) == before  # study.yaml and the db untouched, no -wal/-shm left


def test_eval_that_fails_before_writing_leaves_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store used to be created when opened, so a protocol failing in its first run left an
    empty results.db (and its directory) behind."""
    from radprobe.cli import main
    from radprobe.errors import RadprobeError

    def fails(*args: object, **kw: object) -> None:
        raise RadprobeError("knn: failed on purpose")

    monkeypatch.setattr("radprobe.run.frozen.run_protocol", fails)  # what eval runs each protocol with
    out = tmp_path / "run"
    argv = ["eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-binary", "-o", str(out), "--bootstrap", "0"]
    assert main(argv) == 2
    assert "failed on purpose" in capsys.readouterr().err
    assert not (out / "results.db").exists()
