"""Our perplexities next to the published ones (config key ``reference``).

Every published number of a (dataset, model) this run trained gets a row per
framework and GPU count, also where we have no perplexity to set beside it:
that row says why (dynamic evaluation off in the preset, say) instead of
vanishing. The config's ``target_valid_ppl`` is a target, not a published
number: it is not compared here (see :mod:`mosbench.reporting.result_cost`).
"""

import pandas as pd

# published key (config `reference`) -> our column: the paper reports its best (finetuned) model
METRICS = {"valid_ppl": "best_valid_ppl", "test_ppl": "test_ppl",
           "dynamic_valid_ppl": "dynamic_valid_ppl", "dynamic_test_ppl": "dynamic_test_ppl"}
COLUMNS = ["dataset", "model", "gpus", "framework", "environment", "metric", "n_seeds",
           "ours_mean", "ours_std", "published", "difference", "relative_pct", "source", "note"]
DYNAMIC_OFF = ("no run of this cell reported it: evaluate computes dynamic-evaluation "
               "perplexities only where the model's preset has a dynamic_eval block")


def compare_published(summary, reference):
    """One row per (dataset, model, gpus, framework, environment, published metric): each
    framework is compared with the paper on its own.

    ``difference`` is ours minus published (positive: ours is worse);
    ``relative_pct`` is that difference in percent of the published value;
    ``note`` says why ours is missing where it is.
    """
    rows = []
    for row in summary.to_dict("records"):
        published = (reference or {}).get(row["dataset"], {}).get(row["model"], {})
        for metric, column in METRICS.items():
            if metric not in published:
                continue
            ours = row.get(f"{column}_mean")
            present = ours is not None and not pd.isna(ours)
            note = "" if present else (DYNAMIC_OFF if metric.startswith("dynamic")
                                       else f"no run of this cell reported {column}")
            rows.append({
                "dataset": row["dataset"], "model": row["model"], "gpus": row["gpus"],
                "framework": row["framework"], "environment": row.get("environment"),
                "metric": metric, "n_seeds": row["n_seeds"],
                "ours_mean": ours if present else None,
                "ours_std": row.get(f"{column}_std") if present else None,
                "published": published[metric],
                "difference": ours - published[metric] if present else None,
                "relative_pct": (100.0 * (ours - published[metric]) / published[metric]
                                 if present else None),
                "source": published["source"], "note": note,
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def unmatched(summary, reference):
    """Published (dataset, model) pairs of the run's data sets that no run trained."""
    trained = set(zip(summary["dataset"], summary["model"], strict=True))
    return sorted((dataset, model) for dataset, models in (reference or {}).items()
                  for model, block in models.items()
                  if (dataset, model) not in trained and set(block) & set(METRICS))
