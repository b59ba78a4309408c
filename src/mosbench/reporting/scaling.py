"""Multi-GPU scaling: speed-up and parallel efficiency against the smallest GPU count.

Strong scaling comes from the training runs themselves: the global batch is
the preset's at every GPU count, so ideal throughput grows with the number of
GPUs. Weak scaling comes from the optional throughput probes, which keep the
per-GPU batch fixed (the global batch grows with the GPUs). In both, the
speed-up is tokens/s over tokens/s at the smallest GPU count run, and the
efficiency is the speed-up over the ideal one (GPUs over that smallest count).
CPU runs (gpus = 0) are not part of either. Each framework scales against its
own smallest GPU count: a row is one framework's; a curve is also one
environment's (GPU model and library versions), so runs on other GPUs never
enter each other's speed-up.
"""

import pandas as pd

COLUMNS = ["dataset", "model", "framework", "environment", "scaling", "gpus", "n_seeds",
           "tokens_per_s_mean", "tokens_per_s_std", "base_gpus", "speedup", "efficiency"]
CURVE = ["dataset", "model", "framework", "environment"]  # one scaling curve


def scaling_table(runs, probes=None):
    """Rows per (dataset, model, framework, scaling, gpus); ``probes`` holds weak-scaling
    tokens/s."""
    frames = [_scale(runs, "strong")]
    if probes is not None and len(probes):
        frames.append(_scale(probes, "weak"))
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def _scale(table, mode):
    gpu_runs = table[table["gpus"] >= 1]
    if "environment" not in gpu_runs:  # probes carry no provenance
        gpu_runs = gpu_runs.assign(environment="unknown")
    stats = (gpu_runs.groupby([*CURVE, "gpus"])["tokens_per_s"]
             .agg(n_seeds="count", tokens_per_s_mean="mean", tokens_per_s_std="std")
             .reset_index())
    stats.insert(len(CURVE), "scaling", mode)
    base = stats.loc[stats.groupby(CURVE)["gpus"].idxmin(),
                     [*CURVE, "gpus", "tokens_per_s_mean"]]
    base = base.rename(columns={"gpus": "base_gpus", "tokens_per_s_mean": "base_tokens_per_s"})
    stats = stats.merge(base, on=CURVE, how="left")
    stats["speedup"] = stats["tokens_per_s_mean"] / stats["base_tokens_per_s"]
    stats["efficiency"] = stats["speedup"] / (stats["gpus"] / stats["base_gpus"])
    return stats.reindex(columns=COLUMNS)
