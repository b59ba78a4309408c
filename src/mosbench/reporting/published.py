"""Our perplexities next to the published ones (config key ``reference``)."""

import pandas as pd

# published key (config `reference`) -> our column: the paper reports its best (finetuned) model
METRICS = {"valid_ppl": "best_valid_ppl", "test_ppl": "test_ppl",
           "dynamic_valid_ppl": "dynamic_valid_ppl", "dynamic_test_ppl": "dynamic_test_ppl"}
COLUMNS = ["dataset", "model", "gpus", "framework", "metric", "n_seeds", "ours_mean",
           "ours_std", "published", "difference", "relative_pct", "source"]


def compare_published(summary, reference):
    """One row per (dataset, model, gpus, framework, metric) with both our mean and a
    published value: each framework is compared with the paper on its own.

    ``difference`` is ours minus published (positive: ours is worse);
    ``relative_pct`` is that difference in percent of the published value.
    """
    rows = []
    for row in summary.itertuples(index=False):
        published = (reference or {}).get(row.dataset, {}).get(row.model, {})
        for metric, column in METRICS.items():
            ours = getattr(row, f"{column}_mean", None)
            if metric not in published or ours is None or pd.isna(ours):
                continue
            rows.append({
                "dataset": row.dataset, "model": row.model, "gpus": row.gpus,
                "framework": row.framework, "metric": metric, "n_seeds": row.n_seeds,
                "ours_mean": ours,
                "ours_std": getattr(row, f"{column}_std"), "published": published[metric],
                "difference": ours - published[metric],
                "relative_pct": 100.0 * (ours - published[metric]) / published[metric],
                "source": published["source"],
            })
    return pd.DataFrame(rows, columns=COLUMNS)
