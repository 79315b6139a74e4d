"""Assemble the report of a run directory and write ``report.md`` + ``report.html`` atomically."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radprobe.errors import RadprobeError
from radprobe.report import plots
from radprobe.report.model import (
    ZERO_WIDTH,
    Cell,
    GateResult,
    ReportMeta,
    cell,
    collapse_seeds,
    fold_base,
    gate_by_task,
    headline_metric,
    is_control,
    metric_order,
    model_key,
    model_labels,
    pool_folds,
    sanity_gate,
    shots_of,
)
from radprobe.report.references import closest_mismatch, load_references, matching
from radprobe.report.render import (
    Block,
    Bullets,
    Figure,
    FigureGrid,
    Heading,
    Para,
    Table,
    to_html,
    to_markdown,
)

MAX_WARNINGS = 80
MAX_OVERLAYS = 24


@dataclass
class Report:
    """The written files and what the report concluded."""

    markdown: Path
    html: Path
    figures: list[Path]
    gate: list[GateResult] = field(default_factory=list)
    gate_by_task: dict[str, bool] = field(default_factory=dict)
    headline: list[dict[str, Any]] = field(default_factory=list)  # rows of the summary table
    gate_skip: dict[str, str] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "x"


def _order(items: Sequence[str], first: Sequence[str] = ()) -> list[str]:
    seen = list(dict.fromkeys(items))
    return [x for x in first if x in seen] + [x for x in seen if x not in first]


def _protocol_order() -> list[str]:
    """Protocols in the registry's order, few-shot rows by their inner protocol; others (rows of
    older versions) follow in order of appearance."""
    from radprobe.protocols import fewshot, registry

    order: list[str] = []
    for name in registry.names():
        order += [f"fewshot-{inner}" for inner in fewshot.INNER] if name == "fewshot" else [name]
    return order


def _protocols(items: Sequence[str]) -> list[str]:
    return _order(items, _protocol_order())


def _natural(items: Sequence[str]) -> list[str]:
    """Unique items sorted with embedded numbers compared as numbers (fold2 before fold10)."""
    return sorted(
        dict.fromkeys(items), key=lambda x: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", x)]
    )


def _is_fewshot(row: dict[str, Any]) -> bool:
    return shots_of(row) is not None


class _Rows:
    """Result rows plus derived (pooled) rows, indexed the ways the report needs them."""

    def __init__(self, rows: list[dict[str, Any]], run_dir: Path, meta: ReportMeta) -> None:
        pooled = pool_folds(rows, run_dir, n_boot=meta.pool_bootstrap)
        self.all = rows + pooled
        self.meta = meta
        self.labels = model_labels(self.all, meta)
        for r in self.all:
            r["_model"] = self.labels[model_key(r)]
        self.models = _order([r["_model"] for r in self.all], meta.order)
        self.controls = [r["_model"] for r in self.all if is_control(r, meta)]
        pooled_bases = {fold_base(r["dataset"])[0] for r in rows if fold_base(r["dataset"])} & {
            r["dataset"].split(" (CV,")[0] for r in pooled
        }
        self.fold_datasets = [
            d
            for d in _natural([r["dataset"] for r in rows])
            if fold_base(d) and fold_base(d)[0] in pooled_bases
        ]
        # Summary tables show each pooled CV dataset where its first fold would be; the detail
        # tables list the folds, then their pooled row.
        pooled_name = {r["dataset"].split(" (CV,")[0]: r["dataset"] for r in pooled}
        last_fold = {fold_base(d)[0]: d for d in self.fold_datasets}  # type: ignore[index]
        self.summary_datasets: list[str] = []
        self.datasets: list[str] = []
        for d in _natural([r["dataset"] for r in rows]):
            self.datasets.append(d)
            if d not in self.fold_datasets:
                self.summary_datasets.append(d)
                continue
            base = fold_base(d)[0]  # type: ignore[index]
            if pooled_name[base] not in self.summary_datasets:
                self.summary_datasets.append(pooled_name[base])
            if last_fold[base] == d:
                self.datasets.append(pooled_name[base])
        # Summary views (paper tables, figures, gate): pooled folds, seeds collapsed.
        self.summary = collapse_seeds([r for r in self.all if r["dataset"] not in self.fold_datasets])

    def where(self, **eq: Any) -> list[dict[str, Any]]:
        """Summary rows with the given column values."""
        return [r for r in self.summary if all(r.get(k) == v for k, v in eq.items())]


def _task(rows: Sequence[dict[str, Any]]) -> str:
    return next((r.get("task") or "" for r in rows), "")


def _published(row: dict[str, Any]) -> str:
    refs = matching(row)
    if not refs:
        return "not comparable"
    return "; ".join(
        f"{r.reported} ({r.short_source()})"
        + (f" [if: {r.requires}]" if r.requires else "")
        + (f" [caveat: {r.caveat}]" if r.caveat else "")
        for r in refs
    )


# ----------------------------------------------------------------------------- sections


def _gate_section(rs: _Rows, gate: list[GateResult]) -> list[Block]:
    if not gate:
        return []
    by_task = gate_by_task(gate)
    pre = [m for m in rs.models if m not in rs.controls]
    headers = ["task", "protocol", "metric", "control (random init)", *pre, "result"]
    rows = []
    for g in gate:
        rows.append(
            [
                g.dataset,
                g.protocol,
                g.metric,
                g.control.text(),
                *[g.pretrained[m].text() if m in g.pretrained else "-" for m in pre],
                "PASS" if g.passed else "FAIL",
            ]
        )
    verdict = ", ".join(f"{t}: {'PASS' if ok else 'FAIL'}" for t, ok in by_task.items())
    scope = f" on {', '.join(rs.meta.gate_protocols)}" if rs.meta.gate_protocols else ""
    blocks: list[Block] = [
        Heading(1, "Sanity gate", "sanity-gate"),
        Para(
            "Each pretrained backbone must beat the random-init control beyond both 95% intervals on the "
            f"headline metric{scope} (pretrained CI low > control CI high; where a test set has one "
            "patient there is no interval and the values themselves are compared). Per task: " + verdict + "."
        ),
        Table(headers, rows, numeric=set(range(3, len(headers) - 1)), kind="gate"),
    ]
    if rs.meta.gate_skip:
        blocks.append(Bullets([f"not gated: {d}: {why}" for d, why in rs.meta.gate_skip.items()]))
    return blocks


def _paper_tables(rs: _Rows) -> list[Block]:
    """Rows backbones, columns datasets, one table per protocol; few-shot tables by shots."""
    blocks: list[Block] = [Heading(1, "Results by protocol", "paper-tables")]
    full = [r for r in rs.summary if not _is_fewshot(r)]
    for proto in _protocols([r["protocol"] for r in full]):
        prow = [r for r in full if r["protocol"] == proto]
        datasets = _order([r["dataset"] for r in prow], rs.summary_datasets)
        metrics = {
            d: headline_metric(
                _task([r for r in prow if r["dataset"] == d]),
                [r["metric"] for r in prow if r["dataset"] == d],
            )
            for d in datasets
        }
        headers = ["backbone", *[f"{d} ({metrics[d]})" for d in datasets]]
        rows = []
        for m in rs.models:
            cells = []
            for d in datasets:
                hit = [
                    r for r in prow if r["_model"] == m and r["dataset"] == d and r["metric"] == metrics[d]
                ]
                cells.append(cell(hit[0]).text() if hit else "-")
            if any(c != "-" for c in cells):
                rows.append([m, *cells])
        blocks += [
            Heading(2, f"{proto}"),
            Table(
                headers,
                rows,
                caption="value [95% CI]"
                + ("; CV: the folds' test predictions pooled" if any(" (CV," in d for d in datasets) else ""),
                numeric=set(range(1, len(headers))),
                kind="paper",
            ),
        ]
    few = [r for r in rs.summary if _is_fewshot(r)]
    for proto in _protocols([r["protocol"] for r in few]):
        for d in _order([r["dataset"] for r in few if r["protocol"] == proto], rs.summary_datasets):
            sub = [r for r in few if r["protocol"] == proto and r["dataset"] == d]
            metric = headline_metric(_task(sub), [r["metric"] for r in sub])
            sub = [r for r in sub if r["metric"] == metric]
            shots = sorted({shots_of(r) for r in sub})  # type: ignore[type-var]
            headers = ["backbone", *[f"{s}-shot" for s in shots]]
            rows = []
            capped = False
            for m in rs.models:
                cells = []
                for s in shots:
                    hit = [r for r in sub if r["_model"] == m and shots_of(r) == s]
                    if not hit:
                        cells.append("-")
                        continue
                    eff = _effective_shots(hit[0])
                    mark = ""
                    if eff is not None and eff < s - 1e-9:
                        mark, capped = f" (≤{eff:g})", True
                    cells.append(cell(hit[0]).text() + mark)
                if any(c != "-" for c in cells):
                    rows.append([m, *cells])
            cap = f"{metric}, mean over draws [95% t-interval over draws]"
            if capped:
                cap += (
                    "; (≤k): the draws held k samples per class on average, fewer than asked "
                    "(too few training patients for some class)"
                )
            blocks += [
                Heading(2, f"{proto} on {d}"),
                Table(headers, rows, caption=cap, numeric=set(range(1, len(headers))), kind="fewshot"),
            ]
    return blocks


def _effective_shots(row: dict[str, Any]) -> float | None:
    sizes = (row.get("selected") or {}).get("train_sizes")
    k = int(row.get("num_classes") or 0)
    if not sizes or not k or row.get("task") == "multilabel":
        return None
    return round(float(np.mean(sizes)) / k, 2)


def _figures(rs: _Rows, color: dict[str, str]) -> tuple[list[Block], list[Figure]]:
    blocks: list[Block] = [Heading(1, "Figures", "figures")]
    figs: list[Figure] = []
    for d in rs.summary_datasets:
        drows = rs.where(dataset=d)
        grid: list[Figure] = []
        for proto in _protocols([r["protocol"] for r in drows if not _is_fewshot(r)]):
            prow = [r for r in drows if r["protocol"] == proto and not _is_fewshot(r)]
            metric = headline_metric(_task(prow), [r["metric"] for r in prow])
            entries = [
                (m, cell(hit[0]))
                for m in rs.models
                if (hit := [r for r in prow if r["_model"] == m and r["metric"] == metric])
            ]
            if not entries:
                continue
            f = Figure(
                f"bars_{_slug(d)}_{_slug(proto)}.png",
                plots.bars(f"{d} · {proto}", metric, entries, color, rs.controls),
                f"{d}, {proto}: {metric} with 95% CI",
            )
            grid.append(f)
        few = [r for r in drows if _is_fewshot(r)]
        if few:
            metric = headline_metric(_task(few), [r["metric"] for r in few])
            panels: dict[str, dict[str, list[tuple[int, Cell]]]] = defaultdict(lambda: defaultdict(list))
            for r in few:
                if r["metric"] == metric:
                    inner = r["protocol"].removeprefix("fewshot-")
                    panels[inner][r["_model"]].append((shots_of(r), cell(r)))  # type: ignore[arg-type]
            full_vals: dict[str, dict[str, Cell]] = defaultdict(dict)
            for r in drows:
                if not _is_fewshot(r) and r["protocol"] in panels and r["metric"] == metric:
                    full_vals[r["protocol"]][r["_model"]] = cell(r)
            ordered = {
                inner: {m: panels[inner][m] for m in rs.models if m in panels[inner]} for inner in panels
            }
            grid.append(
                Figure(
                    f"fewshot_{_slug(d)}.png",
                    plots.fewshot_curves(f"{d}: few-shot", metric, ordered, color, rs.controls, full_vals),
                    f"{d}: few-shot {metric} (mean over draws, band: 95% t-interval; "
                    "dotted: full training set)",
                )
            )
        if grid:
            blocks += [Heading(2, d), FigureGrid(grid)]
            figs += grid
    return (blocks if figs else []), figs


def _detail_tables(rs: _Rows) -> list[Block]:
    blocks: list[Block] = [Heading(1, "All results", "details")]
    for d in rs.datasets:
        drows = [r for r in rs.all if r["dataset"] == d]
        for proto in _protocols([r["protocol"] for r in drows]):
            prow = [r for r in drows if r["protocol"] == proto]
            per_class = [r for r in prow if ":" in r["metric"]]
            prow = [r for r in prow if ":" not in r["metric"]]  # each class's rows get their own table
            task = _task(prow)
            metrics = metric_order(task, [r["metric"] for r in prow])
            head = metrics[0]
            shots = sorted({shots_of(r) for r in prow if shots_of(r) is not None})
            seeds = sorted({int(r.get("seed") or 0) for r in prow})
            extra = (["shots"] if shots else []) + (["seed"] if len(seeds) > 1 else [])
            headers = ["backbone", *extra, *metrics, "n", "published"]
            variants = sorted(
                {(shots_of(r) or 0, int(r.get("seed") or 0)) for r in prow},
            )
            rows = []
            for m in rs.models:
                for sh, seed in variants:
                    hit = {
                        r["metric"]: r
                        for r in prow
                        if r["_model"] == m and (shots_of(r) or 0) == sh and int(r.get("seed") or 0) == seed
                    }
                    if not hit:
                        continue
                    first = hit.get(head) or next(iter(hit.values()))
                    rows.append(
                        [
                            m,
                            *([str(sh)] if shots else []),
                            *([str(seed)] if len(seeds) > 1 else []),
                            *[cell(hit[x]).text() if x in hit else "-" for x in metrics],
                            str(first.get("n") or ""),
                            _published(first),
                        ]
                    )
            if not rows:
                continue
            methods = sorted({r.get("ci_method") or "" for r in prow} - {""})
            res = sorted({int(r.get("resolution") or 0) for r in prow} - {0})
            resolution = ", ".join(map(str, res)) or "?"
            cap = f"task {task}; resolution {resolution} px; CI: {'; '.join(methods) or 'none'}"
            cap += _zero_width_note(prow)
            numeric = set(range(1 + len(extra), 1 + len(extra) + len(metrics) + 1))
            blocks += [
                Heading(2, f"{d} · {proto}"),
                Table(headers, rows, caption=cap, numeric=numeric, kind="results"),
                *_per_class_table(rs, d, proto, per_class),
            ]
    return blocks


def _zero_width_note(rows: Sequence[dict[str, Any]]) -> str:
    """The footnote of a table holding a zero-width interval."""
    if not any(cell(r).zero_width for r in rows):
        return ""
    return f";{ZERO_WIDTH} zero-width interval: every resample gave the same value (e.g. one test patient)"


def _per_class_table(rs: _Rows, dataset: str, proto: str, rows: list[dict[str, Any]]) -> list[Block]:
    """Each class's AUROC / AUPRC / F1 of one (dataset, protocol), a line per (backbone, class):
    the view a multi-label dataset such as NIH ChestX-ray14 is reported in."""
    if not rows:
        return []
    metrics = list(dict.fromkeys(r["metric"].split(":", 1)[0] for r in rows))
    classes = list(dict.fromkeys(r["metric"].split(":", 1)[1] for r in rows))
    by = {(r["_model"], r["metric"], int(r.get("seed") or 0), shots_of(r)): r for r in rows}
    seed = min(int(r.get("seed") or 0) for r in rows)
    lines = []
    for m in rs.models:
        for c in classes:
            cells = [by.get((m, f"{x}:{c}", seed, None)) for x in metrics]
            if any(cells):
                lines.append([m, c, *[cell(x).text() if x else "-" for x in cells]])
    if not lines:
        return []
    cap = f"each class's metric on the test split, with its patient-bootstrap CI (seed {seed})"
    cap += _zero_width_note(rows)
    numeric = set(range(2, 2 + len(metrics)))
    return [Table(["backbone", "class", *metrics], lines, caption=cap, numeric=numeric, kind="results")]


def _overlays(run_dir: Path) -> tuple[list[Block], list[Figure]]:
    files = sorted((run_dir / "overlays").glob("*.png")) if (run_dir / "overlays").is_dir() else []
    if not files:
        return [], []
    shown = files[:MAX_OVERLAYS]
    figs = [Figure(f"overlay_{f.name}", f.read_bytes(), f.stem.replace("__", " · ")) for f in shown]
    blocks: list[Block] = [Heading(1, "Segmentation overlays", "overlays")]
    if len(files) > len(shown):
        blocks.append(
            Para(
                f"{len(shown)} of {len(files)} overlays shown (all are in {run_dir / 'overlays'}).",
                muted=True,
            )
        )
    blocks.append(FigureGrid(figs))
    return blocks, figs


def device_label(row: dict[str, Any]) -> str:
    """Where a row's compute ran: ``cpu``, ``cuda``, or ``cuda x4`` for four data-parallel ranks
    (whose imgs/s counts every rank's images)."""
    env = row.get("env") or {}
    device = str(env.get("device") or "?").split(":")[0]
    ranks = int(env.get("data_parallel_ranks") or 1)
    return f"{device} x{ranks}" if ranks > 1 else device


def _compute(rs: _Rows) -> list[Block]:
    raw = [r for r in rs.all if not r.get("derived")]
    if not raw:
        return []
    headers = ["backbone", "device", "params", "imgs/s (mean)", "feature extraction (s)", "peak memory (MB)"]
    rows = []
    for m in rs.models:
        mr = [r for r in raw if r["_model"] == m]
        if not mr:
            continue
        per_ds = {r["dataset"]: r for r in mr}
        ips = [float(r.get("imgs_per_s") or 0) for r in per_ds.values() if r.get("imgs_per_s")]
        rows.append(
            [
                m,
                ", ".join(sorted({device_label(r) for r in mr})),
                f"{int(mr[0].get('params') or 0) / 1e6:.2f} M",
                f"{np.mean(ips):.1f}" if ips else "-",
                f"{sum(float(r.get('extract_time_s') or 0) for r in per_ds.values()):.1f}",
                f"{max(float(r.get('peak_mem_mb') or 0) for r in mr):.0f}",
            ]
        )
    blocks: list[Block] = [
        Heading(1, "Compute", "compute"),
        Table(
            headers,
            rows,
            numeric={2, 3, 4, 5},
            kind="compute",
            caption="extraction time summed over datasets (each split extracted once, then cached); "
            "device x N: N data-parallel ranks, imgs/s over all of them",
        ),
    ]
    headers2 = ["backbone", "protocol", "trainable params", "trainable %", "protocol wall time (s)"]
    rows2 = []
    for m in rs.models:
        mr = [r for r in raw if r["_model"] == m]
        for proto in _order(
            [
                r["protocol"].split("-")[0] if r["protocol"].startswith("fewshot") else r["protocol"]
                for r in mr
            ]
        ):
            pr = [
                r
                for r in mr
                if (r["protocol"].startswith(proto + "-") if proto == "fewshot" else r["protocol"] == proto)
            ]
            runs = {(r["dataset"], round(float(r.get("wall_time_s") or 0), 6)) for r in pr}
            wall = sum(w for _, w in runs)
            trainable = max(int(r.get("trainable_params") or 0) for r in pr)
            params = int(pr[0].get("params") or 0)
            share = f"{100 * trainable / params:.3f}" if params and trainable else "-"
            rows2.append([m, proto, f"{trainable:,}" if trainable else "-", share, f"{wall:.1f}"])
    blocks.append(
        Table(
            headers2,
            rows2,
            numeric={2, 3, 4},
            kind="compute",
            caption="trainable: the largest selected head; wall time summed over datasets",
        )
    )
    return blocks


def _references(rs: _Rows) -> list[Block]:
    refs = load_references()
    raw = [r for r in rs.all if not r.get("derived")]
    per_row = [(r, matching(r, refs)) for r in raw]
    matched = [(ref, [r for r, hits in per_row if ref in hits]) for ref in refs]
    used = [(ref, rows) for ref, rows in matched if rows]
    blocks: list[Block] = [
        Heading(1, "Published numbers", "published"),
        Para(
            "A published number is printed beside ours only when dataset, label set, split, resolution, "
            "backbone and protocol all match (src/radprobe/report/references.yaml); otherwise the tables "
            f"say 'not comparable'. {len(used)} of {len(refs)} published numbers match rows of this run."
        ),
    ]
    rows = []
    for ref, hit in matched:
        status = (
            "matched: " + ", ".join(sorted({r["_model"] for r in hit}))
            if hit
            else "not comparable (" + closest_mismatch(ref, raw) + ")"
        )
        rows.append([ref.cell, ref.reported, ref.short_source(), status])
    blocks.append(Table(["published cell", "value", "source", "this run"], rows, kind="references"))
    return blocks


def _warnings(rs: _Rows) -> list[Block]:
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rs.all:
        if r.get("derived"):
            continue
        for w in r.get("warnings") or []:
            text = re.sub(r"\bdraw \d+\b", "draw k", str(w))
            seen[text].add(f"{r['_model']} · {r['dataset']} · {r['protocol']}")
    if not seen:
        return [Heading(1, "Warnings", "warnings"), Para("No warnings were recorded.", muted=True)]
    items = [
        f"{w} — {len(where)} evaluation(s), e.g. {sorted(where)[0]}" for w, where in sorted(seen.items())
    ]
    more = len(items) - MAX_WARNINGS
    items = items[:MAX_WARNINGS] + ([f"... and {more} more"] if more > 0 else [])
    return [Heading(1, "Warnings", "warnings"), Bullets(items)]


def _headline_summary(rs: _Rows, gate: list[GateResult]) -> list[dict[str, Any]]:
    """Rows of the console summary: task x full-data protocol, headline value per model, gate."""
    verdict = {(g.dataset, g.protocol): g.passed for g in gate}
    out = []
    for d in rs.summary_datasets:
        drows = [r for r in rs.where(dataset=d) if not _is_fewshot(r)]
        for proto in _protocols([r["protocol"] for r in drows]):
            prow = [r for r in drows if r["protocol"] == proto]
            metric = headline_metric(_task(prow), [r["metric"] for r in prow])
            cells = {r["_model"]: cell(r) for r in prow if r["metric"] == metric}
            out.append(
                {
                    "dataset": d,
                    "protocol": proto,
                    "metric": metric,
                    "cells": cells,
                    "gate": verdict.get((d, proto)),
                }
            )
    return out


# ----------------------------------------------------------------------------- entry point


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Report:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` for the run in ``run_dir``.

    ``out`` (default: ``run_dir``) is where the files go. Raises :class:`RadprobeError` when the
    directory holds no results.
    """
    from radprobe.results import ResultStore
    from radprobe.utils import atomic_path, atomic_write_text

    run_dir = Path(run_dir)
    if not (run_dir / "results.db").is_file():
        raise RadprobeError(
            f"{run_dir}: no results.db here; expected a run directory of radprobe eval/study/demo"
        )
    with ResultStore(run_dir, create=False) as store:
        rows = store.rows()
    if not rows:
        raise RadprobeError(f"{run_dir}: results.db holds no result rows yet")
    out_dir = Path(out) if out is not None else run_dir
    meta = ReportMeta.load(run_dir)
    rs = _Rows(rows, run_dir, meta)
    color = plots.colors(rs.models, rs.controls)
    gate = sanity_gate(rs.summary, rs.labels, meta)

    title = meta.title or f"radprobe report: {run_dir.resolve().name}"
    env = rows[0].get("env") or {}
    summary = (
        f"{len(rows)} result rows: {len(rs.models)} backbones, "
        f"{len([d for d in rs.datasets if ' (CV,' not in d])} datasets, "
        f"{len({r['protocol'] for r in rows})} protocols. Generated {time.strftime('%Y-%m-%d %H:%M')} from "
        f"{run_dir}; radprobe {env.get('radprobe', '?')}, torch {env.get('torch', '?')}, "
        f"device {env.get('device', '?')}."
    )
    blocks: list[Block] = [Para(summary)]
    blocks += _gate_section(rs, gate)
    blocks += _paper_tables(rs)
    fig_blocks, figs = _figures(rs, color)
    blocks += fig_blocks
    ov_blocks, ov_figs = _overlays(run_dir)
    blocks += ov_blocks
    blocks += _detail_tables(rs)
    blocks += _compute(rs)
    if meta.settings or meta.notes:
        blocks.append(Heading(1, "Settings and notes", "settings"))
        if meta.settings:
            blocks.append(
                Table(
                    ["setting", "value"], [[k, _plain(v)] for k, v in meta.settings.items()], kind="settings"
                )
            )
        if meta.notes:
            blocks.append(Bullets([n for n in meta.notes if n]))
    blocks += _references(rs)
    blocks += _warnings(rs)

    fig_dir = out_dir / "figures"
    written = []
    for f in figs + ov_figs:
        path = fig_dir / f.name
        with atomic_path(path) as tmp:
            tmp.write_bytes(f.png)
        written.append(path)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(title, blocks))
    atomic_write_text(page, to_html(title, blocks))
    return Report(
        markdown=md,
        html=page,
        figures=written,
        gate=gate,
        gate_by_task=gate_by_task(gate),
        headline=_headline_summary(rs, gate),
        gate_skip={d: why for d, why in meta.gate_skip.items() if d in rs.datasets},
        models=rs.models,
    )


def _plain(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_plain(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return str(v)
