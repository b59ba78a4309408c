"""The verdict: the benchmark's answer on one screen, first in the report.

Per processor (the hardware the runs trained on) and workload (data set x
model), one line per framework against the baseline, at the study's
full-training GPU count: the time-to-target ratio with its 95 % interval and
the seeds that reached the target, the cost-of-a-result ratio, the test
perplexity verdicts (static and dynamic: equivalent, lower by, or
inconclusive) and the allocator's memory ratio. Across workloads, as AlgoPerf
and MLPerf summarise a benchmark, the equal-weight geometric mean of each
ratio with its t interval (:func:`mosbench.reporting.statistics.geometric_mean`),
and how many workloads entered it; the geometric means of one comparison are
one family, adjusted with Holm's method.

Every figure comes from the frameworks page's rows
(:func:`mosbench.reporting.frameworks.comparison_table`): the same tests, the
same adjusted p-values. A ratio is highlighted (bold in Markdown, coloured in
HTML: green where the compared framework is better, red where it is worse)
only where its difference is significant after the correction. The tables are
DataFrames rendered directly: Markdown by :func:`mosbench.reporting.tables.
markdown_table`, HTML by pandas' Styler.
"""

import html

import numpy as np
import pandas as pd

from mosbench.reporting import statistics as st
from mosbench.reporting.frameworks import ratio_cell, tone
from mosbench.reporting.html import markdown_body, page, styled_table
from mosbench.reporting.tables import format_value, markdown_table

# (figure, header, is it a ratio shown with its interval)
ENDPOINTS = [
    ("time_to_target_s", "time to target", True),
    ("total_cost", "cost of a result", True),
    ("test_ppl", "test ppl", False),
    ("dynamic_test_ppl", "test ppl, dynamic eval", False),
    ("allocator_peak_mb", "memory (allocator peak)", True),
]
GEOMETRIC = "geometric mean over workloads"
def _primary_rows(comparison):
    """The comparison rows at each processor's full-training GPU count."""
    primary = comparison[comparison["endpoint"] == "primary"]
    counts = primary.groupby("hardware")["gpus"].first()
    keep = comparison["hardware"].map(counts) == comparison["gpus"]
    return comparison[keep]


def _cell(row, figure, is_ratio, seeds=None):
    """(text, tone) of one endpoint of one workload line; ``seeds``: the row of a figure
    every finished run has, for the seeds that reached the target out of how many."""
    if row is None:
        return "–", ""
    base, other = row["baseline"], row["framework"]
    missing = [f for f in (base, other) if not row[f"{f}_n"]]
    if missing:  # why a side has no value: the figure's own reason (a CPU job, not run, ...)
        reasons = dict.fromkeys(row[f"{f}_reason"] or "no value" for f in missing)
        return f"– ({'; '.join(reasons)})", ""
    if not is_ratio:
        return row["verdict"] or "–", tone(row)
    if pd.isna(row["ratio"]):
        return f"– ({row['note'] or row['verdict']})", ""
    text = ratio_cell(row)
    if figure == "time_to_target_s":
        of = [f"/{int(seeds[f'{f}_n'])}" if seeds is not None else "" for f in (other, base)]
        text += (f" (reached: {int(row[f'{other}_n'])}{of[0]}, "
                 f"{int(row[f'{base}_n'])}{of[1]})")
    return text, tone(row)


def verdict_tables(comparison):
    """(lines, tones): DataFrames of the verdict's text per (hardware, gpus) and the tone of
    each cell, with the geometric-mean line last; {(hardware, gpus): (text, tones)}."""
    rows = _primary_rows(comparison)
    out = {}
    for (hardware, gpus), group in rows.groupby(["hardware", "gpus"], sort=True):
        lines, tones = [], []
        for (dataset, model, other), cell in group.groupby(["dataset", "model", "framework"],
                                                           sort=True):
            by = {r["figure"]: r for _, r in cell.iterrows()}
            line = {"data set": dataset, "model": model,
                    "framework": f"{other} vs {cell['baseline'].iloc[0]}"}
            tone = dict.fromkeys(line, "")
            for figure, header, is_ratio in ENDPOINTS:
                line[header], tone[header] = _cell(by.get(figure), figure, is_ratio,
                                                   by.get("total_time_s"))
            lines.append(line)
            tones.append(tone)
        for _, cell in group.groupby("framework", sort=False):
            line, tone = geometric_line(cell)
            lines.append(line)
            tones.append(tone)
        out[(hardware, int(gpus))] = (pd.DataFrame(lines), pd.DataFrame(tones))
    return out


def geometric_line(cell):
    """The geometric mean over workloads of each ratio of one comparison (``cell``: its
    rows), each with its interval; significant ones (Holm over the line) get a tone."""
    other, base = cell["framework"].iloc[0], cell["baseline"].iloc[0]
    count = cell[["dataset", "model"]].drop_duplicates().shape[0]
    line = {"data set": GEOMETRIC, "model": f"{count} workload{'s' if count != 1 else ''}",
            "framework": f"{other} vs {base}"}
    tone = dict.fromkeys(line, "")
    found = {}
    for figure, header, _ in ENDPOINTS:
        rows = cell[cell["figure"] == figure]
        samples = [(r["baseline_values"], r["compared_values"]) for _, r in rows.iterrows()
                   if len(r["baseline_values"]) >= 2 and len(r["compared_values"]) >= 2
                   and min(r["baseline_values"] + r["compared_values"]) > 0]
        mean = st.geometric_mean(samples)
        found[header] = (mean, mean.p_value if mean else float("nan"), rows["better_is"].iloc[0]
                         if len(rows) else "lower", len(rows))
    adjusted = dict(zip(found, st.adjust([p for _, p, _, _ in found.values()],
                                         st.PRIMARY_METHOD), strict=True))
    for header, (mean, _, better_is, total) in found.items():
        if mean is None:
            line[header] = f"– (no workload with 2 seeds a side of {total})"
            tone[header] = ""
            continue
        text = format_ratio(mean.ratio, mean.ci_low, mean.ci_high)
        line[header] = f"{text} ({mean.workloads} of {total} workload{'s' if total != 1 else ''})"
        significant = adjusted[header] < st.ALPHA
        tone[header] = "" if not significant else (
            "better" if (mean.ratio < 1) == (better_is == "lower") else "worse")
    return line, tone


def format_ratio(ratio, low, high):
    text = format_value(ratio, "sig")
    if np.isfinite(low):
        text += f" [{format_value(low, 'sig')}, {format_value(high, 'sig')}]"
    return text


def _where(hardware, gpus):
    return f"{hardware} · " + ("CPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus > 1 else ''}")


def intro(baseline):
    return [
        f"Every framework against the baseline, {baseline} (config "
        "`run.baseline_framework`), per workload at the study's full-training GPU count, "
        "on each processor the runs used. Ratios: the compared framework's geometric mean "
        "over seeds divided by the baseline's, with the 95 % t interval on log values (below "
        "1: the compared framework is lower). *Time to target*: training and validation time "
        "to the target validation perplexity (the published one + 3 %: result_cost.md), as "
        "MLPerf Training's run result and AlgoPerf's time-to-result, with the seeds that "
        "reached it of those that ran (compared, then baseline); *cost of a result*: "
        "training, its validation passes and the evaluation the result needs, priced; "
        "*memory*: the framework "
        "allocator's peak. Test perplexity: compared on the per-token loss with a test of "
        "equivalence at the model's margin (frameworks.md). The last line of each table is "
        "the geometric mean over workloads (each weighted equally) with its interval, as "
        "AlgoPerf and MLPerf summarise a benchmark; the perplexity columns there are the "
        "geometric mean of the perplexity ratios. Highlighted: significant after the "
        "correction for multiple testing (Holm over the primary endpoints); anything else "
        "is not a difference shown. Details, every secondary figure and the seeds: "
        "frameworks.md.",
    ]


def verdict_markdown(tables, baseline):
    """The verdict page in Markdown: significant ratios in bold."""
    lines = ["# Verdict", "", *intro(baseline)]
    if not tables:
        return "\n".join(lines + ["", "No comparison: the study has one framework, or no "
                                  "framework has runs."]) + "\n"
    for (hardware, gpus), (text, tones) in tables.items():
        lines += ["", f"## {_where(hardware, gpus)}", ""]
        shown = text.where(tones == "", "**" + text + "**")
        lines += markdown_table(list(text.columns), shown.values.tolist(), text_columns=3)
    return "\n".join(lines) + "\n"


def verdict_html(tables, baseline):
    """The verdict page in HTML: each table through pandas' Styler, coloured where
    significant."""
    body = markdown_body("\n".join(["# Verdict", "", *intro(baseline)]))
    for (hardware, gpus), (text, tones) in tables.items():
        body += [f"<h2>{html.escape(_where(hardware, gpus))}</h2>",
                 styled_table(text, tones, list(text.columns[3:]), "verdict")]
    if not tables:
        body.append("<p>No comparison: the study has one framework, or no framework has "
                    "runs.</p>")
    return page(body, "verdict")
