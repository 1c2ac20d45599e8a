"""A report as a list of blocks (headings, paragraphs, code, tables, images), rendered both as one
self-contained HTML page and as Markdown, so that the two always carry the same content."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass


def fmt(v, spec: str = ".3f", missing: str = "–") -> str:
    """A value as a report shows it: a float by the format `spec` (a NaN as 'nan'), None as `missing`, any
    other value (a count, a name) as it is."""
    if v is None:
        return missing
    return format(v, spec) if isinstance(v, float) else str(v)


@dataclass
class TableCell:
    """A table cell whose text may carry a mark, drawn as its CSS class in the HTML."""

    text: str
    mark: str | None = None  # CSS class: failed, missing, running, partial, flag


@dataclass
class Block:
    kind: str  # h1 h2 h3 p code table img
    text: str = ""
    head: list | None = None
    rows: list | None = None
    name: str = ""  # image file name
    png: bytes = b""
    anchor: str = ""


class Doc:
    """The blocks of a report in order, and what each figure and table was made from (`sources`: its name
    and the rows behind it), for a report's list of sources."""

    def __init__(self):
        self.blocks: list[Block] = []
        self.sources: list[tuple[str, list[dict]]] = []

    def h1(self, t):
        self.blocks.append(Block("h1", t))

    def h2(self, t, anchor):
        self.blocks.append(Block("h2", t, anchor=anchor))

    def h3(self, t):
        self.blocks.append(Block("h3", t))

    def p(self, t):
        self.blocks.append(Block("p", t))

    def code(self, t):
        self.blocks.append(Block("code", t))

    def table(self, head, rows, source_name: str | None = None, source_rows: list[dict] | None = None):
        self.blocks.append(Block("table", head=list(head), rows=[list(r) for r in rows]))
        if source_name:
            self.sources.append((source_name, source_rows or []))

    def img(self, name, alt, png, source_rows):
        self.blocks.append(Block("img", alt, name=name, png=png))
        self.sources.append((f"figure {name}", source_rows))

    def images(self) -> dict[str, bytes]:
        """The PNG of each image, by file name."""
        return {b.name: b.png for b in self.blocks if b.kind == "img"}


_CODE_SPAN = re.compile(r"`([^`]+)`")


def _html_inline(text: str) -> str:
    return _CODE_SPAN.sub(r"<code>\1</code>", html.escape(str(text), quote=True))


def _md_inline(text: str) -> str:
    # keep raw HTML out of the Markdown (outside code spans), so a viewer shows the text as text
    parts = re.split(r"(`[^`]+`)", str(text))
    return "".join(p if p.startswith("`") and p.endswith("`") and len(p) > 1 else p.replace("<", "&lt;") for p in parts)


def _md_cell(c) -> str:
    text = c.text if isinstance(c, TableCell) else str(c)
    return _md_inline(text).replace("|", "\\|").replace("\n", " ")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f0f0f0}
td.failed{background:#fbd5d5;font-weight:600}td.missing{background:#fde9c8;font-weight:600}
td.running{background:#dbe8fb}td.partial{background:#fff8d6}td.flag{background:#fbd5d5}
pre{background:#f5f5f5;padding:.6em;overflow-x:auto;white-space:pre-wrap}code{background:#f3f3f3;padding:0 .2em}
img{max-width:100%;height:auto;border:1px solid #ddd}
"""


def _html_table(b: Block) -> list[str]:
    out = ["<table><thead><tr>" + "".join(f"<th>{_html_inline(h)}</th>" for h in b.head) + "</tr></thead><tbody>"]
    for row in b.rows:
        tds = []
        for c in row:
            c = c if isinstance(c, TableCell) else TableCell(str(c))
            cls = f' class="{html.escape(c.mark)}"' if c.mark else ""
            tds.append(f"<td{cls}>{_html_inline(c.text)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return out


def render_html(doc: Doc, title: str) -> str:
    """One page with nothing to fetch: the CSS inline, each image embedded as a data URI."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<link rel="icon" href="data:,">',  # no favicon request: the page makes no request at all
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head><body>"]
    for b in doc.blocks:
        if b.kind == "h1":
            out.append(f"<h1>{_html_inline(b.text)}</h1>")
        elif b.kind == "h2":
            out.append(f'<h2 id="{html.escape(b.anchor)}">{_html_inline(b.text)}</h2>')
        elif b.kind == "h3":
            out.append(f"<h3>{_html_inline(b.text)}</h3>")
        elif b.kind == "p":
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif b.kind == "code":
            out.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "img":
            data = base64.b64encode(b.png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.text)}">'
                       f"<figcaption>{_html_inline(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            out += _html_table(b)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_markdown(doc: Doc) -> str:
    """The same blocks as Markdown; an image is linked by its file name (the caller writes the file beside)."""
    out = []
    for b in doc.blocks:
        if b.kind == "h1":
            out += [f"# {_md_inline(b.text)}", ""]
        elif b.kind == "h2":
            out += [f"## {_md_inline(b.text)}", ""]
        elif b.kind == "h3":
            out += [f"### {_md_inline(b.text)}", ""]
        elif b.kind == "p":
            out += [_md_inline(b.text), ""]
        elif b.kind == "code":
            fence = "````" if "```" in b.text else "```"
            out += [fence, b.text, fence, ""]
        elif b.kind == "img":
            out += [f"![{_md_inline(b.text)}]({b.name})", ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in b.head) + " |")
            out.append("|" + "---|" * len(b.head))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
    return "\n".join(out).rstrip() + "\n"
