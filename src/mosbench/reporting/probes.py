"""The probes' figures: speed, scaling and memory per GPU count, frameworks side by side.

Each probe record (``measurement/probe.py``) holds the tokens/s of its timed
blocks; a block is one sample here, so a row's spread is the timing noise of
one job, not a spread over seeds. Frameworks are compared with the baseline
(the first framework of the study) at the same (dataset, model, scaling, GPU
count), within one environment (GPU model and library versions).
"""

import pandas as pd

from mosbench.io import read_json
from mosbench.reporting.environments import environment_of
from mosbench.reporting.tables import format_value, markdown_table

KEY = ["dataset", "model", "scaling", "gpus"]
FIGURES = ["tokens_per_s", "step_time_median_s", "allocator_peak_mb", "gpu_memory_peak_mb"]
COLUMNS = ["dataset", "model", "framework", "environment", "scaling", "gpus", "block",
           *FIGURES]


def probe_table(files):
    """One row per timed block of every probe file (None when there are none).

    A record without ``scaling`` is a weak-scaling probe (the only kind there was),
    and one without blocks counts as a single block.
    """
    rows = []
    for path in files:
        record = read_json(path)
        blocks = record.get("tokens_per_s_blocks") or [record["tokens_per_s"]]
        common = {key: record.get(key) for key in ["dataset", "model", "framework", "gpus",
                                                    *FIGURES[1:]]}
        common.update(scaling=record.get("scaling", "weak"), environment=environment_of(record))
        rows += [{**common, "block": i, "tokens_per_s": tps} for i, tps in enumerate(blocks)]
    return pd.DataFrame(rows, columns=COLUMNS) if rows else None


def comparison(probes, frameworks):
    """Per (dataset, model, scaling, gpus, environment) and framework: median tokens/s, its
    range over blocks, memory, and the ratio of tokens/s to the baseline ``frameworks[0]``."""
    if probes is None or probes.empty:
        return pd.DataFrame()
    stats = (probes.groupby([*KEY, "environment", "framework"])
             .agg(blocks=("tokens_per_s", "size"), tokens_per_s=("tokens_per_s", "median"),
                  tokens_per_s_min=("tokens_per_s", "min"),
                  tokens_per_s_max=("tokens_per_s", "max"),
                  step_time_median_s=("step_time_median_s", "first"),
                  allocator_peak_mb=("allocator_peak_mb", "first"),
                  gpu_memory_peak_mb=("gpu_memory_peak_mb", "first"))
             .reset_index())
    present = [f for f in frameworks if f in set(stats["framework"])]
    if not present:
        return stats.assign(baseline=None, speed_ratio=float("nan"))
    baseline = stats[stats["framework"] == present[0]][[*KEY, "tokens_per_s"]]
    baseline = baseline.rename(columns={"tokens_per_s": "baseline_tokens_per_s"})
    # the baseline is matched on the cell, not the environment: probes of one cell run on
    # one node, and the environment column says where each ran
    stats = stats.merge(baseline, on=KEY, how="left")
    stats["baseline"] = present[0]
    stats["speed_ratio"] = stats["tokens_per_s"] / stats["baseline_tokens_per_s"]
    stats["order"] = stats["framework"].map({f: i for i, f in enumerate(frameworks)})
    stats = stats.sort_values([*KEY, "order", "environment"])
    return stats.drop(columns=["baseline_tokens_per_s", "order"]).reset_index(drop=True)


def comparison_markdown(table):
    """The probes' section of the frameworks page."""
    lines = ["## Speed, scaling and memory at each GPU count (probes)", ""]
    if table.empty:
        return lines + ["No probes in this study (run.probes.enabled is false).", ""]
    baseline = table["baseline"].iloc[0]
    lines += [f"Bounded timed probes (real training steps after warm-up, in timed blocks); "
              f"tokens/s is the median over blocks (min-max), speed is relative to "
              f"{baseline} at the same cell. Memory: the framework allocator's peak summed "
              "over the devices; NVML: what the driver reserved for the job's processes. "
              "One job per framework and cell, so the spread is timing noise, not seeds.", ""]
    rows = [[r.dataset, r.model, r.scaling, r.gpus, r.framework, r.environment,
             f"{format_value(r.tokens_per_s, 'int')} ({format_value(r.tokens_per_s_min, 'int')}"
             f"-{format_value(r.tokens_per_s_max, 'int')})",
             format_value(r.speed_ratio, "sig"),
             format_value(r.allocator_peak_mb, "int"), format_value(r.gpu_memory_peak_mb, "int")]
            for r in table.itertuples(index=False)]
    lines += markdown_table(["dataset", "model", "scaling", "gpus", "framework", "environment",
                             "tokens/s", f"speed vs {baseline}", "allocator peak (MiB)",
                             "NVML reserved (MiB)"], rows, text_columns=6)
    return lines + [""]
