"""The frameworks page: each question of the benchmark, every framework against the baseline.

Per (dataset, model, gpus) and processor, one row per measure and framework
compared with the study's baseline (``run.baseline_framework``, by default
the first of ``run.frameworks``): each framework's mean ± sample std over
seeds and its number of seeds, the ratio of the compared framework's
geometric mean to the baseline's with its 95 % interval, Welch's test on the
logarithms with its raw and adjusted p-value, Hedges' g, and a verdict in
words that names a lower side only where the adjusted test says so.
Perplexities are compared on the per-token loss (log perplexity), pooled
over the GPU counts that trained with the same global batch, with a test of
equivalence (TOST) at the model's margin. Which figures are primary
endpoints, which are derived from another and how p-values are adjusted:
:mod:`mosbench.reporting.statistics`. Compile and start-up (the first step,
the job's start to the end of it, the programs the engine compiled and their
seconds) is a question of its own; the compile count is shown, not tested
(:data:`EXACT`).

Data loading is a property of the framework's input pipeline on a data set
and device, not of a model: it has its own table. A cell a framework could
not fill says why: not run, one seed, or the figure's absent reason. Runs that
did not finish are in no cell; the page lists them first.
"""

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError
from mosbench.reporting import html
from mosbench.reporting import statistics as st
from mosbench.reporting.tables import format_value, markdown_table

# (question, column, label, which is better, number style)
QUESTIONS = [
    ("Time per epoch", "epoch_time_s", "epoch time (s)", "lower", "sig"),
    ("Time per epoch", "tokens_per_s", "training tokens/s", "higher", "sig"),
    ("Money per epoch", "cost_per_epoch", "cost per epoch", "lower", "sig"),
    ("Compile and start-up", "first_step_s",
     "first training step: tracing and compiling (s)", "lower", "sig"),
    ("Compile and start-up", "time_to_first_step_s",
     "job start to the end of its first step (s)", "lower", "sig"),
    # The programs a job's engine compiled and their seconds, over its launches (train.json's
    # compiles, compile_s; docs/measurements.md): JAX gives both; TensorFlow counts its
    # tf.function traces, untimed; PyTorch runs eagerly. The count is never tested (EXACT);
    # the seconds are a time, tested on the logs as the first step is.
    ("Compile and start-up", "compiles",
     "programs compiled per job (TensorFlow: tf.function traces)", "lower", "sig"),
    ("Compile and start-up", "compile_s", "compile time per job (s)", "lower", "sig"),
    ("Cost of a result", "total_time_s", "training + evaluation time (s)", "lower", "sig"),
    ("Cost of a result", "total_cost", "training + evaluation cost", "lower", "sig"),
    ("Cost of a result", "time_to_target_s",
     "training and validation time to the target valid ppl (s)", "lower", "sig"),
    ("Cost of a result", "cost_to_target", "cost to the target valid ppl", "lower", "sig"),
    ("Prediction time", "latency_ms_median", "next-word latency, median (ms)", "lower", "sig"),
    ("Prediction time", "latency_ms_p95", "next-word latency, p95 (ms)", "lower", "sig"),
    ("Prediction time", "eval_tokens_per_s", "batched evaluation tokens/s", "higher", "sig"),
    ("Multi-GPU scaling", "efficiency", "parallel efficiency, strong scaling (%)", "higher",
     "pct"),
    # GPU memory: the allocators' peaks of live tensors compare like with like (the headline);
    # the driver's figure adds CUDA contexts and each allocator's cache policy (secondary).
    ("Hardware use", "allocator_peak_mb",
     "GPU memory peak, framework allocator, summed over replicas/devices (MiB)", "lower", "sig"),
    ("Hardware use", "gpu_memory_peak_mb",
     "GPU memory reserved by the driver, secondary (NVML, job's processes; MiB)", "lower",
     "sig"),
    ("Hardware use", "gpu_util_mean_pct", "GPU utilisation (%)", None, "pct"),
    ("Hardware use", "host_rss_peak_mb", "host peak RSS (MiB)", "lower", "sig"),
    ("Perplexity", "best_valid_ppl", "valid ppl", "lower", "ppl"),
    ("Perplexity", "test_ppl", "test ppl", "lower", "ppl"),
    ("Perplexity", "dynamic_valid_ppl", "valid ppl, dynamic eval", "lower", "ppl"),
    ("Perplexity", "dynamic_test_ppl", "test ppl, dynamic eval", "lower", "ppl"),
]
QUESTION_ORDER = list(dict.fromkeys(q for q, *_ in QUESTIONS))
PERPLEXITY = [figure for question, figure, *_ in QUESTIONS if question == "Perplexity"]
# The declared primary endpoints of a workload, at the study's full-training GPU count;
# every other tested figure is secondary.
PRIMARY = ("time_to_target_s", "cost_to_target", "test_ppl", "dynamic_test_ppl",
           "allocator_peak_mb")
# Figures that are another figure times a constant within a cell (the price of a GPU-hour,
# the tokens of an epoch): shown with their ratio, judged by their source's test.
DERIVED = {"cost_per_epoch": "epoch_time_s", "tokens_per_s": "epoch_time_s",
           "total_cost": "total_time_s", "cost_to_target": "time_to_target_s"}
DERIVED_WHY = {"cost_per_epoch": "time per epoch x price", "tokens_per_s": "tokens per "
               "epoch / time per epoch", "total_cost": "time x price",
               "cost_to_target": "time to target x price"}
TO_TARGET = ("time_to_target_s", "cost_to_target")  # means over the seeds that reached it
# Figures shown with each side's mean and the ratio of the means, never tested: {figure:
# why, the verdict's words}. Efficiency is one figure from the mean throughputs. The compile
# count is what the engine's design and the data's window shapes make it, the same over
# seeds or nearly: not a noisy sample of a cost, and a Welch test on it has no error to test
# against (a side whose seeds agree gives a zero variance: an infinite t, or no test at all,
# and a p-value from a retrace or two would be a test of nothing). Its row shows both means
# and their ratio.
ONE_FIGURE = "one figure a side"
EXACT = {"efficiency": ONE_FIGURE,
         "compiles": "a count the engine decides (the same over seeds or nearly)"}
DATA_QUESTIONS = [
    ("data_stream_tokens_per_s", "streaming from Parquet, tokens/s", "higher", "sig"),
    ("data_cache_memory_tokens_per_s", "cached in memory, tokens/s", "higher", "sig"),
    ("data_cache_file_tokens_per_s", "cached in a file, tokens/s", "higher", "sig"),
    ("memory_cache_speedup", "memory cache over streaming (×)", None, "sig"),
    ("data_parquet_load_s", "load the Parquet splits (s)", "lower", "sig"),
    ("data_preprocess_s", "text -> ids without Parquet (s)", "lower", "sig"),
]
IDENT = ["dataset", "model", "gpus", "pooled_gpus", "device", "hardware"]
RESULT_COLUMNS = ["ratio", "ratio_ci_low", "ratio_ci_high", "log_difference", "log_ci_low",
                  "log_ci_high", "t", "df", "p_value", "p_adjusted", "adjustment", "hedges_g",
                  "margin_nats", "p_tost", "p_tost_adjusted", "equivalence", "significant",
                  "verdict", "note"]
# seed values travel with each row for the verdict page; not written to frameworks.csv
VALUES = ["baseline_values", "compared_values"]


def columns(frameworks):
    """frameworks.csv's columns for a study of ``frameworks``."""
    return (IDENT + ["question", "measure", "figure", "better_is", "endpoint", "derived_from",
                     "family", "baseline", "framework"]
            + [f"{f}_{s}" for f in frameworks for s in ("n", "mean", "std", "reason",
                                                          "environment")]
            + RESULT_COLUMNS)


def study_frameworks(frameworks=None, baseline=None):
    """(frameworks, the baseline first, and the baseline). ``frameworks``: run.frameworks
    (None: every engine, mosbench.engines.FRAMEWORKS); ``baseline``: run.baseline_framework
    (None: the first)."""
    frameworks = list(FRAMEWORKS if frameworks is None else frameworks)
    baseline = frameworks[0] if baseline is None else baseline
    if baseline not in frameworks:
        raise MosbenchError(f"config key 'run.baseline_framework': '{baseline}' is not in "
                            f"run.frameworks; allowed: {frameworks}")
    return [baseline] + [f for f in frameworks if f != baseline], baseline


@dataclass
class Sample:
    """One framework's values of one figure in one cell, or why there are none."""

    values: list
    reason: str = ""
    mean: float = float("nan")
    std: float = float("nan")
    n: int = 0

    @classmethod
    def of(cls, values, reason=""):
        values = [float(v) for v in values if pd.notna(v)]
        series = pd.Series(values, dtype=float)
        return cls(values, "" if values else reason, series.mean(), series.std(ddof=1),
                   len(values))


def _first_reason(reasons, figure, default):
    for run_reasons in reasons:
        if figure in run_reasons:
            return f"absent: {run_reasons[figure]}"
    return default


def _compare(samples, baseline, other, figure, margin, exact=""):
    """The result columns of ``other`` against ``baseline`` (before any adjustment);
    ``exact``: why the figure is not tested (:data:`EXACT`): the ratio of the means only."""
    a, b = samples[baseline], samples[other]
    out = dict.fromkeys(RESULT_COLUMNS, float("nan"))
    out.update(note="", verdict="", equivalence="", adjustment="", significant=False,
               baseline_values=a.values, compared_values=b.values)
    if not (a.values and b.values):
        missing = [f for f in (baseline, other) if not samples[f].values]
        out["note"] = f"no value from {' and '.join(missing)}"
        out["verdict"] = "untested: " + out["note"]
        return out, None
    if exact:
        if a.mean and np.isfinite(a.mean) and np.isfinite(b.mean):
            out["ratio"] = b.mean / a.mean
        else:
            out["note"] = f"{baseline}'s mean is {format_value(a.mean, 'sig')}: no ratio"
        out["verdict"] = f"untested: {exact}"
        return out, None
    result = st.ratio_test(a.values, b.values)
    if result is None:
        out["note"] = "values not all positive: no ratio"
        out["verdict"] = "untested: " + out["note"]
        return out, None
    out["ratio"] = result.ratio
    if result.welch is None:
        out["note"] = st.not_tested_reason(a.n, b.n, baseline, other).removeprefix("no test: ")
    else:
        w = result.welch
        out.update(ratio_ci_low=result.ci_low, ratio_ci_high=result.ci_high,
                   log_difference=w.difference, log_ci_low=w.ci_low, log_ci_high=w.ci_high,
                   t=w.t, df=w.df, p_value=w.p_value, hedges_g=result.hedges_g)
    if figure in PERPLEXITY:
        c = st.equivalence(baseline, np.log(a.values), other, np.log(b.values), margin)
        out.update(margin_nats=margin, p_tost=c["p_tost"] if c["p_tost"] is not None
                   else float("nan"))
        out["_equivalence"] = c
    return out, result


def _row(ident, question, figure, label, better_is, samples, environments, baseline, other,
         margin=None, exact=""):
    out, result = _compare(samples, baseline, other, figure, margin, exact)
    row = {**ident, "question": question, "measure": label, "figure": figure,
           "device": ident.get("device") or ("gpu" if ident["gpus"] else "cpu"),
           "better_is": better_is or "", "baseline": baseline, "framework": other,
           "derived_from": DERIVED.get(figure, ""), "_result": result, **out}
    for f, s in samples.items():
        row.update({f"{f}_n": s.n, f"{f}_mean": s.mean, f"{f}_std": s.std,
                    f"{f}_reason": s.reason, f"{f}_environment": environments.get(f) or ""})
    return row


def _cells(runs, frameworks, keys):
    """(ident, {framework: environment or None}, {framework: its runs}) per comparison."""
    for key, cell in runs.groupby(keys, sort=True, dropna=False):
        options = [[(f, env, group) for env, group in cell[cell["framework"] == f].groupby(
            "environment", sort=True)] or [(f, None, None)] for f in frameworks]
        for combination in itertools.product(*options):
            yield (dict(zip(keys, key, strict=True)), cell,
                   {f: env for f, env, _ in combination},
                   {f: group for f, _, group in combination})
def _efficiency(scaling, ident, framework, environment):
    """The strong-scaling efficiency of a framework at this cell's GPU count, as a Sample."""
    if ident["gpus"] == 0:
        return Sample.of([], "CPU job: no multi-GPU scaling")
    rows = scaling[(scaling["scaling"] == "strong") & (scaling["dataset"] == ident["dataset"])
                   & (scaling["model"] == ident["model"]) & (scaling["framework"] == framework)
                   & (scaling["gpus"] == ident["gpus"])]
    if "environment" in rows and environment is not None:
        rows = rows[rows["environment"] == environment]
    if rows.empty or rows["efficiency"].isna().all():
        return Sample.of([], "no throughput at this GPU count")
    row = rows.iloc[0]
    if row["gpus"] == row["base_gpus"]:
        return Sample.of([], f"{int(row['gpus'])} GPU(s) is the base count it scales from")
    sample = Sample.of([100.0 * row["efficiency"]])
    sample.n = int(row["n"])
    return sample


def _not_finished(excluded, ident, framework):
    """Why a framework has no run in a cell: not run, or its runs did not finish."""
    if excluded is None or excluded.empty:
        return "not run"
    mine = excluded[(excluded["framework"] == framework)
                    & (excluded["dataset"] == ident["dataset"])
                    & (excluded["model"] == ident["model"]) & (excluded["gpus"] == ident["gpus"])]
    if mine.empty:
        return "not run"
    return ("no finished run: " + ", ".join(sorted(set(mine["outcome"])))
            + " (see Runs not in the figures)")


def _sample(group, ident, figure, framework, reasons, scaling, environment, excluded):
    if group is None:
        return Sample.of([], _not_finished(excluded, ident, framework))
    if figure == "efficiency":
        return _efficiency(scaling, ident, framework, environment)
    default = ("not computed: evaluate runs dynamic evaluation only where the preset has "
               "dynamic_eval" if figure.startswith("dynamic_") else "not recorded")
    values = group[figure] if figure in group else []
    sample = Sample.of(values, _first_reason([reasons.get(i, {}) for i in group.index], figure,
                                             default))
    if figure in TO_TARGET:  # a mean over the seeds that reached it: how many of how many
        reached = f"{sample.n} of {len(group)} seeds reached the target"
        sample.reason = reached if sample.values else f"{reached}; {sample.reason}"
    return sample


def comparison_table(runs, reasons, scaling, excluded=None, *, frameworks=None, baseline=None,
                     primary_gpus=None, margins=None):
    """The long table of every (cell, measure, framework against the baseline): the columns
    of :func:`columns`, and the seed values (:data:`VALUES`).

    ``reasons``: {runs index: {figure: reason}}; ``excluded``: the runs that did not finish
    (:mod:`mosbench.reporting.excluded`); ``frameworks``, ``baseline``: the study's
    (:func:`study_frameworks`); ``primary_gpus``: the study's full-training GPU count, where
    the primary endpoints are (None: the smallest GPU count of each processor's runs);
    ``margins``: {model: equivalence margin in nats} (default 1 % of perplexity).
    """
    frameworks, baseline = study_frameworks(frameworks, baseline)
    margins = margins or {}
    primary = {hw: primary_gpus if primary_gpus is not None else int(group["gpus"].min())
               for hw, group in runs.groupby("hardware")}
    rows, cell_id = [], itertools.count()

    def emit(ident, environments, groups, figures):
        cell = next(cell_id)
        for question, figure, label, better_is, _ in QUESTIONS:
            if figure not in figures:
                continue
            samples = {f: _sample(groups[f], ident, figure, f, reasons, scaling,
                                  environments[f], excluded) for f in frameworks}
            if ident["pooled_gpus"]:
                label = f"{label} (pooled over {ident['pooled_gpus']} GPUs)"
            margin = margins.get(ident["model"], st.margin_nats(st.DEFAULT_MARGIN_PCT))
            for other in frameworks[1:]:
                row = _row(ident, question, figure, label, better_is, samples, environments,
                           baseline, other, margin, exact=EXACT.get(figure, ""))
                row["_cell"] = cell
                rows.append(row)

    others = [figure for _, figure, *_ in QUESTIONS if figure not in PERPLEXITY]
    for ident, _, environments, groups in _cells(runs, frameworks,
                                                 ["dataset", "model", "gpus", "hardware"]):
        emit({**ident, "pooled_gpus": ""}, environments, groups, others)
    # Perplexity does not depend on how many GPUs share a global batch: pooled over them
    batch = runs["batch_size"] if "batch_size" in runs else pd.Series(-1, index=runs.index)
    pooled = runs.assign(_batch=batch.fillna(-1))
    for ident, cell, environments, groups in _cells(pooled, frameworks,
                                                    ["dataset", "model", "hardware", "_batch"]):
        counts = sorted(int(g) for g in set(cell["gpus"]))
        anchor = primary[ident["hardware"]] if primary[ident["hardware"]] in counts else counts[0]
        emit({"dataset": ident["dataset"], "model": ident["model"], "gpus": anchor,
              "hardware": ident["hardware"],
              "pooled_gpus": ", ".join(map(str, counts)) if len(counts) > 1 else ""},
             environments, groups, PERPLEXITY)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=columns(frameworks) + VALUES)
    table["endpoint"] = [
        "primary" if r.figure in PRIMARY and r.gpus == primary[r.hardware] else "secondary"
        for r in table.itertuples()]
    table["family"] = [
        f"{r.framework} vs {r.baseline} · {r.hardware} · "
        + ("primary endpoints" if r.endpoint == "primary" else r.question)
        for r in table.itertuples()]
    table = _adjust(table, baseline)
    order = {q: i for i, q in enumerate(QUESTION_ORDER)}
    figure_order = {figure: i for i, (_, figure, *_) in enumerate(QUESTIONS)}
    table = table.assign(_q=table["question"].map(order), _f=table["figure"].map(figure_order),
                         _o=table["framework"].map({f: i for i, f in enumerate(frameworks)}))
    table = table.sort_values(["dataset", "model", "hardware", "gpus", "_cell", "_q", "_f",
                               "_o"], kind="stable")
    return table[columns(frameworks) + VALUES].reset_index(drop=True)


def _adjust(table, baseline):
    """Adjusted p-values within each family (Holm for the primary endpoints, Benjamini-
    Hochberg for a secondary question), then every row's verdict; a derived row follows
    its source's adjusted test."""
    table = table.copy()
    tested = table["derived_from"].eq("")
    for family, group in table[tested].groupby("family"):
        method = st.PRIMARY_METHOD if family.endswith("primary endpoints") else (
            st.SECONDARY_METHOD)
        table.loc[group.index, "p_adjusted"] = st.adjust(group["p_value"], method)
        table.loc[group.index, "p_tost_adjusted"] = st.adjust(group["p_tost"], method)
        has_p = group.index[group["p_value"].notna()]
        table.loc[has_p, "adjustment"] = (f"{st.METHOD_NAMES[method]} over "
                                          f"{int(group['p_value'].notna().sum())} tests")
    table["significant"] = table["p_adjusted"] < st.ALPHA
    sources = {key: i for i, key in zip(table.index, zip(
        table["_cell"], table["framework"], table["figure"], strict=True), strict=True)}
    for i, row in table.iterrows():
        result, other = row["_result"], row["framework"]
        if row["derived_from"]:  # not tested again: its interval, its source's test
            table.loc[i, ["t", "df", "p_value", "hedges_g"]] = float("nan")
            source = sources.get((row["_cell"], other, row["derived_from"]))
            p_adj = table.at[source, "p_adjusted"] if source is not None else float("nan")
            table.at[i, "significant"] = bool(p_adj < st.ALPHA)
            table.at[i, "adjustment"] = (f"derived ({DERIVED_WHY[row['figure']]}): judged by "
                                         f"the test of {row['derived_from']}")
        else:
            p_adj = row["p_adjusted"]
        if result is None:
            continue
        if isinstance(row.get("_equivalence"), dict):
            words = st.loss_verdict(row["_equivalence"], baseline, other,
                                    p_diff=row["p_adjusted"], p_tost=row["p_tost_adjusted"])
            table.at[i, "equivalence"] = words
            table.at[i, "verdict"] = words
        else:
            table.at[i, "verdict"] = st.ratio_verdict(result, other, baseline, p_adj)
    return table


def data_comparison(data, frameworks=None, baseline=None):
    """Rows of the data-loading table per (dataset, device) and framework against the
    baseline: :func:`columns` (no model or gpus); one figure a side, not tested."""
    frameworks, baseline = study_frameworks(frameworks, baseline)
    rows = []
    data = data.copy()
    if {"data_cache_memory_tokens_per_s_mean", "data_stream_tokens_per_s_mean"} <= set(data):
        data["memory_cache_speedup_mean"] = (data["data_cache_memory_tokens_per_s_mean"]
                                             / data["data_stream_tokens_per_s_mean"])
        data["memory_cache_speedup_std"] = float("nan")
        if "data_stream_tokens_per_s_absent" in data:
            data["memory_cache_speedup_absent"] = data["data_stream_tokens_per_s_absent"]
    for (dataset, device), cell in data.groupby(["dataset", "device"], sort=True):
        ident = {"dataset": dataset, "model": "", "gpus": None, "pooled_gpus": "",
                 "device": device, "hardware": ""}
        for figure, label, better_is, _ in DATA_QUESTIONS:
            samples = {}
            for f in frameworks:
                row = cell[cell["framework"] == f]
                if row.empty:
                    samples[f] = Sample.of([], "not run")
                    continue
                mean = row[f"{figure}_mean"].iloc[0] if f"{figure}_mean" in row else None
                absent = f"{figure}_absent"
                sample = Sample.of([mean], row[absent].iloc[0] if absent in row
                                   else "not measured")
                if sample.values:
                    sample.n, sample.std = int(row["n"].iloc[0]), row[f"{figure}_std"].iloc[0]
                samples[f] = sample
            for other in frameworks[1:]:
                rows.append({**_row(ident, "Data loading", figure, label, better_is, samples,
                                    {}, baseline, other, exact=ONE_FIGURE),
                             "endpoint": "secondary", "family": ""})
    return pd.DataFrame(rows, columns=columns(frameworks))


def _styles():
    return ({figure: style for _, figure, _, _, style in QUESTIONS}
            | {figure: style for figure, _, _, style in DATA_QUESTIONS})


@dataclass
class Table:
    """A table of a page: rendered as Markdown, or as HTML through pandas' Styler."""

    header: list
    rows: list
    text_columns: int
    tones: list | None = None  # per row, per cell: "better", "worse" or ""


def tone(row):
    """"better", "worse" or "" for a comparison row: only where the difference is
    significant after the correction, and the figure has a better direction."""
    if not row["significant"] or row["better_is"] not in ("lower", "higher"):
        return ""
    return "better" if (row["ratio"] < 1) == (row["better_is"] == "lower") else "worse"


def render_markdown(blocks):
    """The Markdown of a page's blocks (lines and :class:`Table`)."""
    lines = []
    for block in blocks:
        if isinstance(block, Table):
            lines += markdown_table(block.header, block.rows, block.text_columns)
        else:
            lines.append(block)
    return "\n".join(lines) + "\n"


def render_html(blocks, title):
    """The HTML page of a page's blocks: prose as Markdown, tables from DataFrames."""
    body, text = [], []
    for block in [*blocks, Table([], [], 0)]:
        if not isinstance(block, Table):
            text.append(block)
            continue
        body += html.markdown_body("\n".join(text))
        text = []
        if block.header:
            frame = pd.DataFrame(block.rows, columns=block.header).astype(str)
            tones = (None if block.tones is None
                     else pd.DataFrame(block.tones, columns=block.header))
            body.append(html.styled_table(frame, tones, block.header[block.text_columns:]))
    return html.page(body, title)


def frameworks_of(table):
    """The study's frameworks, baseline first, from a comparison table's columns."""
    return [c.removesuffix("_n") for c in table.columns
            if c.endswith("_n") and c.removesuffix("_n") + "_mean" in table.columns]


def _framework_cell(row, framework, style):
    n, mean, std = row[f"{framework}_n"], row[f"{framework}_mean"], row[f"{framework}_std"]
    if not n or pd.isna(mean):
        return None
    if row["figure"] in TO_TARGET:  # over the seeds that reached it: the reason says so
        spread = "" if n == 1 or pd.isna(std) else f" ± {format_value(std, style)}"
        return f"{format_value(mean, style)}{spread} ({row[f'{framework}_reason']})"
    if row["figure"] == "efficiency":  # of the mean throughputs: one figure
        return f"{format_value(mean, style)} ({n} seed{'s' if n > 1 else ''})"
    if row["question"] == "Data loading" and n == 1:  # measured once
        return format_value(mean, style)
    if n == 1 or pd.isna(std):
        return f"{format_value(mean, style)}" + (" (1 seed: no std)" if n == 1 else f" ({n})")
    return f"{format_value(mean, style)} ± {format_value(std, style)} ({n})"


def ratio_cell(row):
    """"ratio [low, high]", or the ratio alone where there is no interval."""
    if pd.isna(row["ratio"]):
        return "–"
    text = format_value(row["ratio"], "sig")
    if pd.notna(row["ratio_ci_low"]):
        text += (f" [{format_value(row['ratio_ci_low'], 'sig')}, "
                 f"{format_value(row['ratio_ci_high'], 'sig')}]")
    return text


def _p_cells(row):
    """(raw p, adjusted p) as text."""
    if row["derived_from"]:
        return "–", f"derived from {row['derived_from']}"
    if pd.notna(row["p_value"]):
        return f"{row['p_value']:.3g}", f"{row['p_adjusted']:.3g}"
    return (f"– ({row['note']})" if row["note"] else "–"), "–"


def _markdown_rows(table, frameworks):
    """Table rows, lines for measures no framework has, and each row's cell tones."""
    styles, rows, gone, tones = _styles(), [], [], []
    for _, row in table.iterrows():
        style = styles[row["figure"]]
        cells = {f: _framework_cell(row, f, style) for f in frameworks}
        if not any(cells.values()):
            why = {row[f"{f}_reason"] for f in frameworks}
            line = f"- *{row['measure']}*: " + ("; ".join(sorted(why)))
            if line not in gone:
                gone.append(line)
            continue
        p, p_adjusted = _p_cells(row)
        g = "–" if pd.isna(row["hedges_g"]) else f"{row['hedges_g']:.2g}"
        rows.append([row["question"], row["measure"]]
                    + [cells[f] or row[f"{f}_reason"] for f in frameworks]
                    + [row["framework"], ratio_cell(row), p, p_adjusted, g, row["verdict"]])
        shade = tone(row)
        tones.append([""] * (len(frameworks) + 3) + [shade, "", "", "", shade])
    return rows, gone, tones


def _sentences(table):
    lines = []
    for _, row in table[table["question"] == "Perplexity"].iterrows():
        base, other = row["baseline"], row["framework"]
        if pd.isna(row[f"{base}_mean"]) and pd.isna(row[f"{other}_mean"]):
            continue
        if pd.isna(row["p_value"]):
            lines.append(f"- {row['measure']}, {other} vs {base}: no test: {row['note']}.")
            continue
        tost = ("" if pd.isna(row["p_tost"]) else
                f"; TOST at ±{st.ppl_change(row['margin_nats']):.2g} % ppl: p = "
                f"{row['p_tost']:.3g}, adjusted {row['p_tost_adjusted']:.3g}")
        lines.append(f"- {row['measure']}, {other} − {base}: {row['log_difference']:+.4f} nats "
                     f"per token (95 % interval {row['log_ci_low']:+.4f} to "
                     f"{row['log_ci_high']:+.4f}; Welch t = {row['t']:.3g}, df = "
                     f"{row['df']:.3g}, p = {row['p_value']:.3g}, adjusted "
                     f"{row['p_adjusted']:.3g}{tost}): {row['verdict']}.")
    return lines


def _heading(ident, environments, with_environments):
    gpus = int(ident["gpus"])
    where = "CPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus > 1 else ''}"
    text = f"## {ident['dataset']} · {ident['model']} · {where}"
    if ident["hardware"] != "unknown":
        text += f" ({ident['hardware']})"
    if with_environments:
        text += " · " + ", ".join(f"{f}: {env}" for f, env in environments.items() if env)
    return text


# The start-up table's figures with a ratio and its adjusted p, and those shown as
# "baseline / compared" means only (their ratios and tests are in each cell's table).
START_UP_TESTED = (("first_step_s", "first step"), ("time_to_first_step_s", "to first step"))
START_UP_MEANS = (("compiles", "compiles"), ("compile_s", "compile time (s)"))


def _start_up(comparison):
    """The compile and start-up question across cells: one row per cell and comparison."""
    rows = comparison[comparison["question"] == "Compile and start-up"]
    lines = ["", "## Compile and start-up", "",
             "What a framework costs before it trains: its first training step (tracing, "
             "graph building, compiling, autotuning), and the job's start to the end of that "
             "step (imports, data, model building and the first step), per cell; not in the "
             "step times or throughputs above. Ratio: geometric means over seeds, compared "
             "framework over the baseline, with its 95 % interval; p adjusted "
             f"({st.METHOD_NAMES[st.SECONDARY_METHOD]}) within this question. *Compiles* "
             "are the programs a job's engine compiled over its launches (JAX: one per new "
             "window shape; TensorFlow: its tf.function traces; PyTorch runs eagerly and "
             "compiles none), *compile time* their seconds (JAX only: a TensorFlow trace is "
             "timed with its step's first call); both as means over seeds, baseline / "
             "compared. Their ratios are in each cell's table, where compile time is tested "
             "as the first step is (its cell here coloured where that test is significant) "
             "and the count is not: a count the engine decides is the same over seeds, or "
             "nearly, and has no error to test against.", ""]
    figures = [f for f, _ in START_UP_TESTED + START_UP_MEANS]
    means = [f"{f}_mean" for f in frameworks_of(comparison)]
    if rows.empty or rows[means].isna().all(axis=None):
        return lines + ["No run recorded its first step or its compiles."]
    shades, table, absent = [], [], []
    for key, group in rows.groupby(["dataset", "model", "gpus", "hardware", "framework"],
                                   sort=True):
        by = {}  # a figure's first row (a cell split by environment has more)
        for _, r in group[group["figure"].isin(figures)].iterrows():
            by.setdefault(r["figure"], r)
        base, other = group["baseline"].iloc[0], key[4]
        cells, shade = [], [""] * 4
        for figure, _ in START_UP_TESTED:
            r = by.get(figure)
            if r is None:
                cells += ["–", "–", "–"]
                shade += ["", "", ""]
                continue
            cells += [f"{format_value(r[f'{base}_mean'], 'sig')} / "
                      f"{format_value(r[f'{other}_mean'], 'sig')}", ratio_cell(r),
                      _p_cells(r)[1]]
            shade += ["", tone(r), ""]
        for figure, label in START_UP_MEANS:
            r = by.get(figure)
            shade.append("" if r is None else tone(r))  # the count: never significant
            if r is None:
                cells.append("–")
                continue
            cells.append(f"{format_value(r[f'{base}_mean'], 'sig')} / "
                         f"{format_value(r[f'{other}_mean'], 'sig')}")
            for f in (base, other):  # the engine's own reason; "not run" needs no line
                line = f"- *{label}*, {f}: {r[f'{f}_reason']}"
                if (pd.isna(r[f"{f}_mean"]) and str(r[f"{f}_reason"]).startswith("absent: ")
                        and line not in absent):
                    absent.append(line)
        table.append([*key[:3], f"{other} vs {base}", *cells])
        shades.append(shade)
    header = ["dataset", "model", "gpus", "comparison"]
    for _, label in START_UP_TESTED:
        header += [f"{label} (s), baseline / compared", f"{label} ratio", f"{label} p adj."]
    header += [f"{label}, baseline / compared" for _, label in START_UP_MEANS]
    lines.append(Table(header, table, 4, shades))
    return lines + (["", "Compile figures a framework does not give:", "", *absent]
                    if absent else [])


def intro(baseline, currency=None, primary_gpus=None):
    """The paragraphs that say how to read the page."""
    where = ("the study's full-training GPU count" if primary_gpus is None
             else f"{primary_gpus} GPU(s), the study's full-training count")
    return [
        f"Each question of the benchmark, every framework against the baseline, {baseline} "
        "(config `run.baseline_framework`). Cells: mean ± sample std over seeds (number of "
        "seeds). *Ratio*: the compared framework's geometric mean over the baseline's, with "
        "the 95 % t interval of the difference of mean logarithms (Welch, exponentiated); "
        "*p*: Welch's two-sided test of that difference (ratio 1), raw and adjusted for "
        "multiple testing; *g*: Hedges' g on the log scale. The verdict names a lower side "
        "only where the adjusted p is below "
        f"{st.ALPHA:g}; otherwise it says *inconclusive* with the seeds each side had. "
        "Times in seconds, memory in MiB"
        f"{f', money in {currency}' if currency else ''}.",
        "",
        f"**Declared endpoints.** Primary, per workload (data set x model) at {where}: time "
        "and money to the target validation perplexity, test perplexity (static and "
        "dynamic) and the GPU memory peak of the framework allocator; their p-values are "
        f"adjusted with {st.METHOD_NAMES[st.PRIMARY_METHOD]}'s method over all primary "
        "tests of one comparison on one processor (family-wise error 5 %). Every other "
        f"figure is secondary, adjusted with {st.METHOD_NAMES[st.SECONDARY_METHOD]} within "
        "its question (false discovery rate 5 %). *Derived* rows (money per epoch is time "
        "per epoch times a price, tokens/s is tokens per epoch over the time of an epoch, "
        "the cost of a result is its time times a price) show their ratio and follow the "
        "test of the figure they derive from: no test twice. mosbench.reporting.statistics "
        "says why Holm here and Benjamini-Hochberg there, and why a t interval on logs.",
        "",
        "**Perplexity** is compared on the mean per-token loss (log perplexity), pooled over "
        "the GPU counts that trained with the same global batch. Beside the test of a "
        "difference, two one-sided tests (TOST, unequal variances) ask whether the frameworks "
        "are equivalent within the model's margin (config "
        "`statistics.equivalence_margin_pct`, default ±1 % of perplexity, twice the 0.5 % by "
        "which two runs of the reference code differ): *equivalent within ±d*, *X lower "
        "than Y by ... [interval]*, or *inconclusive (n = ...)*.",
        "",
        "GPU memory: the headline is the framework allocator's peak of live tensors, summed "
        "over the job's replicas/devices; the driver's figure (NVML: the peak, summed over "
        "the job's GPUs, of what it lists for the job's process and its descendants) adds "
        "CUDA contexts and the memory each allocator keeps cached, so it is secondary. Cost "
        "of a result: every training epoch (finetune included), its validation pass and the "
        "evaluation the result needs (static valid and test, dynamic evaluation), not the "
        "benchmark's own measurements. Time to target, as MLPerf Training's run result and "
        "AlgoPerf's time-to-result: training and validation time until the first validation "
        "at or below the target; the target is the config's `target_valid_ppl`, the "
        "published validation perplexity + 3 %, reachable by a seed that trains as the "
        "reference does; each framework's cell counts only its seeds that reached it, and "
        "says how many of how many (result_cost.md).",
    ]


def page_markdown(comparison, data_rows, inventory=None, currency=None, split_notes=(),
                  excluded=(), primary_gpus=None):
    """The frameworks page in Markdown (:func:`page_blocks`)."""
    return render_markdown(page_blocks(comparison, data_rows, inventory, currency, split_notes,
                                       excluded, primary_gpus))


def page_blocks(comparison, data_rows, inventory=None, currency=None, split_notes=(),
                excluded=(), primary_gpus=None, input_wait=None):
    """The frameworks page as lines and :class:`Table` blocks: the runs not in the figures
    (``excluded``: lines), the data-loading tables (``input_wait``: the training jobs' own,
    :func:`mosbench.reporting.data_loading.input_wait_rows`), one table per cell, compile
    and start-up, ease of use, and the cells whose seeds were split by environment."""
    frameworks = frameworks_of(comparison if len(comparison.columns) else data_rows)
    baseline = frameworks[0]
    header = ["question", "measure", *frameworks, f"vs {baseline}", "ratio [95 % CI]", "p",
              "p adj.", "g", "verdict"]
    lines = ["# Frameworks side by side", "", *intro(baseline, currency, primary_gpus),
             *excluded]
    if not data_rows.empty:
        lines += ["", "## Data loading: streaming against caching", "",
                  "Per data set and device (the input pipeline does not depend on the model): "
                  "tokens/s of one pass over the training windows, streamed from Parquet or "
                  "read from a cache; the first pass, which fills a cache, is in runs.csv. "
                  "Measured once per framework: not tested.", ""]
        for (dataset, device), group in data_rows.groupby(["dataset", "device"], sort=True):
            rows, gone, _ = _markdown_rows(group, frameworks)
            lines += [f"### {dataset} · {device}", ""]
            if not rows:
                lines += ["No framework recorded data-loading figures here: "
                          + "; ".join(sorted({g.split(": ", 1)[1] for g in gone})), ""]
                continue
            lines.append(Table(header[:len(frameworks) + 4],
                               [r[:len(frameworks) + 4] for r in rows], 2))
            lines += ["", *gone, ""] if gone else [""]
    if input_wait is not None and input_wait[1]:
        wait_header, wait_rows, wait_gone = input_wait
        lines += ["", "## Data loading inside training: waiting for input", "",
                  "What the training jobs themselves wait for, whatever the pipelines above "
                  "could do: training loads the splits once and cuts each step's window from "
                  "memory; the input of a step is that cut plus the framework's own path from "
                  "the NumPy window to its tensors on the device (TensorFlow's `tf.constant`, "
                  "PyTorch's `from_numpy(...).to(device)`), timed inside every step of every "
                  "job, the compiled steps' first calls left out. *Data read at start*: the "
                  "train and valid Parquet files at the job's start, after asking the OS to "
                  "drop them from its page cache (`posix_fadvise`), with the share of their "
                  "pages still cached when the read began (0: a cold read). Mean ± std over "
                  "a cell's jobs.", "", Table(wait_header, wait_rows, 4)]
        lines += ["", *wait_gone] if wait_gone else []
    ident_keys = ["dataset", "model", "gpus", "hardware"]
    env_keys = [f"{f}_environment" for f in frameworks]
    # comparisons per cell: more than one where a framework's seeds ran in two environments
    split = (comparison.groupby(ident_keys + env_keys).ngroups
             > comparison.groupby(ident_keys).ngroups) if len(comparison) else False
    for _, group in comparison.groupby(ident_keys + env_keys, sort=True) if len(
            comparison) else []:
        first = group.iloc[0]
        ident = {k: first[k] for k in ident_keys}
        environments = {f: first[f"{f}_environment"] for f in frameworks}
        rows, gone, tones = _markdown_rows(group, frameworks)
        lines += ["", _heading(ident, environments, split), ""]
        lines += [Table(header, rows, 2, tones)] if rows else [
            "No framework recorded any figure of this cell."]
        sentences = _sentences(group)
        if sentences:
            lines += ["", "Perplexity, on the per-token loss:", "", *sentences]
        if gone:
            lines += ["", "Absent in every framework:", "", *gone]
    if len(comparison):
        lines += _start_up(comparison)
    if inventory is not None and not inventory.empty:
        lines += ["", "## Ease of use", "",
                  "From the generated inventory (ease_of_use.md): the components a model or "
                  "the procedure needs that the framework provides, those we wrote, and the "
                  "written code lines (the framework-neutral procedure counts for each). "
                  "docs/ease-of-use.md tells the hurdles.", ""]
        lines.append(Table(["framework", "built in", "written", "lines written"],
                           ease_totals(inventory), 1))
    if split_notes:
        lines += ["", "## Seeds not averaged together", "", *(f"- {n}" for n in split_notes)]
    return lines


def ease_totals(inventory):
    """[[framework, built in, written, lines written]] from the ease-of-use inventory."""
    rows = []
    for framework, group in inventory.groupby("framework", sort=False):
        written = group[group["provided"] == "written"]
        rows.append([framework, len(group) - len(written), len(written),
                     f"{int(pd.to_numeric(written['lines']).sum()):,}"])
    return rows
