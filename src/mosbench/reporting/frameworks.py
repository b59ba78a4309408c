"""The frameworks page: each question of the benchmark, framework against framework.

Per (dataset, model, gpus) and processor, one row per measure: each
framework's mean ± sample std over seeds and its number of seeds, the ratio
of the first framework's mean to the second's, which is better, and a
two-sided Welch t-test over seeds (:mod:`mosbench.reporting.statistics`).
Perplexities also get the difference with its 95 % interval and a sentence.
Data loading is a property of the framework's input pipeline on a data set
and device, not of a model: it has its own table. A cell a framework could
not fill says why: not run, one seed, or the figure's absent reason. Runs that
did not finish are in no cell; the page lists them first.
"""

import itertools
from dataclasses import dataclass

import pandas as pd

from mosbench.engines import FRAMEWORKS
from mosbench.reporting.statistics import ALPHA, not_tested_reason, verdict, welch_test
from mosbench.reporting.tables import format_value, markdown_table

# (question, column, label, which is better, number style)
QUESTIONS = [
    ("Time per epoch", "epoch_time_s", "epoch time (s)", "lower", "sig"),
    ("Time per epoch", "tokens_per_s", "training tokens/s", "higher", "sig"),
    ("Money per epoch", "cost_per_epoch", "cost per epoch", "lower", "sig"),
    ("Cost of a result", "total_time_s", "training + evaluation time (s)", "lower", "sig"),
    ("Cost of a result", "total_cost", "training + evaluation cost", "lower", "sig"),
    ("Cost of a result", "time_to_target_s", "training time to the target valid ppl (s)",
     "lower", "sig"),
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
DATA_QUESTIONS = [
    ("data_stream_tokens_per_s", "streaming from Parquet, tokens/s", "higher", "sig"),
    ("data_cache_memory_tokens_per_s", "cached in memory, tokens/s", "higher", "sig"),
    ("data_cache_file_tokens_per_s", "cached in a file, tokens/s", "higher", "sig"),
    ("memory_cache_speedup", "memory cache over streaming (×)", None, "sig"),
    ("data_parquet_load_s", "load the Parquet splits (s)", "lower", "sig"),
    ("data_preprocess_s", "text -> ids without Parquet (s)", "lower", "sig"),
]
COLUMNS = (["dataset", "model", "gpus", "device", "hardware", "question", "measure", "figure",
            "better_is"]
           + [f"{f}_{s}" for f in FRAMEWORKS for s in ("n", "mean", "std", "reason", "environment")]
           + ["ratio", "better", "difference", "ci_low", "ci_high", "t", "df", "p_value",
              "verdict", "note"])
A, B = FRAMEWORKS[0], FRAMEWORKS[1]


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

    def cell(self, style):
        if not self.values:
            return self.reason
        if self.n == 1:
            return f"{format_value(self.mean, style)} (1 seed: no std)"
        return f"{format_value(self.mean, style)} ± {format_value(self.std, style)} ({self.n})"


def _first_reason(reasons, figure, default):
    for run_reasons in reasons:
        if figure in run_reasons:
            return f"absent: {run_reasons[figure]}"
    return default


def _compare(samples, better_is, exact=False):
    """ratio, better, Welch result (or None) and its reason when None, for A against B."""
    a, b = samples[A], samples[B]
    if not (a.values and b.values):
        missing = [f for f in (A, B) if not samples[f].values]
        return float("nan"), "–", None, f"no value from {' and '.join(missing)}"
    ratio = a.mean / b.mean if b.mean else float("nan")
    result = None if exact else welch_test(a.values, b.values)
    reason = "" if result or exact else not_tested_reason(a.n, b.n, A, B).removeprefix(
        "no test: ")
    if better_is is None or a.mean == b.mean:
        return ratio, "–" if better_is is None else "equal", result, reason
    a_wins = (a.mean < b.mean) == (better_is == "lower")
    winner = A if a_wins else B
    if result is None:
        return ratio, f"{winner} (untested)" if not exact else winner, None, reason
    if result.p_value < ALPHA:
        return ratio, winner, result, reason
    return ratio, f"{winner}, not significant", result, reason


def _row(ident, question, figure, label, better_is, samples, environments, exact=False):
    ratio, better, result, reason = _compare(samples, better_is, exact)
    row = {**ident, "question": question, "measure": label, "figure": figure,
           "device": ident.get("device") or ("gpu" if ident["gpus"] else "cpu"),
           "better_is": better_is or "", "ratio": ratio, "better": better,
           "note": reason if result is None else ""}
    for f in FRAMEWORKS:
        s = samples[f]
        row.update({f"{f}_n": s.n, f"{f}_mean": s.mean, f"{f}_std": s.std,
                    f"{f}_reason": s.reason, f"{f}_environment": environments.get(f) or ""})
    if result is not None:
        row.update(difference=result.difference, ci_low=result.ci_low, ci_high=result.ci_high,
                   t=result.t, df=result.df, p_value=result.p_value,
                   verdict=verdict(result, A, B, "perplexity" if question == "Perplexity"
                                   else label))
    return row


def _cells(runs):
    """(ident, {framework: environment or None}, {framework: its runs}) per comparison."""
    keys = ["dataset", "model", "gpus", "hardware"]
    for key, cell in runs.groupby(keys, sort=True):
        options = [[(f, env, group) for env, group in cell[cell["framework"] == f].groupby(
            "environment", sort=True)] or [(f, None, None)] for f in FRAMEWORKS]
        for combination in itertools.product(*options):
            yield (dict(zip(keys, key, strict=True)),
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


def comparison_table(runs, reasons, scaling, excluded=None):
    """The long table of every (cell, measure): COLUMNS. ``reasons``: {runs index: {figure:
    reason}}; ``excluded``: the runs that did not finish (:mod:`mosbench.reporting.excluded`)."""
    rows = []
    for ident, environments, groups in _cells(runs):
        for question, figure, label, better_is, _ in QUESTIONS:
            samples = {}
            for f in FRAMEWORKS:
                group = groups[f]
                if group is None:
                    samples[f] = Sample.of([], _not_finished(excluded, ident, f))
                elif figure == "efficiency":
                    samples[f] = _efficiency(scaling, ident, f, environments[f])
                else:
                    default = ("not computed: evaluate runs dynamic evaluation only where "
                               "the preset has dynamic_eval" if figure.startswith("dynamic_")
                               else "not recorded")
                    values = group[figure] if figure in group else []
                    samples[f] = Sample.of(values, _first_reason(
                        [reasons.get(i, {}) for i in group.index], figure, default))
            rows.append(_row(ident, question, figure, label, better_is, samples, environments,
                             exact=figure == "efficiency"))
    return pd.DataFrame(rows, columns=COLUMNS)


def data_comparison(data):
    """Rows of the data-loading table per (dataset, device): COLUMNS (no model or gpus)."""
    rows = []
    data = data.copy()
    if {"data_cache_memory_tokens_per_s_mean", "data_stream_tokens_per_s_mean"} <= set(data):
        data["memory_cache_speedup_mean"] = (data["data_cache_memory_tokens_per_s_mean"]
                                             / data["data_stream_tokens_per_s_mean"])
        data["memory_cache_speedup_std"] = float("nan")
        if "data_stream_tokens_per_s_absent" in data:
            data["memory_cache_speedup_absent"] = data["data_stream_tokens_per_s_absent"]
    for (dataset, device), cell in data.groupby(["dataset", "device"], sort=True):
        ident = {"dataset": dataset, "model": "", "gpus": None, "device": device,
                 "hardware": ""}
        for figure, label, better_is, _ in DATA_QUESTIONS:
            samples = {}
            for f in FRAMEWORKS:
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
            rows.append(_row(ident, "Data loading", figure, label, better_is, samples, {},
                             exact=True))
    return pd.DataFrame(rows, columns=COLUMNS)


def _styles():
    return ({figure: style for _, figure, _, _, style in QUESTIONS}
            | {figure: style for figure, _, _, style in DATA_QUESTIONS})


def _framework_cell(row, framework, style):
    n, mean, std = row[f"{framework}_n"], row[f"{framework}_mean"], row[f"{framework}_std"]
    if not n or pd.isna(mean):
        return None
    if row["figure"] == "efficiency":  # of the mean throughputs: one figure
        return f"{format_value(mean, style)} ({n} seed{'s' if n > 1 else ''})"
    if row["question"] == "Data loading" and n == 1:  # measured once
        return format_value(mean, style)
    if n == 1 or pd.isna(std):
        return f"{format_value(mean, style)}" + (" (1 seed: no std)" if n == 1 else f" ({n})")
    return f"{format_value(mean, style)} ± {format_value(std, style)} ({n})"


def _p_cell(row):
    if pd.notna(row["p_value"]):
        return f"{row['p_value']:.3g}"
    return f"– ({row['note']})" if row["note"] else "–"


def _markdown_rows(table):
    """Table rows for the Markdown, and lines for measures no framework has."""
    styles, rows, gone = _styles(), [], []
    for _, row in table.iterrows():
        style = styles[row["figure"]]
        cells = {f: _framework_cell(row, f, style) for f in FRAMEWORKS}
        if not any(cells.values()):
            why = {row[f"{f}_reason"] for f in FRAMEWORKS}
            gone.append(f"- *{row['measure']}*: " + ("; ".join(sorted(why))))
            continue
        rows.append([row["question"], row["measure"]]
                    + [cells[f] or row[f"{f}_reason"] for f in FRAMEWORKS]
                    + [format_value(row["ratio"], "sig"), row["better"], _p_cell(row)])
    return rows, gone


def _sentences(table):
    lines = []
    for _, row in table[table["question"] == "Perplexity"].iterrows():
        if pd.isna(row[f"{A}_mean"]) and pd.isna(row[f"{B}_mean"]):
            continue
        if pd.isna(row["p_value"]):
            lines.append(f"- {row['measure']}: no Welch test: {row['note']}.")
            continue
        lines.append(f"- {row['measure']}: {A} − {B} = {row['difference']:+.3g} "
                     f"(95 % interval {row['ci_low']:+.3g} to {row['ci_high']:+.3g}; "
                     f"Welch t = {row['t']:.3g}, df = {row['df']:.3g}): {row['verdict']}.")
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


def page_markdown(comparison, data_rows, inventory=None, currency=None, split_notes=(),
                  excluded=()):
    """The frameworks page: the runs not in the figures (``excluded``: lines), the
    data-loading table, one table per cell, ease of use, and the cells whose seeds were split
    by environment."""
    header = ["question", "measure", *FRAMEWORKS, f"ratio {A} / {B}", "better",
              f"p (Welch, {A} vs {B})"]
    lines = [
        "# Frameworks side by side",
        "",
        f"Each question of the benchmark, {A} against {B}. Cells: mean ± sample std over "
        "seeds (number of seeds); the ratio is of the means; *better* names the framework "
        f"with the better mean, and adds *not significant* when a two-sided Welch t-test "
        f"over seeds gives p ≥ {ALPHA:g} (*untested* with fewer than 2 seeds a side). "
        "Times in seconds, memory in MiB"
        f"{f', money in {currency}' if currency else ''}. GPU memory: the headline is the "
        "framework allocator's peak of live tensors, summed over the job's replicas/devices; "
        "the driver's figure (NVML: the peak, summed over the job's GPUs, of what it lists "
        "for the job's process and its descendants) adds CUDA contexts and the memory each "
        "allocator keeps cached, so it is secondary. Cost of a result: every training "
        "epoch (finetune included) plus the evaluate job; the target is the config's "
        "`target_valid_ppl`, else the published validation perplexity (see result_cost.md).",
        *excluded,
    ]
    if not data_rows.empty:
        lines += ["", "## Data loading: streaming against caching", "",
                  "Per data set and device (the input pipeline does not depend on the model): "
                  "tokens/s of one pass over the training windows, streamed from Parquet or "
                  "read from a cache; the first pass, which fills a cache, is in runs.csv.", ""]
        for (dataset, device), group in data_rows.groupby(["dataset", "device"], sort=True):
            rows, gone = _markdown_rows(group)
            lines += [f"### {dataset} · {device}", ""]
            if not rows:
                lines += ["No framework recorded data-loading figures here: "
                          + "; ".join(sorted({g.split(": ", 1)[1] for g in gone})), ""]
                continue
            lines += markdown_table(["question", "measure", *header[2:]], rows,
                                    text_columns=2)
            lines += ["", *gone, ""] if gone else [""]
    ident_keys = ["dataset", "model", "gpus", "hardware"]
    # comparisons per cell: more than one where a framework's seeds ran in two environments
    per_cell = comparison.groupby(ident_keys + [f"{f}_environment" for f in FRAMEWORKS]).ngroups
    split = per_cell > comparison.groupby(ident_keys).ngroups if len(comparison) else False
    cells = comparison.groupby(["dataset", "model", "gpus", "hardware"]
                               + [f"{f}_environment" for f in FRAMEWORKS], sort=True)
    for _, group in cells:
        first = group.iloc[0]
        ident = {k: first[k] for k in ("dataset", "model", "gpus", "hardware")}
        environments = {f: first[f"{f}_environment"] for f in FRAMEWORKS}
        rows, gone = _markdown_rows(group)
        lines += ["", _heading(ident, environments, split), ""]
        lines += markdown_table(header, rows, text_columns=2) if rows else [
            "No framework recorded any figure of this cell."]
        sentences = _sentences(group)
        if sentences:
            lines += ["", "Perplexity, Welch t-test over seeds:", "", *sentences]
        if gone:
            lines += ["", "Absent in every framework:", "", *gone]
    if inventory is not None and not inventory.empty:
        lines += ["", "## Ease of use", "",
                  "From the generated inventory (ease_of_use.md): the components a model or "
                  "the procedure needs that the framework provides, those we wrote, and the "
                  "written code lines (the framework-neutral procedure counts for each). "
                  "docs/ease-of-use.md tells the hurdles.", ""]
        lines += markdown_table(["framework", "built in", "written", "lines written"],
                                ease_totals(inventory), text_columns=1)
    if split_notes:
        lines += ["", "## Seeds not averaged together", "", *(f"- {n}" for n in split_notes)]
    return "\n".join(lines) + "\n"


def ease_totals(inventory):
    """[[framework, built in, written, lines written]] from the ease-of-use inventory."""
    rows = []
    for framework, group in inventory.groupby("framework", sort=False):
        written = group[group["provided"] == "written"]
        rows.append([framework, len(group) - len(written), len(written),
                     f"{int(pd.to_numeric(written['lines']).sum()):,}"])
    return rows
