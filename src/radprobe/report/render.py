"""A small document model and its two renderings: Markdown and self-contained HTML.

The HTML page needs no server and no network: CSS is inline and every figure is a base64 PNG
``data:`` URI. The Markdown file links the same PNGs, written beside it under ``figures/``.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #1f6fb4;padding-bottom:.2em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #d0d0d0;padding:.3em .55em;text-align:left;vertical-align:top}
th{background:#f2f5f9}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafafa}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.pass{color:#fff;background:#2a9d55;padding:.05em .45em;border-radius:3px;font-weight:600}
.fail{color:#fff;background:#c0392b;padding:.05em .45em;border-radius:3px;font-weight:600}
.muted{color:#777}
.grid{display:flex;flex-wrap:wrap;gap:.8em}
.grid figure{flex:1 1 300px;max-width:520px}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
"""


@dataclass
class Heading:
    level: int
    text: str
    anchor: str = ""


@dataclass
class Para:
    text: str
    muted: bool = False


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    """Cells are plain text; ``PASS``/``FAIL`` cells are styled; ``numeric`` columns align right."""

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)
    kind: str = ""  # data attribute for tests/styling, e.g. "results", "paper", "compute"


@dataclass
class Figure:
    name: str  # file name under figures/ (for the Markdown version)
    png: bytes
    caption: str
    alt: str = ""


@dataclass
class FigureGrid:
    figures: list[Figure]


Block = Heading | Para | Bullets | Table | Figure | FigureGrid


# ----------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block], figures_dir: str = "figures") -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * (b.level + 1)} {b.text}", ""]
        elif isinstance(b, Para):
            out += [f"*{b.text}*" if b.muted else b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {x}" for x in b.items] + [""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append(
                "|" + "|".join("---:" if i in b.numeric else "---" for i in range(len(b.headers))) + "|"
            )
            for r in b.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in r) + " |")
            out.append("")
            if b.caption:
                out += [f"*{b.caption}*", ""]
        elif isinstance(b, Figure):
            out += [f"![{b.alt or b.caption}]({figures_dir}/{b.name})", "", f"*{b.caption}*", ""]
        elif isinstance(b, FigureGrid):
            for f in b.figures:
                out += [f"![{f.alt or f.caption}]({figures_dir}/{f.name})", "", f"*{f.caption}*", ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- HTML


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _td(text: str, numeric: bool) -> str:
    if text in ("PASS", "FAIL"):
        return f'<td><span class="{text.lower()}">{text}</span></td>'
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}>{_e(text)}</td>"


def _img(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(f.alt or f.caption)}" '
        f'data-figure="{_e(f.name)}"><figcaption>{_e(f.caption)}</figcaption></figure>'
    )


def to_html(title: str, blocks: list[Block]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            lvl = min(6, b.level + 1)
            anchor = f' id="{_e(b.anchor)}"' if b.anchor else ""
            parts.append(f"<h{lvl}{anchor}>{_e(b.text)}</h{lvl}>")
        elif isinstance(b, Para):
            parts.append(f'<p class="muted">{_e(b.text)}</p>' if b.muted else f"<p>{_e(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_e(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            kind = f' data-kind="{_e(b.kind)}"' if b.kind else ""
            head = "".join(f"<th>{_e(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>" + "".join(_td(c, i in b.numeric) for i, c in enumerate(r)) + "</tr>" for r in b.rows
            )
            cap = f"<caption>{_e(b.caption)}</caption>" if b.caption else ""
            parts.append(f"<table{kind}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            parts.append(_img(b))
        elif isinstance(b, FigureGrid):
            parts.append('<div class="grid">' + "".join(_img(f) for f in b.figures) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
