"""Every classification protocol writes each class's AUROC / AUPRC / F1 beside its macro rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import radprobe
from radprobe.data import load_dataset

EXE = str(Path(sys.executable).parent / "radprobe")


def test_multilabel_eval_writes_per_class_rows_with_intervals(tmp_path: Path) -> None:
    classes = load_dataset("synthetic:cls2d-multilabel").classes
    res = subprocess.run(
        [EXE, "eval", "-b", "test:vit-tiny", "-d", "synthetic:cls2d-multilabel", "-p", "knn,logreg",
         "-o", str(tmp_path), "--bootstrap", "30", "--set", "knn.ks=[5]", "--set", "logreg.cs=[1.0]"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "per-class rows" in res.stdout and "f1:" not in res.stdout  # the table stays headline
    df = radprobe.results(tmp_path)
    for protocol in ("knn", "logreg"):
        mine = df[df.protocol == protocol]
        per_class = set(mine.metric[mine.metric.str.contains(":")])
        assert {f"f1:{c}" for c in classes} <= per_class
        assert {m.split(":")[1] for m in per_class} <= set(classes)
        rows = mine[mine.metric.str.startswith("auroc:")]
        assert len(rows) >= 2 and (rows.ci_low <= rows.value).all() and (rows.value <= rows.ci_high).all()
        assert mine.eval_key.nunique() == 1  # one evaluation, its macro and per-class metrics
    report = subprocess.run([EXE, "report", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "report.md").read_text()
    table = md[md.index("| backbone | class |") :]
    assert all(c in table for c in classes) and "auroc" in table.splitlines()[0]
