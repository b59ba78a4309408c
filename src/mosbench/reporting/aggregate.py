"""Combine the per-run files into the tables and plots researchers read.

Inputs: each run's train.json (training facts and the job's measurements,
with the reason for each figure absent on its machine) and metrics.json
(evaluation). Outputs, all written atomically into ``out_dir`` (names in
:data:`OUTPUTS`):

* ``runs.csv``: one row per run, every figure;
* ``summary.*``: mean and sample std over seeds per (dataset, model, gpus, framework);
* ``scaling.*``: speed-up and efficiency against GPUs, per framework;
* ``published.*``: our perplexities minus the published, per framework;
* ``ease_of_use.*``: built in vs written, from the code, per framework run;

each of these four as CSV (data), Markdown and HTML (to read; the report);
* ``valid_ppl.png``, ``scaling.png``, ``memory.png``, ``latency.png``.

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
from mosbench.io import atomic_path, read_json
from mosbench.measurement.cost import cost
from mosbench.reporting import ease_of_use, plots
from mosbench.reporting.html import markdown_to_html
from mosbench.reporting.published import compare_published
from mosbench.reporting.scaling import scaling_table
from mosbench.reporting.tables import format_value, markdown_table, mean_std

RUN_KEY = ["dataset", "model", "framework", "seed", "gpus"]
GROUP_KEY = ["dataset", "model", "gpus", "framework"]  # one cell's frameworks side by side
SORT_KEY = ["dataset", "model", "gpus", "framework", "seed"]
TRAIN_COLUMNS = ["run_id", "n_params", "epochs", "best_epoch", "train_time_s"]
OUTPUTS = paths.AGGREGATE_OUTPUTS

# Summary sections: title -> {metric: (header, number style)}. Every metric is
# given as mean ± std over seeds; columns no run has are left out of the Markdown.
SECTIONS = {
    "Perplexity": {
        "best_valid_ppl": ("valid ppl", "ppl"), "test_ppl": ("test ppl", "ppl"),
        "dynamic_test_ppl": ("test ppl, dynamic eval", "ppl"),
        "logprob_rank": ("log-prob rank", "int"), "n_params": ("params", "int"),
    },
    "Training speed and cost": {
        "epoch_time_s": ("epoch time (s)", "sig"), "tokens_per_s": ("tokens/s", "sig"),
        "cost_per_epoch": ("cost per epoch", "sig"),
        "step_time_median_s": ("step median (s)", "sig"),
        "step_time_p95_s": ("step p95 (s)", "sig"),
        "first_step_s": ("first step (s)", "sig"),
    },
    "Prediction": {
        "latency_ms_median": ("latency median (ms)", "sig"),
        "latency_ms_p95": ("latency p95 (ms)", "sig"),
        "eval_tokens_per_s": ("batched eval tokens/s", "sig"),
    },
    "Hardware": {
        "allocator_peak_mb": ("device peak, allocator (MiB)", "sig"),
        "gpu_memory_peak_mb": ("device peak, NVML (MiB)", "sig"),
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
              probe_files=()):
    """Write every file of :data:`OUTPUTS` into ``out_dir``; return {name: path}.

    ``prices`` (config key ``cost``) prices every run's epochs; ``reference``
    holds the published perplexities; ``probe_files`` are weak-scaling probes.
    """
    train_files, metrics_files = list(train_files), list(metrics_files)
    if not train_files and not metrics_files:
        raise MosbenchError("no runs to aggregate: got no train.json and no metrics.json files")
    train = _load(train_files, "train.json")
    metrics = _load(metrics_files, "metrics.json")
    _check_pairs(train, metrics)

    runs = build_runs_table(train, metrics, prices)
    absent = absent_reasons(train)
    summary = summarize(runs)
    probes = _probe_table(probe_files)
    scaling = scaling_table(runs, probes)
    published = compare_published(summary, reference)
    currency = (prices or {}).get("currency")

    out = {name: Path(out_dir) / filename for name, filename in OUTPUTS.items()}
    texts = {
        "summary_md": summary_markdown(summary, absent, currency),
        "scaling_md": scaling_markdown(scaling),
        "published_md": published_markdown(published),
    }
    tables = {"runs": runs, "summary_csv": summary, "scaling_csv": scaling,
              "published_csv": published}
    for name, table in tables.items():
        with atomic_path(out[name]) as tmp:
            table.to_csv(tmp, index=False)
    for name, text in texts.items():
        with atomic_path(out[name]) as tmp:
            tmp.write_text(text, encoding="utf-8")
    ease_of_use.write_inventory(out["ease_of_use_csv"], out["ease_of_use_md"],
                                frameworks=_frameworks(runs))
    for page in ("summary", "scaling", "published", "ease_of_use"):
        text = out[f"{page}_md"].read_text(encoding="utf-8")
        with atomic_path(out[f"{page}_html"]) as tmp:
            tmp.write_text(markdown_to_html(text, page.replace("_", " ")), encoding="utf-8")
    figures = {
        "valid_ppl_png": lambda p: plots.plot_valid_ppl(_history_table(train), runs, p),
        "scaling_png": lambda p: plots.plot_scaling(runs, scaling, p),
        "memory_png": lambda p: plots.plot_memory(runs, absent, p),
        "latency_png": lambda p: plots.plot_latency(runs, p),
    }
    for name, draw in figures.items():
        with atomic_path(out[name]) as tmp:
            draw(tmp)
    return out


def _load(files, kind):
    """Read JSON run files into {(dataset, model, framework, seed, gpus): (path, data)}."""
    runs = {}
    for path in map(Path, files):
        try:
            data = read_json(path)
        except (OSError, ValueError) as exc:
            raise MosbenchError(f"cannot read {kind} file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise MosbenchError(f"{kind} file {path} should hold a JSON object")
        missing = [k for k in RUN_KEY if k not in data]
        if missing:
            raise MosbenchError(f"{kind} file {path} lacks {', '.join(missing)}; "
                                f"expected the keys {', '.join(RUN_KEY)}")
        if data["framework"] not in FRAMEWORKS:
            raise MosbenchError(f"{kind} file {path}: unknown framework "
                                f"'{data['framework']}'; allowed: {list(FRAMEWORKS)}")
        key = tuple(data[k] for k in RUN_KEY)
        if key in runs:
            raise MosbenchError(f"duplicate {kind} files for run {_describe(key)}: "
                                f"{runs[key][0]} and {path}")
        runs[key] = (path, data)
    return runs


def _describe(key):
    return ", ".join(f"{name}={value}" for name, value in zip(RUN_KEY, key, strict=True))


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


def _measurements(train_data):
    """A run's measurements; runs from before they existed give epoch figures only."""
    history = train_data.get("history") or []
    measured = {"epoch_time_s": _mean(h.get("epoch_time_s") for h in history),
                "tokens_per_s": _mean(h.get("tokens_per_s") for h in history)}
    measured.update(train_data.get("measurements") or {})
    return measured


def build_runs_table(train, metrics, prices=None):
    """One row per run: identity, training facts and measurements, evaluation metrics,
    and why any figure is absent. With ``prices``, ``cost_per_epoch`` is recomputed."""
    measured = {key: _measurements(tr) for key, (_, tr) in train.items()}
    measure_cols = [c for c in _numeric_columns(measured.values()) if c not in TRAIN_COLUMNS]
    metric_cols = [c for c in _numeric_columns(data for _, data in metrics.values())
                   if c not in TRAIN_COLUMNS + measure_cols]
    if prices and "cost_per_epoch" not in measure_cols:
        measure_cols.append("cost_per_epoch")
    rows = []
    for key, (_, tr) in train.items():
        ev = metrics[key][1]
        row = dict(zip(RUN_KEY, key, strict=True))
        row.update(run_id=tr.get("run_id", ev.get("run_id")), n_params=tr.get("n_params"),
                   epochs=len(tr.get("history") or []), best_epoch=tr.get("best_epoch"),
                   train_time_s=tr.get("train_time_s"))
        row.update((c, measured[key].get(c)) for c in measure_cols)
        if prices and _is_number(row.get("epoch_time_s")):
            row["cost_per_epoch"] = cost(row["epoch_time_s"], row["gpus"], prices)
        row.update((c, ev.get(c)) for c in metric_cols)
        row["absent"] = "; ".join(f"{k}: {v}" for k, v in sorted((tr.get("absent") or {}).items()))
        rows.append(row)
    columns = RUN_KEY + TRAIN_COLUMNS + measure_cols + metric_cols + ["absent"]
    runs = pd.DataFrame(rows, columns=columns)
    numeric = [c for c in columns if c not in RUN_KEY + ["run_id", "epochs", "absent"]]
    runs[numeric] = runs[numeric].apply(pd.to_numeric, errors="coerce")
    return runs.sort_values(SORT_KEY, kind="stable").reset_index(drop=True)


def absent_reasons(train):
    """{figure: why it is absent}, over all runs (the first reason met per figure)."""
    reasons = {}
    for _, tr in train.values():
        for name, reason in (tr.get("absent") or {}).items():
            reasons.setdefault(name, reason)
    return reasons


def summarize(runs):
    """Per (dataset, model, gpus, framework): n_seeds, mean/std of every summary metric,
    group values."""
    wanted = list(SUMMARY_METRICS) + list(GROUP_VALUES)
    runs = runs.reindex(columns=list(runs.columns) + [c for c in wanted if c not in runs])
    grouped = runs.groupby(GROUP_KEY, sort=True)
    table = grouped.size().rename("n_seeds").to_frame()
    for name in SUMMARY_METRICS:
        table[f"{name}_mean"] = grouped[name].mean()
        table[f"{name}_std"] = grouped[name].std(ddof=1)
    for name in GROUP_VALUES:
        table[name] = grouped[name].first()  # first non-null value
    return table.reset_index()


def summary_markdown(summary, absent=None, currency=None):
    """Markdown: one table per section with "mean ± std" cells, then what is absent and why."""
    absent = absent or {}
    lines = [
        "# Language-model benchmark summary",
        "",
        "Cells are mean ± sample standard deviation over seeds (– where a single seed ran "
        "or the figure is absent). Per (dataset, model, gpus, framework); times in seconds, "
        "memory in "
        f"MiB{f', money in {currency}' if currency else ''}. Step times exclude the first "
        "step, which traces and compiles (its time is 'first step'); latency is one next "
        "word at batch size 1.",
    ]
    ident = ["dataset", "model", "gpus", "framework", "seeds"]
    for title, section in SECTIONS.items():
        metrics = [m for m in section if summary[f"{m}_mean"].notna().any()]
        values = [v for v in GROUP_VALUES if title == "Perplexity" and summary[v].notna().any()]
        gone = [m for m in section if m not in metrics and m in absent]
        lines += ["", f"## {title}", ""]
        if metrics:
            header = ident + [section[m][0] for m in metrics] + [GROUP_VALUES[v][0] for v in values]
            rows = [[r["dataset"], r["model"], r["gpus"], r["framework"], r["n_seeds"]]
                    + [mean_std(r[f"{m}_mean"], r[f"{m}_std"], section[m][1]) for m in metrics]
                    + [format_value(r[v], GROUP_VALUES[v][1]) for v in values]
                    for r in (row._asdict() for row in summary.itertuples(index=False))]
            lines += markdown_table(header, rows, text_columns=4)
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
    return "\n".join(lines) + "\n"


def scaling_markdown(scaling):
    lines = ["# Multi-GPU scaling", "",
             "Speed-up: training tokens/s over tokens/s at the smallest GPU count, in the "
             "same framework; efficiency: speed-up over the ideal (GPUs / smallest GPU count). "
             "Strong scaling keeps the global batch fixed, weak scaling the per-GPU batch.", ""]
    if scaling.empty:
        lines.append("No GPU runs in this grid (gpus = 0 only): nothing to scale.")
        return "\n".join(lines) + "\n"
    rows = [[r.dataset, r.model, r.framework, r.scaling, r.gpus, r.n_seeds,
             mean_std(r.tokens_per_s_mean, r.tokens_per_s_std, "sig"),
             format_value(r.speedup, "sig"), format_value(100 * r.efficiency, "pct")]
            for r in scaling.itertuples(index=False)]
    lines += markdown_table(["dataset", "model", "framework", "scaling", "gpus", "seeds",
                             "tokens/s", "speed-up", "efficiency (%)"], rows, text_columns=4)
    return "\n".join(lines) + "\n"


def published_markdown(published):
    lines = ["# Our perplexities against the published ones", "",
             "Difference: ours (mean over seeds, per framework) minus published; positive means "
             "ours is worse. Published numbers come from the config's `reference` block.", ""]
    if published.empty:
        return "\n".join(lines + ["No published numbers for the data sets and models of this "
                                  "run."]) + "\n"
    rows = [[r.dataset, r.model, r.gpus, r.framework, r.metric, r.n_seeds,
             mean_std(r.ours_mean, r.ours_std, "ppl"), format_value(r.published, "ppl"),
             f"{r.difference:+.2f}", f"{r.relative_pct:+.1f}", r.source]
            for r in published.itertuples(index=False)]
    lines += markdown_table(["dataset", "model", "gpus", "framework", "metric", "seeds", "ours",
                             "published", "difference", "relative (%)", "source"], rows,
                            text_columns=5)
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


def _probe_table(files):
    """Weak-scaling probe results (dataset, model, framework, seed, gpus, tokens_per_s)."""
    rows = [read_json(path) for path in files]
    return pd.DataFrame(rows, columns=RUN_KEY + ["tokens_per_s"]) if rows else None
