"""Data-loading figures (streaming versus caching) per framework, data set and device.

The data-pipeline rule measures each (framework, dataset, device) once and
writes ``results/data_pipeline/{framework}/{dataset}/{device}/data_pipeline.json``:
``{"framework", "dataset", "device", <data_* figures>, "absent": {figure: reason},
"provenance": {...}}``; a training job on ``gpus`` GPUs reads the one of its
device, "gpu" when gpus > 0, else "cpu". Results written before that rule
existed carry the same figures in each train.json's measurements; without
data-pipeline files the aggregate takes those instead (averaged over a
framework's jobs of the data set and device).
"""


import pandas as pd

from mosbench.errors import MosbenchError
from mosbench.reporting.record_files import load_keyed
from mosbench.reporting.tables import mean_std_by

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
