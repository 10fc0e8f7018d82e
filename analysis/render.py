"""A report as a list of sections, rendered to Markdown (images beside it) and to one self-contained HTML
page (images embedded as data URIs, no network, opens offline)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Section:
    title: str
    text: str = ""
    tables: tuple[tuple[str, pd.DataFrame], ...] = ()
    """(caption, table) pairs; numbers are shown as they are, formatted by :func:`_cell`."""
    images: tuple[Path, ...] = ()
    code: str = ""
    """Commands to show verbatim."""
    notes: tuple[str, ...] = field(default_factory=tuple)


def _cell(value: object) -> str:
    if value is None:  # a column no run of the row measured (speedup with bench.enabled=false)
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def to_markdown(title: str, sections: list[Section], *, images: bool = True) -> str:
    """Markdown with each image linked beside it (``images=False``: a page without them, e.g. to check in)."""
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.code:
            out += ["```bash", s.code, "```", ""]
        for caption, table in s.tables:
            out += [f"**{caption}**", "", markdown_table(table), ""]
        shown = s.images if images else ()
        out += [f"![{p.stem}]({p.name})" for p in shown]
        if shown:
            out.append("")
        out += [f"- {n}" for n in s.notes]
        if s.notes:
            out.append("")
    return "\n".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0}pre{background:#f6f6f6;padding:.8em;
overflow-x:auto}caption{font-weight:bold;text-align:left}"""


def to_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            parts.append(f"<p>{html.escape(s.text)}</p>")
        if s.code:
            parts.append(f"<pre><code>{html.escape(s.code)}</code></pre>")
        for caption, table in s.tables:
            parts.append(f"<p><b>{html.escape(caption)}</b></p>{_table_html(table)}")
        parts += [_img(p) for p in s.images]
        if s.notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in s.notes) + "</ul>")
    parts.append("</body></html>")
    return "".join(parts)
