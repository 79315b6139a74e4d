"""radprobe report: the files it writes, their tables and figures, and its error contract."""

from __future__ import annotations

import base64
import re
import struct

from radprobe.cli import main
from radprobe.report.build import build_report


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_writes_markdown_html_and_figures(run_dir):
    rep = build_report(run_dir)
    md = rep.markdown.read_text()
    page = rep.html.read_text()
    # one table per dataset x protocol, paper-style tables, few-shot tables by shots
    for heading in (
        "## Sanity gate",
        "### knn",
        "### fewshot-linear on mri_cls",
        "### mri_cls · linear",
        "### lung_cls_fold2 · knn",
        "## Compute",
        "## Published numbers",
        "## Warnings",
    ):
        assert heading in md
    assert "| ViT pretrained | 0.700 [0.670, 0.730] |" in md  # headline value with its CI
    assert "lung_cls (CV, 2 folds)" in md  # folds pooled
    assert "not comparable" in md
    assert "(≤2)" in md  # capped few-shot draws are flagged
    assert "draw k: odd" in md  # few-shot warnings are collapsed across draws
    assert rep.gate_by_task == {"lung_cls (CV, 2 folds)": True, "mri_cls": True, "mri_seg": True}
    # self-contained HTML: no external references, every image inline and decodable
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", page)
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == len(rep.figures) == 7
    for data in imgs:
        w, h = _png_size(base64.b64decode(data))
        assert w > 40 and h > 40
    assert page.count("<table") == len(re.findall(r"^\|-", md, flags=re.M))  # same tables in both
    assert 'class="pass"' in page
    # figures for the Markdown file exist beside it
    assert all(p.is_file() and p.parent == run_dir / "figures" for p in rep.figures)
    assert any(p.name.startswith("overlay_") for p in rep.figures)
    assert any(p.name.startswith("fewshot_") for p in rep.figures)


def test_report_without_meta_has_no_gate_and_plain_names(tmp_path, run_factory):
    run = run_factory(tmp_path / "plain", meta=False)
    rep = build_report(run, tmp_path / "elsewhere")
    md = rep.markdown.read_text()
    assert rep.markdown.parent == tmp_path / "elsewhere"
    assert "Sanity gate" not in md and rep.gate == []
    assert "timm:vit_small_patch14_dinov2 [random init]" in md


def test_report_cli(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "report.html" in out and "PASS" in out


def test_report_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no results.db" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    from radprobe.results import ResultStore

    with ResultStore(tmp_path / "empty") as store:  # a study's jobs, no rows yet
        store.add_jobs([("a", {})])
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no result rows" in capsys.readouterr().err


def test_compute_table_names_the_device_and_data_parallel_ranks(run_dir):
    from radprobe.report.build import device_label

    assert device_label({"env": {"device": "cuda:0", "data_parallel_ranks": 4}}) == "cuda x4"
    assert device_label({"env": {"device": "cuda:1", "data_parallel_ranks": 1}}) == "cuda"
    assert device_label({"env": {"device": "cpu"}}) == "cpu" and device_label({}) == "?"
    md = build_report(run_dir).markdown.read_text()
    assert "| backbone | device | params |" in md and "| ViT pretrained | cpu |" in md


def test_a_table_with_a_zero_width_interval_says_what_it_means(tmp_path):
    from radprobe.report.build import build_report
    from radprobe.report.model import ZERO_WIDTH
    from radprobe.results import ResultRow, ResultStore

    def row(metric: str, value: float, lo: float, hi: float) -> ResultRow:
        return ResultRow(
            eval_key="k", run_id="r", backbone="test:vit-tiny", weights_digest="sha", dataset="lung",
            manifest_digest="m", split_digest="s", protocol="knn", metric=metric, value=value,
            ci_low=lo, ci_high=hi, ci_method="patient bootstrap x100, percentile 95%", n=10, n_test=10,
            task="binary", num_classes=2, resolution=64,
        )  # fmt: skip

    with ResultStore(tmp_path) as store:
        store.write([row("auroc", 0.8, 0.7, 0.9), row("accuracy", 0.7, 0.7, 0.7)])
    build_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert f"0.700 [0.700, 0.700]{ZERO_WIDTH}" in md
    assert "zero-width interval: every resample gave the same value" in md
