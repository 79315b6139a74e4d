"""Report figures as PNG bytes: bars with CI error bars, few-shot curves with CI bands.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
reports can be built in any process, headless or not.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from radprobe.report.model import Cell, lower_is_better

PALETTE = ("#1f6fb4", "#e07b17", "#2a9d55", "#8e44ad", "#c0392b", "#16a2b8", "#7f6c1e", "#d45d9e")
CONTROL_COLOR = "#9a9a9a"
DPI = 100


def _png(fig: object) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # type: ignore[arg-type]
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # type: ignore[attr-defined]
    return buf.getvalue()


def colors(labels: Sequence[str], controls: Sequence[str] = ()) -> dict[str, str]:
    """A stable colour per label; controls are grey."""
    out: dict[str, str] = {}
    i = 0
    for label in labels:
        if label in controls:
            out[label] = CONTROL_COLOR
        else:
            out[label] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def bars(
    title: str,
    metric: str,
    entries: Sequence[tuple[str, Cell]],
    color: dict[str, str],
    controls: Sequence[str] = (),
) -> bytes:
    """Horizontal bars (one per model) with 95% CI error bars."""
    from matplotlib.figure import Figure

    n = len(entries)
    fig = Figure(figsize=(6.4, 0.55 * n + 1.1))
    ax = fig.add_subplot()
    ys = list(range(n))[::-1]
    for y, (label, c) in zip(ys, entries, strict=True):
        err = None
        if c.has_ci:
            err = [[max(0.0, c.value - c.lo)], [max(0.0, c.hi - c.value)]]  # type: ignore[operator]
        ax.barh(
            y,
            c.value,
            color=color.get(label, PALETTE[0]),
            hatch="//" if label in controls else None,
            edgecolor="white",
            xerr=err,
            capsize=4,
            error_kw={"elinewidth": 1.2, "ecolor": "#222222"},
        )
        ax.text(
            c.value if not c.has_ci else c.hi,  # type: ignore[arg-type]
            y,
            f"  {c.value:.3f}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(ys)
    ax.set_yticklabels([_short(label) for label, _ in entries], fontsize=8)
    lo = min(0.0, *(c.value for _, c in entries))
    hi = max((c.hi if c.has_ci else c.value) for _, c in entries)  # type: ignore[type-var]
    if not lower_is_better(metric) and hi <= 1.0:
        hi = 1.0
    ax.set_xlim(lo, hi * 1.12 if hi > 0 else 1.0)
    ax.set_xlabel(f"{metric}" + (" (lower is better)" if lower_is_better(metric) else "") + ", 95% CI")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def fewshot_curves(
    title: str,
    metric: str,
    panels: dict[str, dict[str, list[tuple[int, Cell]]]],
    color: dict[str, str],
    controls: Sequence[str] = (),
    full: dict[str, dict[str, Cell]] | None = None,
) -> bytes:
    """One panel per inner protocol; a line per model (mean over draws) with its CI band.

    ``full`` optionally marks each model's full-data value of the same protocol at the right edge.
    """
    from matplotlib.figure import Figure

    k = max(1, len(panels))
    fig = Figure(figsize=(4.2 * k, 3.4))
    axes = [fig.add_subplot(1, k, i + 1) for i in range(k)]
    for ax, (inner, series) in zip(axes, panels.items(), strict=False):
        all_shots: set[int] = set()
        for label, pts in series.items():
            pts = sorted(pts)
            xs = [s for s, _ in pts]
            all_shots.update(xs)
            ys = [c.value for _, c in pts]
            col = color.get(label, PALETTE[0])
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=4,
                color=col,
                label=_short(label),
                ls="--" if label in controls else "-",
            )
            band = [(s, c) for s, c in pts if c.has_ci]
            if band:
                ax.fill_between(
                    [s for s, _ in band],
                    [c.lo for _, c in band],  # type: ignore[misc]
                    [c.hi for _, c in band],  # type: ignore[misc]
                    color=col,
                    alpha=0.15,
                    lw=0,
                )
            if full and inner in full and label in full[inner]:
                ax.axhline(full[inner][label].value, color=col, lw=0.8, ls=":", alpha=0.8)
        ax.set_xscale("log", base=2)
        ticks = sorted(all_shots)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("shots (per class)")
        ax.set_ylabel(metric)
        ax.set_title(f"few-shot {inner}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _short(label: str, width: int = 38) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"
