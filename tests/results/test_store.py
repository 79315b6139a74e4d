from __future__ import annotations

import sqlite3

from radprobe.results import ResultRow, ResultStore


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
