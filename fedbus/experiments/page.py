"""The report's HTML page: self-contained (inline style, images by relative path, no script, nothing fetched).
Pure: values in, a string out; every text is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { font-size: 0.9em; color: #555; } code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """A chart on the page: its file (relative to the page), heading and caption."""

    file: str
    heading: str
    caption: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """The cells' table: a header and rows of text; ``numeric`` marks the columns aligned right."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[int] = frozenset()


def render(*, title: str, intro: Sequence[str], table: Table, images: Sequence[Image], notes: Sequence[str],
           sections: Sequence[tuple[str, str]] = ()) -> str:
    """The page: title, intro paragraphs, the table, the charts, extra (heading, text) sections, then notes."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{e(title)}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    parts += [f"<p>{e(line)}</p>" for line in intro]
    parts += ["<h2>Cells</h2>", _table(table)]
    for image in images:
        parts += [f"<h2>{e(image.heading)}</h2>", "<figure>",
                  f'<img src="{e(image.file, quote=True)}" alt="{e(image.heading, quote=True)}">',
                  f"<figcaption>{e(image.caption)}</figcaption>", "</figure>"]
    for heading, text in sections:
        parts += [f"<h2>{e(heading)}</h2>", f"<p>{e(text)}</p>"]
    if notes:
        parts += ["<h2>Notes</h2>", "<ul>", *(f'<li class="note">{e(n)}</li>' for n in notes), "</ul>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.header)
    rows = ["<tr>" + "".join(f'<td class="num">{e(c)}</td>' if i in table.numeric else f"<td>{e(c)}</td>"
                             for i, c in enumerate(row)) + "</tr>" for row in table.rows]
    return "\n".join(["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>", *rows, "</tbody>", "</table>"])
