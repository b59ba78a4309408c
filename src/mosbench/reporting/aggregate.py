"""Combine the per-run train.json and metrics.json files into tables and a plot.

Outputs (all written atomically into ``out_dir``):

* ``runs.csv``: one row per run, training facts followed by every numeric
  key of metrics.json (new metrics show up here without code changes);
* ``summary.csv`` / ``summary.md``: mean and sample std over seeds per
  (dataset, model, gpus);
* ``valid_ppl.png``: validation perplexity per epoch, mean over seeds with a
  min-max band, one panel per data set.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mosbench.errors import MosbenchError  # noqa: E402
from mosbench.io import atomic_path, read_json  # noqa: E402

RUN_KEY = ["dataset", "model", "seed", "gpus"]
GROUP_KEY = ["dataset", "model", "gpus"]
SORT_KEY = ["dataset", "model", "gpus", "seed"]
TRAIN_COLUMNS = ["run_id", "n_params", "epochs", "best_epoch", "train_time_s",
                 "epoch_time_s", "tokens_per_s"]

# Metric -> (Markdown header, number style). Styles: "ppl" 2 decimals,
# "sig" 3 significant figures, "int" whole number with thousands separators.
SUMMARY_METRICS = {
    "valid_ppl": ("valid ppl", "ppl"),
    "test_ppl": ("test ppl", "ppl"),
    "epoch_time_s": ("epoch time (s)", "sig"),
    "tokens_per_s": ("train tokens/s", "sig"),
    "latency_ms_median": ("median latency (ms)", "sig"),
    "n_params": ("params", "int"),
    "logprob_rank": ("log-prob rank", "int"),
}
RANK_NOTE = ("; log-prob rank is the rank of the model's log-probability matrix over test "
             "contexts, rank bound the most it can be: d+2 for a softmax or MoC head on d "
             "dimensions (the softmax bottleneck), the matrix size for MoS")
# Properties of the group rather than of a run: shown once, as a value, when known.
GROUP_VALUES = {
    "rank_bound": ("rank bound", "int"),
    "optimal_ppl": ("optimal ppl", "ppl"),
}


def aggregate(train_files, metrics_files, out_dir):
    """Write runs.csv, summary.csv, summary.md and valid_ppl.png into ``out_dir``.

    Returns a dict mapping ``"runs"``, ``"summary_csv"``, ``"summary_md"`` and
    ``"valid_ppl_png"`` to the paths written.
    """
    train_files, metrics_files = list(train_files), list(metrics_files)
    if not train_files and not metrics_files:
        raise MosbenchError("no runs to aggregate: got no train.json and no metrics.json files")
    train = _load(train_files, "train.json")
    metrics = _load(metrics_files, "metrics.json")
    _check_pairs(train, metrics)

    runs = build_runs_table(train, metrics)
    summary = summarize(runs)
    curves = _history_table(train)

    out_dir = Path(out_dir)
    paths = {
        "runs": out_dir / "runs.csv",
        "summary_csv": out_dir / "summary.csv",
        "summary_md": out_dir / "summary.md",
        "valid_ppl_png": out_dir / "valid_ppl.png",
    }
    with atomic_path(paths["runs"]) as tmp:
        runs.to_csv(tmp, index=False)
    with atomic_path(paths["summary_csv"]) as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(paths["summary_md"]) as tmp:
        tmp.write_text(summary_markdown(summary), encoding="utf-8")
    with atomic_path(paths["valid_ppl_png"]) as tmp:
        plot_valid_ppl(curves, runs, tmp)
    return paths


def _load(files, kind):
    """Read JSON run files into {(dataset, model, seed, gpus): (path, data)}."""
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
                                f"model, seed and gpus): {', '.join(orphans)}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mean(values):
    numbers = [v for v in values if _is_number(v)]
    return sum(numbers) / len(numbers) if numbers else math.nan


def _metric_columns(metrics):
    """Top-level metrics.json keys whose values are numbers (or null) in every file."""
    columns, rejected = [], set(RUN_KEY) | {"run_id"}
    for _, data in metrics.values():
        for name, value in data.items():
            if value is not None and not _is_number(value):
                rejected.add(name)
            elif name not in columns:
                columns.append(name)
    return [c for c in columns if c not in rejected]


def build_runs_table(train, metrics):
    """One row per run: identity, training facts, then the numeric evaluation metrics."""
    metric_cols = [c for c in _metric_columns(metrics) if c not in TRAIN_COLUMNS]
    rows = []
    for key, (_, tr) in train.items():
        ev = metrics[key][1]
        history = tr.get("history") or []
        row = dict(zip(RUN_KEY, key, strict=True))
        row.update(
            run_id=tr.get("run_id", ev.get("run_id")),
            n_params=tr.get("n_params"),
            epochs=len(history),
            best_epoch=tr.get("best_epoch"),
            train_time_s=tr.get("train_time_s"),
            epoch_time_s=_mean(h.get("epoch_time_s") for h in history),
            tokens_per_s=_mean(h.get("tokens_per_s") for h in history),
        )
        row.update((c, ev.get(c)) for c in metric_cols)
        rows.append(row)
    runs = pd.DataFrame(rows, columns=RUN_KEY + TRAIN_COLUMNS + metric_cols)
    numeric = [c for c in TRAIN_COLUMNS + metric_cols if c not in ("run_id", "epochs")]
    runs[numeric] = runs[numeric].apply(pd.to_numeric, errors="coerce")
    return runs.sort_values(SORT_KEY, kind="stable").reset_index(drop=True)


def summarize(runs):
    """Per (dataset, model, gpus): n_seeds, mean/std of the summary metrics, optimal_ppl."""
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


def _format(value, style):
    if pd.isna(value):
        return "–"
    if style == "ppl":
        return f"{value:.2f}"
    if style == "int":
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    decimals = 2 - math.floor(math.log10(abs(value)))
    return f"{round(value, decimals):,.{max(decimals, 0)}f}"


def summary_markdown(summary):
    """A Markdown table with "mean ± std" cells; all-empty metric columns are left out."""
    metrics = [m for m in SUMMARY_METRICS if summary[f"{m}_mean"].notna().any()]
    values = [v for v in GROUP_VALUES if summary[v].notna().any()]
    show_optimal = "optimal_ppl" in values
    header = ["dataset", "model", "gpus", "seeds"] + [SUMMARY_METRICS[m][0] for m in metrics]
    header += [GROUP_VALUES[v][0] for v in values]
    lines = [
        "# Language-model benchmark summary",
        "",
        "Cells are mean ± sample standard deviation over seeds (– where a single seed ran); "
        "perplexities are on the validation and test sets, epoch time and tokens/s are "
        "per training epoch"
        + (RANK_NOTE if "rank_bound" in values else "")
        + ("; optimal ppl is the best achievable perplexity of the synthetic source." if
           show_optimal else "."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|",
    ]
    for row in summary.itertuples(index=False):
        row = row._asdict()
        cells = [str(row["dataset"]), str(row["model"]), str(row["gpus"]), str(row["n_seeds"])]
        for m in metrics:
            style = SUMMARY_METRICS[m][1]
            cells.append(f"{_format(row[f'{m}_mean'], style)} ± {_format(row[f'{m}_std'], style)}")
        cells += [_format(row[v], GROUP_VALUES[v][1]) for v in values]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _history_table(train):
    """Long table of (dataset, model, gpus, seed, epoch, valid_ppl) from every history."""
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


def plot_valid_ppl(curves, runs, path):
    """Mean validation perplexity per epoch with a min-max band over seeds, per data set."""
    datasets = sorted(curves["dataset"].unique())
    n_panels = max(len(datasets), 1)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.2), squeeze=False)
    try:
        if not datasets:
            axes[0, 0].text(0.5, 0.5, "no validation history", ha="center", va="center")
            axes[0, 0].set_axis_off()
        for ax, dataset in zip(axes[0], datasets, strict=False):  # one panel if none
            subset = curves[curves["dataset"] == dataset]
            stats = subset.groupby(["model", "gpus", "epoch"])["valid_ppl"].agg(
                ["mean", "min", "max"])
            for (model, gpus), group in stats.groupby(level=["model", "gpus"]):
                epochs = group.index.get_level_values("epoch")
                (line,) = ax.plot(epochs, group["mean"], marker="o", markersize=3,
                                  label=f"{model} (gpus={gpus})")
                ax.fill_between(epochs, group["min"], group["max"], color=line.get_color(),
                                alpha=0.2, linewidth=0)
            optimal = runs.loc[runs["dataset"] == dataset, "optimal_ppl"] if (
                "optimal_ppl" in runs) else pd.Series(dtype=float)
            for value in sorted(optimal.dropna().unique()):
                ax.axhline(value, color="black", linestyle="--", linewidth=1,
                           label=f"optimal ({value:.2f})")
            values = pd.concat([subset["valid_ppl"], optimal.dropna()])
            if values.min() > 0 and values.max() / values.min() > 20:
                ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set(title=str(dataset), xlabel="epoch", ylabel="validation perplexity")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle("Validation perplexity per epoch\n(mean over seeds, band: min–max)",
                     fontsize="medium")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
