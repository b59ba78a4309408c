"""The aggregate's pages as standalone HTML, for Snakemake's report.

The report shows HTML and images inline but offers CSV files only as
downloads, so each table page is also written as HTML. The answer pages
(verdict, frameworks) render their tables from DataFrames with pandas'
Styler (:func:`styled_table`: a cell is coloured only where its difference
is significant after the correction for multiple testing), and their prose
with :func:`markdown_body`. The other pages go through
:func:`markdown_to_html`, which renders exactly the Markdown the aggregate
writes (headings, paragraphs, bullet lists and pipe tables with ``---:``
alignment, `code`, *em*, **strong**); it is not a general Markdown renderer.
"""

import html
import re

STYLE = """
body { font-family: sans-serif; font-size: 14px; margin: 1.5em; color: #1e293b; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #cbd5e1; padding: 0.3em 0.6em; }
th { background: #f1f5f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better { background: #dcfce7; }
td.worse { background: #fee2e2; }
code { background: #f1f5f9; padding: 0 0.2em; }
"""
INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
          (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
          (re.compile(r"\*([^*]+)\*"), r"<em>\1</em>")]


def _inline(text):
    text = html.escape(text, quote=False)
    for pattern, replacement in INLINE:
        text = pattern.sub(replacement, text)
    return text


def _cells(line):
    """The cells of a pipe-table line; ``\\|`` is a literal bar."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def _table(lines):
    header, align, *rows = (_cells(line) for line in lines)
    numeric = [a.endswith(":") for a in align]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f"<td{' class=num' if num else ''}>{_inline(c)}</td>"
            for c, num in zip(row, numeric, strict=False)) + "</tr>")
    return out + ["</table>"]


def markdown_to_html(text, title):
    """A standalone HTML page of the aggregate's Markdown ``text``."""
    return page(markdown_body(text), title)


def page(body, title):
    """A standalone HTML page around ``body`` (lines of HTML)."""
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def styled_table(frame, tones=None, numeric=(), css_class="answer"):
    """One DataFrame of display text as an HTML table through pandas' Styler: cells
    escaped, ``numeric`` columns right-aligned, and each cell's CSS class from ``tones``
    (a frame of the same shape: "better", "worse" or "")."""
    styler = (frame.style.format(escape="html").hide(axis="index")
              .set_table_attributes(f'class="{css_class}"'))
    classes = frame.copy().astype(object)
    for column in frame.columns:
        base = "num" if column in numeric else ""
        extra = tones[column] if tones is not None else ""
        classes[column] = (base + " " + extra) if tones is not None else base
    classes = classes.map(lambda c: c.strip() if isinstance(c, str) else "")
    return styler.set_td_classes(classes).to_html()


def markdown_body(text):
    """The HTML lines of the aggregate's Markdown ``text``."""
    body, block, lines = [], [], text.splitlines() + [""]
    for line in lines:
        kind = ("table" if line.startswith("|") else "list" if line.startswith("- ")
                else "text" if line.strip() and not line.startswith("#") else None)
        if block and (kind != block[0][0]):  # a block ends: render it
            what, content = block[0][0], [content for _, content in block]
            if what == "table":
                body += _table(content)
            elif what == "list":
                body += ["<ul>"] + [f"<li>{_inline(c[2:])}</li>" for c in content] + ["</ul>"]
            else:
                body.append(f"<p>{_inline(' '.join(content))}</p>")
            block = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif kind:
            block.append((kind, line))
    return body
