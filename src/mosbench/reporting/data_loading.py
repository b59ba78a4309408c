"""Data-loading figures (streaming versus caching) per framework, data set and device.

The data-pipeline rule measures each (framework, dataset, device) once and
writes ``results/data_pipeline/{framework}/{dataset}/{device}/data_pipeline.json``:
``{"framework", "dataset", "device", <data_* figures>, "absent": {figure: reason},
"provenance": {...}}``; a training job on ``gpus`` GPUs reads the one of its
device, "gpu" when gpus > 0, else "cpu". Results written before that rule
existed carry the same figures in each train.json's measurements; without
data-pipeline files the aggregate takes those instead (averaged over a
framework's jobs of the data set and device).

Those pipelines are not what training runs: a training job loads the splits
once and cuts each step's window from the in-memory streams. What its input
costs it is measured inside every training job (train.json's measurements,
:class:`mosbench.measurement.timing.InputWait`): the share of each step spent
on its input (the window's cut, then the framework's own path from the NumPy
window to its tensors on the device), and the first read of the data at the
job's start from a cold page cache where the OS allows
(:mod:`mosbench.measurement.page_cache`). :func:`input_wait_table` gathers
them per cell, beside the streaming-versus-caching table.
"""


import pandas as pd

from mosbench.errors import MosbenchError
from mosbench.reporting.record_files import load_keyed
from mosbench.reporting.tables import format_value, mean_std, mean_std_by

DEVICES = ("cpu", "gpu")
IDENTITY = ("framework", "dataset", "device")
KEY = list(IDENTITY)


def device_of(gpus):
    """The hardware kind a job on ``gpus`` GPUs measures its data pipeline on."""
    return "gpu" if gpus > 0 else "cpu"


def is_data_figure(name):
    return name.startswith("data_")


def load_data_pipeline(files):
    """{(framework, dataset, device): file contents}, each file checked."""
    found = load_keyed(files, "data-pipeline", IDENTITY)
    for path, data in found.values():
        if data["device"] not in DEVICES:
            raise MosbenchError(f"data-pipeline file {path}: device '{data['device']}'; "
                                f"allowed: {list(DEVICES)}")
    return {key: data for key, (_, data) in found.items()}


def figures_of(data):
    """The numeric data_* figures of a data-pipeline file."""
    return {k: v for k, v in data.items() if is_data_figure(k)
            and (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)))}


def for_run(pipelines, framework, dataset, gpus):
    """(figures, {figure: why absent}) of the data-pipeline file a run joins."""
    key = (framework, dataset, device_of(gpus))
    if key not in pipelines:
        return {}, {"data_pipeline": f"no data-pipeline measurement for {'/'.join(key)}"}
    data = pipelines[key]
    return figures_of(data), dict(data.get("absent") or {})


def data_table(pipelines, runs, figures):
    """One row per (framework, dataset, device): n (measurements), mean and std of ``figures``.

    From the data-pipeline files when there are any (one measurement each; a
    (framework, dataset, device) the runs need but no file has gets a row whose
    ``<figure>_absent`` says so), else from the runs table's data_* columns (the
    training jobs' own measurements).
    """
    if pipelines:
        wanted = {(f, d, device_of(g)) for f, d, g in zip(
            runs["framework"], runs["dataset"], runs["gpus"], strict=True)}
        rows = []
        for key in sorted(set(pipelines) | wanted):
            data = pipelines.get(key, {})
            missing = "" if data else f"no data-pipeline measurement for {'/'.join(key)}"
            reasons = data.get("absent") or {}
            rows.append({**dict(zip(KEY, key, strict=True)), "n": int(bool(data)),
                         **{f"{f}_mean": figures_of(data).get(f) for f in figures},
                         **{f"{f}_std": float("nan") for f in figures},
                         **{f"{f}_absent": missing or reasons.get(f, "not measured")
                            for f in figures}})
        table = pd.DataFrame(rows, columns=KEY + ["n"] + [f"{f}_{s}" for f in figures
                                                          for s in ("mean", "std", "absent")])
        numbers = [c for c in table if c.endswith(("_mean", "_std"))]
        table[numbers] = table[numbers].apply(pd.to_numeric)
        return table
    table, _ = mean_std_by(runs.assign(device=runs["gpus"].map(device_of)), KEY, figures, "n")
    return table.reset_index()


# Inside the training jobs (train.json's measurements): the input's share of the steps
WAIT_FIGURES = ["input_wait_fraction", "input_wait_s", "input_load_s", "input_load_cached_pct"]
WAIT_CELL = ["dataset", "model", "gpus", "framework"]


def input_wait_table(runs):
    """Per (dataset, model, gpus, framework): jobs, mean and std of the input-wait figures
    (NaN where no job recorded them)."""
    frame = runs.reindex(columns=list(runs.columns) + [f for f in WAIT_FIGURES if f not in runs])
    table, _ = mean_std_by(frame, WAIT_CELL, WAIT_FIGURES, "jobs")
    return table.reset_index()


def input_wait_rows(table, reasons=None):
    """(header, rows, lines): the input-wait table as text; ``lines`` say why a cell has
    none (``reasons``: {figure: why absent}, the first met)."""
    header = ["dataset", "model", "gpus", "framework", "jobs",
              "waiting for input (% of step time)", "input per job (s)",
              "data read at start (s)", "of it cached before (%)"]
    rows = []
    for _, r in table.iterrows():
        rows.append([r["dataset"], r["model"], r["gpus"], r["framework"], r["jobs"],
                     mean_std(100 * r["input_wait_fraction_mean"],
                              100 * r["input_wait_fraction_std"], "sig"),
                     mean_std(r["input_wait_s_mean"], r["input_wait_s_std"], "sig"),
                     mean_std(r["input_load_s_mean"], r["input_load_s_std"], "sig"),
                     format_value(r["input_load_cached_pct_mean"], "pct")])
    lines = [f"- *{figure}*: absent: {why}" for figure, why in (reasons or {}).items()
             if figure in WAIT_FIGURES and table[f"{figure}_mean"].isna().any()]
    return header, rows, lines
