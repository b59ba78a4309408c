"""Multi-GPU scaling: speed-up and parallel efficiency against the smallest GPU count.

Strong scaling keeps the preset's global batch at every GPU count, so ideal
throughput grows with the number of GPUs; weak scaling keeps the per-GPU
batch (the global batch grows with the GPUs). Both come from the probes
(bounded timed steps at every GPU count, :mod:`mosbench.measurement.probe`);
a curve without strong probes falls back on its training runs (a study that
trains at several GPU counts). Weak probes run on 2 or more GPUs: at one GPU
the two modes are the same run, so the 1-GPU strong probe is a weak curve's
base. In both, the speed-up is tokens/s over tokens/s at the smallest GPU
count, and the efficiency is the speed-up over the ideal one (GPUs over that
smallest count). CPU jobs (gpus = 0) are not part of either.
Each framework scales against its own smallest GPU count: a row is one
framework's; a curve is also one environment's (GPU model and library
versions), so runs on other GPUs never enter each other's speed-up. ``n``
counts the samples of a row: seeds of training runs, timed blocks of a probe.
"""

import pandas as pd

COLUMNS = ["dataset", "model", "framework", "environment", "scaling", "gpus", "source", "n",
           "tokens_per_s_mean", "tokens_per_s_std", "base_gpus", "speedup", "efficiency"]
CURVE = ["dataset", "model", "framework", "environment"]  # one scaling curve


def scaling_table(runs, probes=None):
    """Rows per (dataset, model, framework, scaling, gpus); ``probes``: the probes' blocks
    (:func:`mosbench.reporting.probes.probe_table`), or None."""
    probes = probes if probes is not None else pd.DataFrame(columns=[*CURVE, "scaling", "gpus",
                                                                     "tokens_per_s"])
    strong_probes = probes[probes["scaling"] == "strong"]
    probed = set(map(tuple, strong_probes[CURVE[:3]].drop_duplicates().to_numpy()))
    from_runs = runs[[tuple(k) not in probed for k in runs[CURVE[:3]].to_numpy()]]
    weak = probes[probes["scaling"] == "weak"]
    # on one GPU weak scaling is strong scaling: the 1-GPU strong probe is the weak curve's base
    base = strong_probes[strong_probes["gpus"] == 1].merge(weak[CURVE].drop_duplicates(),
                                                            on=CURVE)
    weak = pd.concat([base, weak], ignore_index=True) if len(base) else weak
    frames = [_scale(strong_probes, "strong", "probe"), _scale(from_runs, "strong", "training"),
              _scale(weak, "weak", "probe")]
    return pd.concat([f for f in frames if not f.empty] or [frames[0]],
                     ignore_index=True)[COLUMNS]


def _scale(table, mode, source):
    gpu_runs = table[table["gpus"] >= 1]
    if "environment" not in gpu_runs:
        gpu_runs = gpu_runs.assign(environment="unknown")
    stats = (gpu_runs.groupby([*CURVE, "gpus"])["tokens_per_s"]
             .agg(n="count", tokens_per_s_mean="mean", tokens_per_s_std="std")
             .reset_index())
    stats.insert(len(CURVE), "scaling", mode)
    stats.insert(len(CURVE) + 2, "source", source)
    base = stats.loc[stats.groupby(CURVE)["gpus"].idxmin(),
                     [*CURVE, "gpus", "tokens_per_s_mean"]]
    base = base.rename(columns={"gpus": "base_gpus", "tokens_per_s_mean": "base_tokens_per_s"})
    stats = stats.merge(base, on=CURVE, how="left")
    stats["speedup"] = stats["tokens_per_s_mean"] / stats["base_tokens_per_s"]
    stats["efficiency"] = stats["speedup"] / (stats["gpus"] / stats["base_gpus"])
    return stats.reindex(columns=COLUMNS)
