"""Numbers as researchers read them: rounding styles and Markdown tables."""

import math

import pandas as pd


def format_value(value, style):
    """One number as text; "–" when absent.

    Styles: "ppl" 2 decimals, "int" whole with thousands separators, "pct" 1
    decimal, "sig" 3 significant figures (scientific below 0.001).
    """
    if value is None or pd.isna(value):
        return "–"
    if style == "ppl":
        return f"{value:.2f}"
    if style == "int":
        return f"{value:,.0f}"
    if style == "pct":
        return f"{value:.1f}"
    if value == 0:
        return "0"
    if not 1e-3 <= abs(value) < 1e7:  # too small or large for fixed decimals to read well
        return f"{value:.3g}"
    decimals = 2 - math.floor(math.log10(abs(value)))
    return f"{round(value, decimals):,.{max(decimals, 0)}f}"


def mean_std(mean, std, style):
    """"mean ± std", or "–" alone when there is no mean."""
    if mean is None or pd.isna(mean):
        return "–"
    return f"{format_value(mean, style)} ± {format_value(std, style)}"


def mean_std_by(frame, keys, figures, count):
    """Per group of ``keys``: its row count (column ``count``) and every figure's mean and
    sample std (``<figure>_mean``, ``<figure>_std``; NaN for a figure ``frame`` lacks).

    Returns the table, indexed by ``keys``, and the groupby, for callers that add columns.
    """
    frame = frame.reindex(columns=list(frame.columns) + [f for f in figures if f not in frame])
    grouped = frame.groupby(keys, sort=True)
    table = grouped.size().rename(count).to_frame()
    for figure in figures:
        table[f"{figure}_mean"] = grouped[figure].mean()
        table[f"{figure}_std"] = grouped[figure].std(ddof=1)
    return table, grouped


def markdown_table(header, rows, text_columns):
    """A Markdown table; the first ``text_columns`` columns are left-aligned, the rest right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for cells in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return lines
