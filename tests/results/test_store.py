from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading

import pytest

from radprobe.results import ResultRow, ResultStore
from radprobe.results.store import StoreError, check_run_dir


def _row(metric="accuracy", value=0.5, key="e1"):
    return ResultRow(
        eval_key=key,
        run_id="r",
        backbone="b",
        weights_digest="w",
        dataset="d",
        manifest_digest="m",
        split_digest="s",
        protocol="knn",
        metric=metric,
        value=value,
        hparams={"k": [10, 20]},
        selected={"k": 10},
        warnings=["x"],
    )


def test_write_read_roundtrip_and_json_columns(tmp_path):
    with ResultStore(tmp_path) as st:
        st.write([_row(), _row("auroc_macro", 0.7)])
        rows = st.rows()
    assert [r["metric"] for r in rows] == ["accuracy", "auroc_macro"]
    assert rows[0]["hparams"] == {"k": [10, 20]} and rows[0]["selected"] == {"k": 10}
    assert rows[0]["created_at"]
    mode = sqlite3.connect(tmp_path / "results.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_same_evaluation_twice_replaces_not_duplicates(tmp_path):
    with ResultStore(tmp_path) as st:
        st.write([_row(value=0.5)])
        st.write([_row(value=0.6)])
        st.write([_row(key="e2")])
        assert len(st.rows()) == 2
        assert st.rows(eval_key="e1")[0]["value"] == 0.6
        assert st.has("e2") and not st.has("e3")


def test_store_appears_on_first_write_not_on_open(tmp_path):
    run = tmp_path / "run"
    with ResultStore(run) as st:
        assert st.rows() == [] and st.jobs() == [] and not st.has("e1")
    assert not run.exists()  # opened and closed without writing: nothing left behind
    with ResultStore(run) as st:
        st.add_jobs([("a", {})])
    assert sorted(p.name for p in run.iterdir()) == ["results.db"]  # no temporary files left


def test_a_failure_before_the_first_write_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), ResultStore(run):
        raise RuntimeError("protocol failed")
    assert not run.exists()


def test_a_reader_sees_rows_written_after_it_opened(tmp_path):
    with ResultStore(tmp_path) as reader, ResultStore(tmp_path) as writer:
        assert reader.rows() == []
        writer.write([_row()])
        assert [r["metric"] for r in reader.rows()] == ["accuracy"]


def test_processes_creating_one_store_together_share_it(tmp_path):
    """torchrun ranks and study workers open a new run directory at once: one file, every write kept."""
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            barrier.wait()
            with ResultStore(tmp_path) as st:
                st.add_jobs([(f"j{i}", {})])
        except BaseException as e:  # reported below: a thread's exception would vanish
            errors.append(e)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with ResultStore(tmp_path, create=False) as st:
        assert sorted(j["job_key"] for j in st.jobs()) == [f"j{i}" for i in range(n)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]


def _old_version(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE results (row_id INTEGER PRIMARY KEY, eval_key TEXT, metric TEXT)")
    con.commit()
    con.close()


def _other_program(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE songs (title TEXT)")
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_bytes(random.Random(0).randbytes(4096)), "not an SQLite database"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + bytes(200)), "not an SQLite database"),
        (lambda p: p.write_bytes(b""), "empty"),
        (_other_program, "no results table"),
        (_old_version, "lacks"),
        (lambda p: p.mkdir(), "not a file"),
    ],
    ids=["random", "bad-header", "empty", "other-schema", "old-columns", "directory"],
)
def test_an_unreadable_file_is_refused_by_name(tmp_path, make, why):
    db = tmp_path / "results.db"
    make(db)
    with pytest.raises(StoreError, match="not a readable radprobe store") as info:
        ResultStore(tmp_path, create=False)
    assert str(db) in str(info.value) and why in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StoreError):
        check_run_dir(tmp_path)
    if why != "empty":  # a writer adopts an empty file: another process may be making it in place
        with pytest.raises(StoreError):
            ResultStore(tmp_path)


def test_a_truncated_store_is_refused(tmp_path):
    with ResultStore(tmp_path / "a") as st:
        st.write([_row(key=f"e{i}") for i in range(200)])
    data = (tmp_path / "a" / "results.db").read_bytes()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.db").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="damaged"):
        ResultStore(tmp_path / "b", create=False)


def test_a_writer_adopts_an_empty_file(tmp_path):
    (tmp_path / "results.db").write_bytes(b"")
    with ResultStore(tmp_path) as st:
        st.write([_row()])
    with ResultStore(tmp_path, create=False) as st:
        assert len(st.rows()) == 1


def test_opening_a_store_keeps_the_locks_of_this_process_on_it(tmp_path):
    """Validation opens the file through SQLite only: closing a descriptor of its own would drop
    every POSIX lock this process holds on the database, and another process's close would then
    checkpoint and delete the WAL under the still-open connection (a malformed database)."""
    other = "import sys; from radprobe.results import ResultStore as S; S(sys.argv[1]).add_jobs([('q', {})])"
    with ResultStore(tmp_path) as first:
        first.write([_row(key="e1")])
        for i in range(3):
            ResultStore(tmp_path).close()  # another opener in this process, e.g. a study's worker
            subprocess.run([sys.executable, "-c", other, str(tmp_path)], check=True)
            first.write([_row(key=f"e{i + 2}")])
        assert len(first.rows()) == 4
    con = sqlite3.connect(tmp_path / "results.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
