"""The aggregate's figures (PNG, matplotlib, no display needed).

Every figure sets the frameworks side by side in the same colours throughout
(:data:`COLOURS`: TensorFlow orange, PyTorch blue), and says so in words where
it has nothing to show (no GPU runs, a figure absent on this machine) rather
than leaving an empty frame. Panels are sized to be read at the report's width.
"""

import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mosbench.engines import FRAMEWORKS  # noqa: E402

DPI = 110
COLOURS = {"tensorflow": "#e8710a", "pytorch": "#1a73e8"}  # per framework, in every figure
GPU_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]  # per GPU count, in the cost figure
LINES = ["-", "--", ":", "-."]  # per GPU count, in the perplexity curves
CELL = ["dataset", "model", "gpus"]


def _colour(framework):
    return COLOURS.get(framework, "grey")


def _save(fig, path):
    if fig._suptitle is not None:
        fig._suptitle.set_wrap(True)
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _say(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _where(gpus):
    gpus = int(gpus)
    return "CPU" if gpus == 0 else f"{gpus} GPU{'s' if gpus > 1 else ''}"


def _panels(n, ncols, width=5.5, height=4.0):
    ncols = max(1, min(ncols, n))
    width = max(width, 8.0 / ncols)  # room for the figure's title
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, list(axes.flat)


def _frameworks_of(table):
    return [f for f in FRAMEWORKS if f in set(table["framework"])]


def plot_valid_ppl(curves, runs, path):
    """Validation perplexity per epoch, one panel per data set and model, one line per
    framework (mean over seeds, band: min to max) and GPU count."""
    pairs = sorted(set(zip(curves["dataset"], curves["model"], strict=True)))
    fig, axes = _panels(max(len(pairs), 1), ncols=2)
    if not pairs:
        _say(axes[0], "no validation history")
    counts = sorted(curves["gpus"].unique())
    for ax, (dataset, model) in zip(axes, pairs, strict=False):
        subset = curves[(curves["dataset"] == dataset) & (curves["model"] == model)]
        stats = subset.groupby(["framework", "gpus", "epoch"])["valid_ppl"].agg(
            ["mean", "min", "max"])
        for (framework, gpus), group in stats.groupby(level=["framework", "gpus"]):
            epochs = group.index.get_level_values("epoch")
            ax.plot(epochs, group["mean"], color=_colour(framework),
                    linestyle=LINES[counts.index(gpus) % len(LINES)], marker="o", markersize=3,
                    label=f"{framework}, {_where(gpus)}")
            ax.fill_between(epochs, group["min"], group["max"], color=_colour(framework),
                            alpha=0.15, linewidth=0)
        optimal = runs.loc[runs["dataset"] == dataset, "optimal_ppl"] if (
            "optimal_ppl" in runs) else pd.Series(dtype=float)
        for value in sorted(optimal.dropna().unique()):
            ax.axhline(value, color="black", linestyle="-.", linewidth=1,
                       label=f"best possible ({value:.2f})")
        values = pd.concat([subset["valid_ppl"], optimal.dropna()])
        if values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"{dataset} · {model}", xlabel="epoch", ylabel="validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Validation perplexity per epoch, per framework\n(mean over seeds; band: "
                 "min–max)")
    _save(fig, path)


def plot_scaling(runs, scaling, path):
    """Per data set and model: training throughput against the device count (the CPU
    included; training runs and probes) and, with GPU runs, parallel efficiency; one line
    per framework and source."""
    pairs = sorted(set(zip(runs["dataset"], runs["model"], strict=True)))
    with_gpus = not scaling.empty
    ncols = 2 if with_gpus else min(len(pairs), 2)
    fig, axes = _panels(len(pairs) * (2 if with_gpus else 1), ncols=max(ncols, 1))
    counts = sorted(set(runs["gpus"]) | set(scaling["gpus"]))
    position = {g: i for i, g in enumerate(counts)}  # evenly spaced: CPU, 1, 2, 4, 8 ...
    ticks = ([position[g] for g in counts], ["CPU" if g == 0 else str(g) for g in counts])
    panels = iter(axes)
    for dataset, model in pairs:
        left = next(panels)
        cell = runs[(runs["dataset"] == dataset) & (runs["model"] == model)]
        several = cell.groupby("framework")["environment"].nunique().gt(1).any()
        throughput = cell.groupby(["framework", "environment", "gpus"])["tokens_per_s"].agg(
            ["mean", "std"])
        for (framework, env), group in throughput.groupby(level=["framework", "environment"]):
            x = [position[g] for g in group.index.get_level_values("gpus")]
            left.errorbar(x, group["mean"], yerr=group["std"].fillna(0), marker="o",
                          color=_colour(framework), capsize=3,
                          label=framework + (f" ({env})" if several else ""))
        probed = scaling[(scaling["source"] == "probe") & (scaling["dataset"] == dataset)
                         & (scaling["model"] == model)]
        for (framework, mode), group in probed.groupby(["framework", "scaling"]):
            left.errorbar([position[g] for g in group["gpus"]], group["tokens_per_s_mean"],
                          yerr=group["tokens_per_s_std"].fillna(0),
                          linestyle="--" if mode == "weak" else "-.",
                          marker="s" if mode == "weak" else "^", color=_colour(framework),
                          capsize=3, label=f"{framework}, {mode} scaling (probes)")
        left.set(xlabel="devices", ylabel="training tokens/s",
                 title=f"{dataset} · {model}: throughput")
        left.set_xticks(*ticks)
        left.grid(alpha=0.3)
        left.legend(fontsize="small")
        if not with_gpus:
            continue
        right = next(panels)
        curves = scaling[(scaling["dataset"] == dataset) & (scaling["model"] == model)]
        if curves.empty:
            _say(right, f"{dataset} · {model}: no GPU runs")
            continue
        for (framework, env, mode), group in curves.groupby(
                ["framework", "environment", "scaling"]):
            right.plot([position[g] for g in group["gpus"]], 100 * group["efficiency"],
                       linestyle="-" if mode == "strong" else "--", marker="o",
                       color=_colour(framework),
                       label=f"{framework} ({mode}" + (f", {env})" if several else ")"))
        right.axhline(100, color="black", linestyle=":", linewidth=1, label="ideal")
        right.set(xlabel="GPUs", ylabel="parallel efficiency (%)", ylim=(0, 115),
                  title=f"{dataset} · {model}: speed-up / ideal")
        right.set_xticks(*ticks)
        right.grid(alpha=0.3)
        right.legend(fontsize="small")
    note = "" if with_gpus else " (CPU runs only: no parallel efficiency to show)"
    fig.suptitle("Scaling per framework (strong: fixed global batch; weak: fixed per-GPU "
                 f"batch){note}")
    _save(fig, path)


def _framework_bars(ax, runs, column, ylabel, title, reason):
    """Bars of mean ± std per (dataset, model, gpus), one bar per framework; or the reason."""
    values = runs[runs[column].notna()] if column in runs else runs.iloc[0:0]
    if values.empty:
        _say(ax, f"{title}:\n{reason}")
        return
    stats = values.groupby([*CELL, "framework"])[column].agg(["mean", "std"])
    cells = sorted({key[:3] for key in stats.index})
    present = _frameworks_of(values)
    width = 0.8 / len(present)
    for i, framework in enumerate(present):
        rows = [stats.loc[(*cell, framework)] if (*cell, framework) in stats.index else None
                for cell in cells]
        x = np.arange(len(cells)) + (i - (len(present) - 1) / 2) * width
        means = [r["mean"] if r is not None else np.nan for r in rows]
        errors = [0 if r is None or pd.isna(r["std"]) else r["std"] for r in rows]
        ax.bar(x, means, width, yerr=errors, capsize=3, color=_colour(framework),
               label=framework)
    ax.set_xticks(np.arange(len(cells)),
                  [f"{d}\n{m}\n{_where(g)}" for d, m, g in cells], fontsize="small")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


MEMORY_SERIES = [  # column, title: the allocator's is the like-with-like GPU figure
    ("allocator_peak_mb", "GPU peak, framework allocator, summed over replicas/devices"),
    ("gpu_memory_peak_mb", "GPU reserved by the driver (secondary): NVML, job's processes"),
    ("host_rss_peak_mb", "host peak resident set"),
]


def _width(runs):
    return max(5.0, 1.1 * runs.groupby(CELL).ngroups + 1.5)


def plot_memory(runs, absent, path):
    """Peak memory of a training job per model and framework, a panel per measure a run
    has (device: allocator, driver; host); the title says why the others are absent."""
    present = [(c, t) for c, t in MEMORY_SERIES if c in runs and runs[c].notna().any()]
    fig, axes = plt.subplots(1, max(len(present), 1),
                             figsize=(max(_width(runs), 8.0 / max(len(present), 1))
                                      * max(len(present), 1), 5.0), squeeze=False)
    for ax, (column, title) in zip(axes[0], present, strict=False):
        _framework_bars(ax, runs, column, "MiB", textwrap.fill(title, 40), "")
    if not present:
        _say(axes[0, 0], "no memory figures recorded")
    notes = [f"{title}: absent ({absent.get(column, 'not recorded')})"
             for column, title in MEMORY_SERIES if (column, title) not in present]
    fig.suptitle("Peak memory of a training job per framework (mean ± std over seeds)"
                 + "".join(f"\n{n}" for n in notes), fontsize="medium")
    _save(fig, path)


def plot_latency(runs, path):
    """Next-word latency at batch size 1 (median, p95) and batched evaluation throughput,
    one bar per framework."""
    series = [("latency_ms_median", "ms per next word", "latency, median (batch 1)"),
              ("latency_ms_p95", "ms per next word", "latency, p95 (batch 1)"),
              ("eval_tokens_per_s", "tokens/s", "batched evaluation throughput")]
    fig, axes = plt.subplots(1, len(series), figsize=(_width(runs) * len(series), 4.8),
                             squeeze=False)
    for ax, (column, ylabel, title) in zip(axes[0], series, strict=True):
        _framework_bars(ax, runs, column, ylabel, title, "no evaluation figures")
    fig.suptitle("Prediction speed per framework (mean ± std over seeds)")
    _save(fig, path)


def plot_result_cost(runs, currency, path):
    """Final (test) perplexity against what the run cost, per run: a colour per framework,
    a marker per GPU count, the model written at each group's mean. One panel per data set."""
    money = "total_cost" in runs and runs["total_cost"].notna().any()
    x_column = "total_cost" if money else "total_time_s"
    xlabel = (f"training + evaluation cost ({currency})" if money and currency
              else "training + evaluation cost" if money else "training + evaluation time (s)")
    points = runs.dropna(subset=[c for c in (x_column, "test_ppl") if c in runs])
    if x_column not in runs or "test_ppl" not in runs:
        points = runs.iloc[0:0]
    datasets = sorted(runs["dataset"].unique())
    fig, axes = _panels(max(len(datasets), 1), ncols=2, width=6.5, height=5.0)
    counts = sorted(runs["gpus"].unique())
    for ax, dataset in zip(axes, datasets, strict=False):
        subset = points[points["dataset"] == dataset]
        if subset.empty:
            _say(ax, f"{dataset}: no run has both a test perplexity and a total time")
            continue
        for (framework, gpus), group in subset.groupby(["framework", "gpus"]):
            ax.scatter(group[x_column], group["test_ppl"], color=_colour(framework),
                       marker=GPU_MARKERS[counts.index(gpus) % len(GPU_MARKERS)], s=36,
                       alpha=0.8, edgecolors="black", linewidths=0.4)
        for (model, framework, gpus), group in subset.groupby(["model", "framework", "gpus"]):
            centre = group[x_column].mean(), group["test_ppl"].mean()
            ax.scatter(*centre, s=140, facecolors="none", edgecolors=_colour(framework),
                       marker=GPU_MARKERS[counts.index(gpus) % len(GPU_MARKERS)],
                       linewidths=1.5)
            ax.annotate(model, centre, textcoords="offset points", xytext=(8, 4),
                        fontsize="small")
        ax.set(title=dataset, xlabel=xlabel, ylabel="test perplexity")
        if subset["test_ppl"].max() / subset["test_ppl"].min() > 20:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        handles = ([Line2D([], [], color=_colour(f), marker="o", linestyle="", label=f)
                    for f in _frameworks_of(subset)]
                   + [Line2D([], [], color="grey", marker=GPU_MARKERS[counts.index(g)
                                                                     % len(GPU_MARKERS)],
                             linestyle="", label=_where(g)) for g in sorted(subset["gpus"]
                                                                            .unique())])
        ax.legend(handles=handles, fontsize="small")
    if not datasets:
        _say(axes[0], "no runs")
    fig.suptitle("The cost of a result: test perplexity against what each run cost\n"
                 "(dots: runs; hollow: mean of a model's seeds; lower left is better)")
    _save(fig, path)
