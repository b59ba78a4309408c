"""The aggregate's figures (PNG, matplotlib, no display needed).

Every figure says so in words when it has nothing to show (no GPU runs, a
figure absent on this machine), rather than leaving an empty frame. The
frameworks are kept apart everywhere: a curve's marker (and in the perplexity
plot its line style) says its framework, its colour the model; bars are labelled
with their framework.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110
MARKERS = {"tensorflow": "o", "pytorch": "s"}  # per framework
LINES = {"tensorflow": "-", "pytorch": "--"}


def _marker(framework):
    return MARKERS.get(framework, "^")


def _colours(keys):
    """One colour of the default cycle per distinct key, in order of first appearance."""
    colours = {}
    for key in keys:
        colours.setdefault(key, f"C{len(colours) % 10}")
    return colours


def _save(fig, path):
    try:
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        plt.close(fig)


def _say(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _labels(table):
    return [f"{r.dataset}\n{r.model}\ngpus={r.gpus}\n{r.framework}"
            for r in table.itertuples(index=False)]


def plot_valid_ppl(curves, runs, path):
    """Mean validation perplexity per epoch with a min-max band over seeds, per data set;
    a colour per model and GPU count, a line style per framework."""
    datasets = sorted(curves["dataset"].unique())
    n_panels = max(len(datasets), 1)
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 4.5), squeeze=False)
    if not datasets:
        _say(axes[0, 0], "no validation history")
    for ax, dataset in zip(axes[0], datasets, strict=False):
        subset = curves[curves["dataset"] == dataset]
        stats = subset.groupby(["model", "gpus", "framework", "epoch"])["valid_ppl"].agg(
            ["mean", "min", "max"])
        curves_of = list(stats.groupby(level=["model", "gpus", "framework"]))
        colours = _colours((model, gpus) for (model, gpus, _), _ in curves_of)
        for (model, gpus, framework), group in curves_of:
            epochs = group.index.get_level_values("epoch")
            colour = colours[(model, gpus)]
            ax.plot(epochs, group["mean"], color=colour, linestyle=LINES.get(framework, ":"),
                    marker=_marker(framework), markersize=3,
                    label=f"{model} {framework} (gpus={gpus})")
            ax.fill_between(epochs, group["min"], group["max"], color=colour, alpha=0.15,
                            linewidth=0)
        optimal = runs.loc[runs["dataset"] == dataset, "optimal_ppl"] if (
            "optimal_ppl" in runs) else pd.Series(dtype=float)
        for value in sorted(optimal.dropna().unique()):
            ax.axhline(value, color="black", linestyle="-.", linewidth=1,
                       label=f"best possible ({value:.2f})")
        values = pd.concat([subset["valid_ppl"], optimal.dropna()])
        if values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=str(dataset), xlabel="epoch", ylabel="validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Validation perplexity per epoch (mean over seeds, band: min–max)")
    _save(fig, path)


def plot_scaling(runs, scaling, path):
    """Training throughput per device count (the CPU included) and parallel efficiency; a
    colour per data set and model, a marker per framework, dashed for weak scaling."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    counts = sorted(set(runs["gpus"]) | set(scaling["gpus"]))
    position = {g: i for i, g in enumerate(counts)}  # evenly spaced: CPU, 1, 2, 4, 8 ...
    ticks = ([position[g] for g in counts], ["CPU" if g == 0 else str(g) for g in counts])
    colours = _colours(zip(pd.concat([runs["dataset"], scaling["dataset"]]),
                           pd.concat([runs["model"], scaling["model"]]), strict=True))
    curve = ["dataset", "model", "framework"]
    throughput = runs.groupby([*curve, "gpus"])["tokens_per_s"].agg(["mean", "std"])
    for (dataset, model, framework), group in throughput.groupby(level=curve):
        x = [position[g] for g in group.index.get_level_values("gpus")]
        left.errorbar(x, group["mean"], yerr=group["std"].fillna(0), linestyle="-",
                      marker=_marker(framework), color=colours[(dataset, model)], capsize=3,
                      label=f"{dataset} {model} {framework}")
    weak = scaling[scaling["scaling"] == "weak"]
    for (dataset, model, framework), group in weak.groupby(curve):
        left.errorbar([position[g] for g in group["gpus"]], group["tokens_per_s_mean"],
                      yerr=group["tokens_per_s_std"].fillna(0), linestyle="--",
                      marker=_marker(framework), color=colours[(dataset, model)], capsize=3,
                      label=f"{dataset} {model} {framework} (weak)")
    left.set(xlabel="GPUs", ylabel="training tokens/s",
             title="Training throughput (mean ± std over seeds)")
    left.set_xticks(*ticks)
    if scaling.empty:
        _say(right, "no GPU runs in this grid (CPU only):\nno parallel efficiency to show")
    else:
        for (dataset, model, framework, mode), group in scaling.groupby([*curve, "scaling"]):
            right.plot([position[g] for g in group["gpus"]], group["efficiency"],
                       linestyle="-" if mode == "strong" else "--", marker=_marker(framework),
                       color=colours[(dataset, model)],
                       label=f"{dataset} {model} {framework} ({mode})")
        right.axhline(1.0, color="black", linestyle=":", linewidth=1, label="ideal")
        right.set(xlabel="GPUs", ylabel="parallel efficiency", ylim=(0, 1.15),
                  title="Efficiency: speed-up / ideal speed-up")
        right.set_xticks(*ticks)
    for ax in (left, right):
        if ax.axison:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle("Scaling (strong: fixed global batch; weak: fixed per-GPU batch)")
    _save(fig, path)


MEMORY_SERIES = [  # column, legend label
    ("allocator_peak_mb", "device, framework allocator peak"),
    ("gpu_memory_peak_mb", "device, as the driver sees the process (NVML)"),
    ("host_rss_peak_mb", "host, peak resident set"),
]


def _grouped_bars(ax, table, series, ylabel):
    """Bars of mean ± std per (dataset, model, gpus, framework) group for each present
    series."""
    present = [(c, label) for c, label in series
               if f"{c}_mean" in table and table[f"{c}_mean"].notna().any()]
    x = np.arange(len(table))
    width = 0.8 / max(len(present), 1)
    for i, (column, label) in enumerate(present):
        ax.bar(x + (i - (len(present) - 1) / 2) * width, table[f"{column}_mean"], width,
               yerr=table[f"{column}_std"].fillna(0), capsize=3, label=label)
    ax.set_xticks(x, _labels(table), fontsize="small")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if present:
        ax.legend(fontsize="small")


def _means(runs, columns):
    columns = [c for c in columns if c in runs]
    grouped = runs.groupby(["dataset", "model", "gpus", "framework"])[columns]
    table = grouped.mean().add_suffix("_mean").join(grouped.std().add_suffix("_std"))
    return table.reset_index()


def plot_memory(runs, absent, path):
    """Peak memory per model and framework: device (allocator and driver) and host, with
    absent reasons."""
    columns = [c for c, _ in MEMORY_SERIES]
    table = _means(runs, columns)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(table) + 2), 5))
    if table.empty or not any(c in runs and runs[c].notna().any() for c in columns):
        _say(ax, "no memory figures recorded")
    else:
        _grouped_bars(ax, table, MEMORY_SERIES, "peak memory (MiB)")
    notes = [f"{label}: absent ({absent[c]})" for c, label in MEMORY_SERIES if c in absent]
    ax.set_title("Peak memory of a training job (mean ± std over seeds)"
                 + "".join(f"\n{n}" for n in notes), fontsize="medium")
    _save(fig, path)


def plot_latency(runs, path):
    """Next-word latency at batch size 1 (median and p95) and batched scoring throughput."""
    table = _means(runs, ["latency_ms_median", "latency_ms_p95", "eval_tokens_per_s"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10, 2.4 * len(table) + 4), 5))
    if table.empty:
        _say(left, "no evaluation figures")
        _say(right, "no evaluation figures")
    else:
        _grouped_bars(left, table, [("latency_ms_median", "median"), ("latency_ms_p95", "p95")],
                      "milliseconds per next word")
        left.set_title("Prediction latency, batch size 1")
        _grouped_bars(right, table, [("eval_tokens_per_s", "batched evaluation")],
                      "tokens/s")
        right.set_title("Evaluation throughput (eval batch size)")
    fig.suptitle("Prediction speed (mean ± std over seeds)")
    _save(fig, path)
