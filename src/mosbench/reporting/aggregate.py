"""Combine the per-run files into the tables and plots researchers read.

Inputs: each run's train.json (training facts and the job's measurements,
with the reason for each figure absent on its machine) and metrics.json
(evaluation). Outputs, all written atomically into ``out_dir`` (names in
:data:`OUTPUTS`):

* ``verdict.*``: the answer on one screen: per workload every framework against
  the baseline, and the geometric mean over workloads
  (:mod:`mosbench.reporting.verdict`);
* ``frameworks.*``: each question, every framework against the baseline, with
  ratios and their intervals, adjusted p-values and equivalence verdicts
  (:mod:`mosbench.reporting.frameworks`, :mod:`mosbench.reporting.statistics`);
* ``result_cost.*``: the cost of a result, per framework and GPU count
  (:mod:`mosbench.reporting.result_cost`);
* ``runs.csv``: one row per run, every figure, the run's provenance;
* ``summary.*``: mean and sample std over seeds per (dataset, model, gpus, framework,
  environment);
* ``scaling.*``: speed-up and efficiency against GPUs, per framework;
* ``published.*``: our perplexities minus the published, per framework;
* ``ease_of_use.*``: built in vs written, from the code, per framework run;

each of these as CSV (data), Markdown and HTML (to read; the report);
* ``valid_ppl.png``, ``scaling.png``, ``memory.png``, ``latency.png``, ``result_cost.png``.

Optional inputs: data-pipeline files (:mod:`mosbench.reporting.data_loading`;
without them the training jobs' own data figures are used), the evaluate
jobs' benchmark files (their wall time is shown beside the cost of a result,
not in it) and
the probes (``probes.csv``, and the probes' section of the frameworks page).
Seeds that ran on different hardware or library versions are never averaged
together (:mod:`mosbench.reporting.environments`).
Only finished runs enter the tables and plots: diverged runs, and with
``missing`` runs without files, are listed with their reason on the summary
and frameworks pages (:mod:`mosbench.reporting.excluded`).

A run is identified by its framework as well as its dataset, model, seed and
GPUs: the same cell run in TensorFlow and in PyTorch is two runs, and every
table and plot keeps the frameworks apart (in the tables, a cell's frameworks
sit next to each other).
"""

import math
from pathlib import Path

import pandas as pd

from mosbench import paths
from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError
from mosbench.io import atomic_path
from mosbench.measurement.cost import cost
from mosbench.reporting import (
    data_loading,
    ease_of_use,
    environments,
    frameworks,
    plots,
    verdict,
)
from mosbench.reporting import excluded as excluded_runs
from mosbench.reporting import probes as probe_report
from mosbench.reporting import result_cost as result_costs
from mosbench.reporting.html import markdown_to_html
from mosbench.reporting.published import compare_published, unmatched
from mosbench.reporting.record_files import describe, load_keyed
from mosbench.reporting.scaling import scaling_table
from mosbench.reporting.tables import format_value, markdown_table, mean_std, mean_std_by

RUN_KEY = ["dataset", "model", "framework", "seed", "gpus"]
# one cell's frameworks side by side; seeds of one cell that ran in different environments
# (processor, library versions) are separate rows
GROUP_KEY = ["dataset", "model", "gpus", "framework", "environment"]
CELL = GROUP_KEY[:4]
SORT_KEY = ["dataset", "model", "gpus", "framework", "environment", "seed"]
# batch_size: the preset's global batch (perplexity is pooled over GPU counts that share it)
TRAIN_COLUMNS = ["run_id", "n_params", "epochs", "best_epoch", "train_time_s", "batch_size"]
TEXT_COLUMNS = ["environment", "hardware", *environments.PROVENANCE_COLUMNS, "absent"]
OUTPUTS = paths.AGGREGATE_OUTPUTS
# pages rendered from their Markdown (verdict and frameworks render their own HTML)
PAGES = ("result_cost", "summary", "scaling", "published", "ease_of_use")

# Summary sections: title -> {metric: (header, number style)}. Every metric is
# given as mean ± std over seeds; columns no run has are left out of the Markdown.
SECTIONS = {
    "Perplexity": {
        "best_valid_ppl": ("valid ppl", "ppl"), "test_ppl": ("test ppl", "ppl"),
        "dynamic_valid_ppl": ("valid ppl, dynamic eval", "ppl"),
        "dynamic_test_ppl": ("test ppl, dynamic eval", "ppl"),
        "logprob_rank": ("log-prob rank", "int"), "n_params": ("params", "int"),
    },
    "Training speed and cost": {
        "epoch_time_s": ("epoch time (s)", "sig"), "tokens_per_s": ("tokens/s", "sig"),
        "cost_per_epoch": ("cost per epoch", "sig"),
        "step_time_median_s": ("step median (s)", "sig"),
        "step_time_p95_s": ("step p95 (s)", "sig"),
        "first_step_s": ("first step (s)", "sig"),
        "compiles": ("compiles (TensorFlow: traces)", "sig"),
        "compile_s": ("compile time (s)", "sig"),
    },
    "Prediction": {
        "latency_ms_median": ("latency median (ms)", "sig"),
        "latency_ms_p95": ("latency p95 (ms)", "sig"),
        "eval_tokens_per_s": ("batched eval tokens/s", "sig"),
    },
    "Hardware": {
        "allocator_peak_mb": ("GPU peak, allocator, sum over devices (MiB)", "sig"),
        "gpu_memory_peak_mb": ("GPU reserved by the driver (NVML, job's processes, MiB)",
                               "sig"),
        "gpu_util_mean_pct": ("GPU util (%)", "pct"),
        "gpu_power_mean_w": ("GPU power (W)", "sig"),
        "host_rss_peak_mb": ("host peak RSS (MiB)", "sig"),
    },
    "Data loading": {
        "data_preprocess_s": ("text -> ids (s)", "sig"),
        "data_parquet_load_s": ("Parquet load (s)", "sig"),
        "data_stream_tokens_per_s": ("streaming tokens/s", "sig"),
        "data_cache_memory_tokens_per_s": ("memory cache tokens/s", "sig"),
        "data_cache_file_tokens_per_s": ("file cache tokens/s", "sig"),
    },
}
SUMMARY_METRICS = {m: spec for section in SECTIONS.values() for m, spec in section.items()}
# Properties of the group rather than of a run: shown once, as a value, when known.
GROUP_VALUES = {"rank_bound": ("rank bound", "int"), "optimal_ppl": ("best possible ppl", "ppl")}


def aggregate(train_files, metrics_files, out_dir, *, prices=None, reference=None,
              probe_files=(), data_pipeline_files=(), evaluate_benchmarks=None, missing=(),
              comparison=None):
    """Write every file of :data:`OUTPUTS` into ``out_dir``; return {name: path}.

    ``prices`` (config key ``cost``) prices every run's epochs; ``reference``
    holds the published perplexities and targets; ``probe_files`` are
    the probes' records (speed, scaling, memory per GPU count);
    ``data_pipeline_files`` the data-pipeline rule's files; ``evaluate_benchmarks``
    the evaluate jobs' Snakemake benchmark files (None: not given; their wall time is
    shown beside the cost of a result, which counts metrics.json's ``result_eval_s``).
    Runs that did not finish (diverged) and ``missing`` (rows of
    :data:`mosbench.reporting.excluded.COLUMNS`: runs without files) are in no figure:
    the summary and frameworks pages list them with their reason.
    ``comparison``: how frameworks are compared (:func:`mosbench.study.comparison_settings`
    of the config: frameworks, baseline, primary_gpus, margins in nats per model); None:
    every engine, the first the baseline, 1 % margins.
    """
    train_files, metrics_files, missing = list(train_files), list(metrics_files), list(missing)
    if not train_files and not metrics_files and not missing:
        raise MosbenchError("no runs to aggregate: got no train.json and no metrics.json files")
    train = _load(train_files, "train.json")
    metrics = _load(metrics_files, "metrics.json")
    _check_pairs(train, metrics)
    train, metrics, excluded = excluded_runs.split_finished(train, metrics, RUN_KEY, missing)
    excluded_runs.check_some_finished(train, excluded)
    excluded_lines = excluded_runs.markdown(excluded, len(train))
    pipelines = data_loading.load_data_pipeline(data_pipeline_files)
    eval_seconds = (None if evaluate_benchmarks is None
                    else result_costs.read_benchmarks(evaluate_benchmarks))

    runs, reasons = build_runs_table(train, metrics, prices, pipelines=pipelines,
                                     reference=reference, eval_seconds=eval_seconds)
    absent = absent_reasons(reasons)
    summary = summarize(runs)
    probes = probe_report.probe_table(probe_files)
    settings = dict(comparison or {})  # every framework against the baseline, everywhere
    settings["frameworks"], settings["baseline"] = frameworks.study_frameworks(
        settings.get("frameworks"), settings.get("baseline"))
    probe_rows = probe_report.comparison(probes, settings["frameworks"])
    scaling = scaling_table(runs, probes)
    published = compare_published(summary, reference)
    currency = (prices or {}).get("currency")
    data = data_loading.data_table(pipelines, runs, list(SECTIONS["Data loading"]))
    splits = environments.split_notes(runs, CELL)
    cost_table = result_costs.cost_summary(runs, GROUP_KEY)

    out = {name: Path(out_dir) / filename for name, filename in OUTPUTS.items()}
    inventory = ease_of_use.write_inventory(out["ease_of_use_csv"], out["ease_of_use_md"],
                                            frameworks=_frameworks(runs))
    comparison = frameworks.comparison_table(runs, reasons, scaling, excluded, **settings)
    data_rows = frameworks.data_comparison(data, settings["frameworks"], settings["baseline"])
    verdicts = verdict.verdict_tables(comparison)
    page = frameworks.page_blocks(comparison.drop(columns=frameworks.VALUES), data_rows,
                                  inventory, currency, splits, excluded=excluded_lines,
                                  primary_gpus=settings.get("primary_gpus"),
                                  input_wait=data_loading.input_wait_rows(
                                      data_loading.input_wait_table(runs), absent))
    page += ["", *probe_report.comparison_markdown(probe_rows)]
    comparison = comparison.drop(columns=frameworks.VALUES)
    texts = {
        "verdict_md": verdict.verdict_markdown(verdicts, settings["baseline"]),
        "verdict_html": verdict.verdict_html(verdicts, settings["baseline"]),
        "frameworks_md": frameworks.render_markdown(page),
        "frameworks_html": frameworks.render_html(page, "frameworks"),
        "result_cost_md": result_cost_markdown(cost_table, absent, currency, splits),
        "summary_md": summary_markdown(summary, absent, currency, data=data,
                                       from_files=bool(pipelines), split_notes=splits,
                                       excluded=excluded_lines),
        "scaling_md": scaling_markdown(scaling),
        "published_md": published_markdown(published, unmatched(summary, reference)),
    }
    tables = {"runs": runs, "summary_csv": summary, "scaling_csv": scaling,
              "published_csv": published, "result_cost_csv": cost_table,
              "frameworks_csv": pd.concat([data_rows, comparison], ignore_index=True),
              "probes_csv": probe_rows}
    for name, table in tables.items():
        with atomic_path(out[name]) as tmp:
            table.to_csv(tmp, index=False)
    for name, text in texts.items():
        with atomic_path(out[name]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    for page in PAGES:
        text = out[f"{page}_md"].read_text(encoding="utf-8")
        with atomic_path(out[f"{page}_html"]) as tmp:
            tmp.write_text(markdown_to_html(text, page.replace("_", " ")), encoding="utf-8")
    figures = {
        "valid_ppl_png": lambda p: plots.plot_valid_ppl(_history_table(train), runs, p),
        "scaling_png": lambda p: plots.plot_scaling(runs, scaling, p),
        "memory_png": lambda p: plots.plot_memory(runs, absent, p),
        "latency_png": lambda p: plots.plot_latency(runs, p),
        "result_cost_png": lambda p: plots.plot_result_cost(runs, currency, p),
    }
    for name, draw in figures.items():
        with atomic_path(out[name]) as tmp:
            draw(tmp)
    return out


def _load(files, kind):
    """Read JSON run files into {(dataset, model, framework, seed, gpus): (path, data)}."""
    return load_keyed(files, kind, RUN_KEY)


def _describe(key):
    return describe(RUN_KEY, key)


def _check_pairs(train, metrics):
    """Every metrics.json needs exactly one train.json for the same run, and vice versa."""
    for have, other, kind, wanted in [(metrics, train, "metrics.json", "train.json"),
                                      (train, metrics, "train.json", "metrics.json")]:
        orphans = sorted(str(have[k][0]) for k in have.keys() - other.keys())
        if orphans:
            raise MosbenchError(f"{kind} files without a matching {wanted} (same dataset, "
                                f"model, framework, seed and gpus): {', '.join(orphans)}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values):
    numbers = [v for v in values if _is_number(v)]
    return sum(numbers) / len(numbers) if numbers else math.nan


def _numeric_columns(records):
    """Keys whose values are numbers (or null) in every record, in first-seen order."""
    columns, rejected = [], set(RUN_KEY) | {"run_id"}
    for record in records:
        for name, value in record.items():
            if value is not None and not _is_number(value):
                rejected.add(name)
            elif name not in columns:
                columns.append(name)
    return [c for c in columns if c not in rejected]


def _measurements(train_data, pipelines):
    """A run's measurements and why any is absent; runs from before measurements existed
    give epoch figures only. With data-pipeline files, the data figures come from the one of
    the run's framework, data set and device, not from train.json."""
    history = train_data.get("history") or []
    measured = {"epoch_time_s": _mean(h.get("epoch_time_s") for h in history),
                "tokens_per_s": _mean(h.get("tokens_per_s") for h in history)}
    measured.update(train_data.get("measurements") or {})
    reasons = dict(train_data.get("absent") or {})
    if pipelines:
        measured = {k: v for k, v in measured.items() if not data_loading.is_data_figure(k)}
        reasons = {k: v for k, v in reasons.items() if not data_loading.is_data_figure(k)}
        figures, data_reasons = data_loading.for_run(
            pipelines, train_data["framework"], train_data["dataset"], train_data["gpus"])
        measured.update(figures)
        if "data_pipeline" in data_reasons:  # no file for this run: every data figure
            data_reasons = dict.fromkeys(SECTIONS["Data loading"], data_reasons["data_pipeline"])
        reasons.update(data_reasons)
    return measured, reasons


def build_runs_table(train, metrics, prices=None, *, pipelines=None, reference=None,
                     eval_seconds=None):
    """One row per run: identity, training facts and measurements, evaluation metrics, the
    cost of the result, provenance and environment, and why any figure is absent.

    Returns (table, {table index: {figure: why absent}}). With ``prices``,
    ``cost_per_epoch`` is recomputed.
    """
    measured, run_reasons = {}, {}
    for key, (_, tr) in train.items():
        measured[key], run_reasons[key] = _measurements(tr, pipelines)
    measure_cols = [c for c in _numeric_columns(measured.values()) if c not in TRAIN_COLUMNS]
    metric_cols = [c for c in _numeric_columns(data for _, data in metrics.values())
                   if c not in TRAIN_COLUMNS + measure_cols]
    if prices and "cost_per_epoch" not in measure_cols:
        measure_cols.append("cost_per_epoch")
    rows, reasons = [], []
    for key, (_, tr) in train.items():
        ev = metrics[key][1]
        row = dict(zip(RUN_KEY, key, strict=True))
        # evaluate's id first: it names the run that replaced a deleted one
        row.update(run_id=ev.get("run_id", tr.get("run_id")), n_params=tr.get("n_params"),
                   epochs=len(tr.get("history") or []), best_epoch=tr.get("best_epoch"),
                   train_time_s=tr.get("train_time_s"),
                   batch_size=(tr.get("hparams") or {}).get("batch_size"))
        row.update((c, measured[key].get(c)) for c in measure_cols)
        if prices and _is_number(row.get("epoch_time_s")):
            row["cost_per_epoch"] = cost(row["epoch_time_s"], row["gpus"], prices)
        row.update((c, ev.get(c)) for c in metric_cols)
        row.update(environment=environments.environment_of(tr),
                   hardware=environments.hardware_of(tr), **environments.provenance_of(tr))
        rows.append(row)
        reasons.append(run_reasons[key])
    columns = (RUN_KEY + TRAIN_COLUMNS + measure_cols + metric_cols
               + [c for c in TEXT_COLUMNS if c != "absent"])
    runs = pd.DataFrame(rows, columns=columns)
    numeric = [c for c in columns if c not in RUN_KEY + ["run_id", "epochs"] + TEXT_COLUMNS]
    runs[numeric] = runs[numeric].apply(pd.to_numeric, errors="coerce")
    costs, cost_reasons = result_costs.cost_of_results(train, runs, prices=prices,
                                                       reference=reference,
                                                       eval_seconds=eval_seconds)
    for (index, figure), reason in cost_reasons.items():
        reasons[index].setdefault(figure, reason)
    runs = pd.concat([runs, costs], axis=1)
    runs["absent"] = ["; ".join(f"{k}: {v}" for k, v in sorted(r.items())) for r in reasons]
    order = (columns[:len(columns) - len(TEXT_COLUMNS) + 1] + list(costs.columns)
             + TEXT_COLUMNS)
    runs = runs[order].sort_values(SORT_KEY, kind="stable")
    reasons = {new: reasons[old] for new, old in enumerate(runs.index)}
    return runs.reset_index(drop=True), reasons


def absent_reasons(reasons):
    """{figure: why it is absent}, over all runs (the first reason met per figure)."""
    found = {}
    for run_reasons in reasons.values():
        for name, reason in run_reasons.items():
            found.setdefault(name, reason)
    return found


def summarize(runs):
    """Per (dataset, model, gpus, framework, environment): n_seeds, mean/std of every summary
    metric, group values."""
    runs = runs.reindex(columns=list(runs.columns)
                        + [c for c in GROUP_VALUES if c not in runs])
    table, grouped = mean_std_by(runs, GROUP_KEY, list(SUMMARY_METRICS), "n_seeds")
    for name in GROUP_VALUES:
        table[name] = grouped[name].first()  # first non-null value
    return table.reset_index()


def _environment_columns(table):
    """(header cells, {environment: tag}) for tables that must show environments: only where
    some cell's seeds were split."""
    if not environments.is_split(table, CELL):
        return [], {}
    return ["env"], environments.environment_tags(table)


def _split_lines(tags, split_notes):
    if not tags:
        return []
    return (["", "Environments (processor; library versions):", ""]
            + environments.environment_legend(tags)
            + ["", *(f"- {note}" for note in split_notes)])


def summary_markdown(summary, absent=None, currency=None, *, data=None, from_files=False,
                     split_notes=(), excluded=()):
    """Markdown: one table per section with "mean ± std" cells, then what is absent and why;
    ``excluded``: the lines of the runs not in the figures, after the introduction."""
    absent = absent or {}
    env_header, tags = _environment_columns(summary)
    lines = [
        "# Language-model benchmark summary",
        "",
        "Cells are mean ± sample standard deviation over seeds (– where a single seed ran "
        "or the figure is absent). Per (dataset, model, gpus, framework); times in seconds, "
        "memory in "
        f"MiB{f', money in {currency}' if currency else ''}. Step times exclude the first "
        "step, which traces and compiles (its time is 'first step'); 'compiles' are the "
        "programs a job's engine compiled, over all its launches, and 'compile time' their "
        "seconds; latency is one next "
        "word at batch size 1. Seeds that ran on different hardware or library versions "
        "are not averaged together.",
        *excluded,
    ]
    ident = ["dataset", "model", "gpus", "framework", *env_header, "seeds"]
    for title, section in SECTIONS.items():
        lines += ["", f"## {title}", ""]
        if title == "Data loading" and data is not None and from_files:
            lines += _data_section(data)
            continue
        metrics = [m for m in section if summary[f"{m}_mean"].notna().any()]
        values = [v for v in GROUP_VALUES if title == "Perplexity" and summary[v].notna().any()]
        gone = [m for m in section if m not in metrics and m in absent]
        if metrics:
            header = ident + [section[m][0] for m in metrics] + [GROUP_VALUES[v][0] for v in values]
            rows = [[r["dataset"], r["model"], r["gpus"], r["framework"]]
                    + [tags[r["environment"]] for _ in env_header] + [r["n_seeds"]]
                    + [mean_std(r[f"{m}_mean"], r[f"{m}_std"], section[m][1]) for m in metrics]
                    + [format_value(r[v], GROUP_VALUES[v][1]) for v in values]
                    for r in (row._asdict() for row in summary.itertuples(index=False))]
            lines += markdown_table(header, rows, text_columns=4 + len(env_header))
        else:
            lines.append("No run recorded these figures.")
        if gone:
            lines.append("")
            lines += [f"- *{section[m][0]}*: absent: {absent[m]}" for m in gone]
        if values:
            lines += ["", "Log-prob rank: the rank of the model's log-probability matrix over "
                      "test contexts; rank bound: the most it can be (d+2 for a softmax or MoC "
                      "head on d dimensions: the softmax bottleneck). Best possible ppl: the "
                      "synthetic source's entropy rate, as a perplexity."]
    lines += _split_lines(tags, split_notes)
    return "\n".join(lines) + "\n"


def _data_section(data):
    """The data-loading section from the data-pipeline files: one row per measurement."""
    section = SECTIONS["Data loading"]
    metrics = [m for m in section if data[f"{m}_mean"].notna().any()]
    lines = ["Measured once per framework, data set and device by the data-pipeline rule "
             "(the same for every model and seed).", ""]
    if not metrics:
        return lines + ["No data-pipeline file recorded these figures."]
    rows = [[r["dataset"], r["device"], r["framework"]]
            + [format_value(r[f"{m}_mean"], section[m][1]) for m in metrics]
            for _, r in data.iterrows()]
    return lines + markdown_table(["dataset", "device", "framework"]
                                  + [section[m][0] for m in metrics], rows, text_columns=3)


def result_cost_markdown(table, absent, currency=None, split_notes=()):
    """The cost of a result per (dataset, model, gpus, framework): totals and time to target,
    with the convention and the target rule (:mod:`mosbench.reporting.result_cost`)."""
    money = f" ({currency})" if currency else ""
    env_header, tags = _environment_columns(table)
    lines = [
        "# The cost of a result",
        "",
        "What a run costs, mean ± std over seeds: its training time (every epoch, finetune "
        "included, over every launch of the job), the validation pass after each epoch, and "
        "the evaluation the result needs (the static valid and test passes; with dynamic "
        "evaluation, its gradient statistics and passes), priced with the config's `cost` "
        "prices (a job on N GPUs pays N GPU-hours per hour). Not in it: start-up and "
        "compilation (the frameworks page's *Compile and start-up*), and the benchmark's own "
        "measurements in the evaluate job (the timed valid pass, the latency loop, the rank), "
        "which are in the evaluate job's wall time, shown apart.",
        "",
        "*Time to target*, as MLPerf Training's run result and AlgoPerf's time-to-result: "
        "training and validation time up to the end of the first epoch whose validation "
        "perplexity is at or below the target. AlgoPerf pauses its clock for its harness's "
        "evaluations but counts those a submission makes; the validation after each epoch "
        "is the training procedure's own (NT-ASGD, the finetune's stop, the best weights), "
        "so it counts, as MLPerf counts its evaluations. *Reached*: the seeds that got "
        "there, of those that ran; the time is the mean over those seeds. The target is "
        "the config's `reference.<dataset>.<model>.target_valid_ppl`, declared by the rule "
        f"*published validation perplexity + {result_costs.TARGET_MARGIN_PCT:g} %*, rounded "
        "up (a published value without a declared target gets the same rule): reachable by "
        "a seed that trains as the reference does, not the paper's single best run "
        "(mosbench.reporting.result_cost says why 3 %).",
        "",
    ]
    if table.empty:
        return "\n".join(lines + ["No runs."]) + "\n"
    rows = [[r["dataset"], r["model"], r["gpus"], r["framework"]]
            + [tags[r["environment"]] for _ in env_header]
            + [r["n_seeds"], mean_std(r["train_time_s_mean"], r["train_time_s_std"], "sig"),
               mean_std(r["valid_time_s_mean"], r["valid_time_s_std"], "sig"),
               mean_std(r["eval_time_s_mean"], r["eval_time_s_std"], "sig"),
               mean_std(r["total_time_s_mean"], r["total_time_s_std"], "sig"),
               mean_std(r["total_cost_mean"], r["total_cost_std"], "sig"),
               format_value(r["target_valid_ppl"], "ppl"),
               f"{r['n_reached']} of {r['n_seeds']}",
               mean_std(r["time_to_target_s_mean"], r["time_to_target_s_std"], "sig"),
               mean_std(r["cost_to_target_mean"], r["cost_to_target_std"], "sig"),
               mean_std(r["eval_job_wall_s_mean"], r["eval_job_wall_s_std"], "sig")]
            for _, r in table.iterrows()]
    lines += markdown_table(["dataset", "model", "gpus", "framework", *env_header, "seeds",
                             "training (s)", "validation (s)", "evaluation (s)",
                             "total (s)", f"cost{money}", "target valid ppl", "reached",
                             "time to target (s)", f"cost to target{money}",
                             "evaluate job wall time (s), not in the cost"],
                            rows, text_columns=4 + len(env_header))
    notes = [f"- *{label}*: absent: {absent[figure]}" for figure, label in (
        ("valid_time_s", "validation time"), ("eval_time_s", "evaluation time"),
        ("eval_job_wall_s", "evaluate job wall time"), ("total_cost", "cost"),
        ("target_valid_ppl", "target"), ("time_to_target_s", "time to target"))
        if figure in absent]
    if notes:
        lines += ["", "Where a figure is missing (the first reason met):", "", *notes]
    lines += _split_lines(tags, split_notes)
    return "\n".join(lines) + "\n"


def scaling_markdown(scaling):
    lines = ["# Multi-GPU scaling", "",
             "Speed-up: training tokens/s over tokens/s at the smallest GPU count, in the "
             "same framework; efficiency: speed-up over the ideal (GPUs / smallest GPU count). "
             "Strong scaling keeps the global batch fixed, weak scaling the per-GPU batch. "
             "From: the probes (bounded timed steps at each GPU count; n = timed blocks) or, "
             "for a curve without strong probes, the training runs (n = seeds).", ""]
    if scaling.empty:
        lines.append("No GPU runs in this grid (gpus = 0 only): nothing to scale.")
        return "\n".join(lines) + "\n"
    rows = [[r.dataset, r.model, r.framework, r.scaling, r.source, r.gpus, r.n,
             mean_std(r.tokens_per_s_mean, r.tokens_per_s_std, "sig"),
             format_value(r.speedup, "sig"), format_value(100 * r.efficiency, "pct")]
            for r in scaling.itertuples(index=False)]
    lines += markdown_table(["dataset", "model", "framework", "scaling", "from", "gpus", "n",
                             "tokens/s", "speed-up", "efficiency (%)"], rows, text_columns=5)
    return "\n".join(lines) + "\n"


def published_markdown(published, unmatched=()):
    """Ours against the published perplexities; rows whose ours is missing say why."""
    lines = ["# Our perplexities against the published ones", "",
             "Difference: ours (mean over seeds, per framework) minus published; positive means "
             "ours is worse. Published numbers come from the config's `reference` block "
             "(its `target_valid_ppl` entries are targets, not published numbers: see "
             "result_cost.md).", ""]
    if published.empty:
        lines.append("No published numbers for the data sets and models of this run.")
    else:
        rows = [[r.dataset, r.model, r.gpus, r.framework, r.metric, r.n_seeds,
                 mean_std(r.ours_mean, r.ours_std, "ppl") if not r.note else f"– ({r.note})",
                 format_value(r.published, "ppl"),
                 "–" if r.note else f"{r.difference:+.2f}",
                 "–" if r.note else f"{r.relative_pct:+.1f}", r.source]
                for r in published.itertuples(index=False)]
        lines += markdown_table(["dataset", "model", "gpus", "framework", "metric", "seeds",
                                 "ours", "published", "difference", "relative (%)", "source"],
                                rows, text_columns=5)
    if unmatched:
        lines += ["", "Published numbers of this run's data sets for models it did not train: "
                  + ", ".join(f"{d}/{m}" for d, m in unmatched) + "."]
    return "\n".join(lines) + "\n"


def _history_table(train):
    """Long table of (dataset, model, framework, seed, gpus, epoch, valid_ppl) from every
    history."""
    rows = [
        {**dict(zip(RUN_KEY, key, strict=True)),
         "epoch": h.get("epoch", i + 1), "valid_ppl": h.get("valid_ppl")}
        for key, (_, tr) in train.items()
        for i, h in enumerate(tr.get("history") or [])
    ]
    curves = pd.DataFrame(rows, columns=RUN_KEY + ["epoch", "valid_ppl"])
    curves[["epoch", "valid_ppl"]] = curves[["epoch", "valid_ppl"]].apply(
        pd.to_numeric, errors="coerce")
    return curves.dropna(subset=["epoch", "valid_ppl"])


def _frameworks(runs):
    """The frameworks of ``runs``, in mosbench's order (FRAMEWORKS)."""
    return [f for f in FRAMEWORKS if f in set(runs["framework"])]
