"""Runs of the grid that are in no figure: diverged, failed, paused or never run, and why.

Only finished runs (:mod:`mosbench.outcomes`) are averaged, counted and
drawn. A diverged run has its train.json and metrics.json (with the reason),
so the workflow's aggregate runs and lists it. A job that failed after all
its retries has no outputs, and Snakemake cannot run the aggregate without
them: ``mosbench aggregate --partial`` (:func:`grid_files`) aggregates the
runs of the config's grid that have both files and lists each other run with
the last error line of its job's log. Both go into the table "Runs not in the
figures" on the summary and frameworks pages (:func:`markdown`).
"""

import re
from pathlib import Path

import pandas as pd

from mosbench import paths, study
from mosbench.errors import MosbenchError
from mosbench.io import read_json
from mosbench.outcomes import FINISHED, outcome_of
from mosbench.reporting.tables import markdown_table

COLUMNS = ["framework", "dataset", "model", "seed", "gpus", "outcome", "reason"]
# the train and evaluate rules' `log:` (redirect_output appends every attempt to it)
LOG = "logs/{stage}/" + paths.RUN + ".log"
# The last line of a Python traceback ("KeyError: 'best_file'", "mosbench.errors.
# MosbenchError: ..."), a crash report from faulthandler, or the train script's pause.
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?"
                         r"|Fatal Python error:.*|paused: .*)$")
_MAX_REASON = 300  # characters of a log line kept in a table cell


def split_finished(train, metrics, run_key, missing=()):
    """The finished runs' records, and a table of the others (:data:`COLUMNS`).

    ``train`` and ``metrics``: {run key: (path, record)} with the key's names in
    ``run_key``; ``missing``: rows (dicts of :data:`COLUMNS`) for runs without files.
    """
    rows = list(missing)
    for key, (_, record) in train.items():
        if outcome_of(record) != FINISHED:
            rows.append({**dict(zip(run_key, key, strict=True)), "outcome": outcome_of(record),
                         "reason": record.get("reason") or "no reason recorded"})
    excluded = {tuple(row[name] for name in run_key) for row in rows}
    keep = {key: value for key, value in train.items() if key not in excluded}
    kept_metrics = {key: value for key, value in metrics.items() if key not in excluded}
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values(COLUMNS[:5], kind="stable")
    return keep, kept_metrics, table.reset_index(drop=True)


def last_error_line(path):
    """The last line of the log at ``path`` that reports an error, or None."""
    found = None
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            line = line.rstrip()
            if _ERROR_LINE.match(line):
                found = line
    return found


def missing_run(run, root="."):
    """A row of :data:`COLUMNS` for a run of the grid without both its files: why it is missing.

    From its train job's log (no train.json) or its evaluate job's (no
    metrics.json): "failed" with the log's last error line, "paused" (its retries
    ran out while it resumed from checkpoints), "incomplete" with no error line
    (killed, or still running), or "not run" without a log.
    """
    root = Path(root)
    train_json = root / paths.TRAIN.format(**run) / "train.json"
    stage = "evaluate" if train_json.exists() else "train"
    if stage == "evaluate":
        trained = read_json(train_json)
        if outcome_of(trained) != FINISHED:  # diverged, evaluate not run yet: the reason is known
            return {**run, "outcome": outcome_of(trained),
                    "reason": trained.get("reason") or "no reason recorded"}
    log = Path(LOG.format(stage=stage, **run))
    if not (root / log).exists():
        reason = "not run" if stage == "train" else "trained; evaluate not run"
        return {**run, "outcome": "not run", "reason": reason}
    error = last_error_line(root / log)
    if error is None:
        return {**run, "outcome": "incomplete",
                "reason": f"{stage}: no error in {log} (killed, or still running)"}
    if len(error) > _MAX_REASON:
        error = error[:_MAX_REASON - 1] + "…"
    outcome = "paused" if error.startswith("paused: ") else "failed"
    return {**run, "outcome": outcome, "reason": f"{stage}: {error} ({log})"}


def grid_files(runs, root="."):
    """(train.json files, metrics.json files, missing rows) of the grid's ``runs``.

    ``runs``: dicts of framework, dataset, model, seed and gpus
    (:func:`mosbench.study.training_jobs`); a run with both files is
    aggregated, any other gets a row of :func:`missing_run`.
    """
    root = Path(root)
    train_files, metrics_files, missing = [], [], []
    for run in runs:
        train_json = root / paths.TRAIN.format(**run) / "train.json"
        metrics_json = root / paths.EVALUATE.format(**run) / "metrics.json"
        if train_json.exists() and metrics_json.exists():
            train_files.append(train_json)
            metrics_files.append(metrics_json)
        else:
            missing.append(missing_run(run, root))
    return train_files, metrics_files, missing


def partial_inputs(config, root="."):
    """The aggregate's inputs for the runs of ``config``'s grid that have their files.

    What the workflow's aggregate rule would read, less what does not exist:
    ``{train_files, metrics_files, missing, probe_files, data_pipeline_files,
    evaluate_benchmarks}`` (keyword arguments of
    :func:`mosbench.reporting.aggregate.aggregate`, with its first two).
    """
    root = Path(root)
    runs = list(study.training_jobs(config))

    def existing(files):
        return [root / f for f in files if (root / f).exists()]

    train_files, metrics_files, missing = grid_files(runs, root)
    return {
        "train_files": train_files, "metrics_files": metrics_files, "missing": missing,
        "probe_files": existing(f"{paths.PROBE.format(**job)}/probe.json"
                                for job in study.probe_jobs(config)),
        "data_pipeline_files": existing(f"{paths.DATA_PIPELINE.format(**job)}/data_pipeline.json"
                                        for job in study.data_pipeline_jobs(config)),
        # the evaluate rule's `benchmark:`: its wall time, shown beside the cost of a result
        "evaluate_benchmarks": existing(f"results/benchmarks/evaluate/{paths.RUN.format(**run)}"
                                        ".tsv" for run in runs),
    }


def check_some_finished(finished, excluded):
    """Refuse to aggregate when no run finished: there is no figure to report."""
    if finished:
        return
    counts = excluded["outcome"].value_counts()
    raise MosbenchError("no finished run to aggregate: "
                        + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
                        + (f" (first: {_describe(excluded.iloc[0])})" if len(excluded) else ""))


def _describe(row):
    return (f"{row['framework']}/{row['dataset']}/{row['model']}/seed{row['seed']}-"
            f"gpus{row['gpus']}: {row['reason']}")


def markdown(excluded, finished):
    """The section "Runs not in the figures" (no lines when every run finished)."""
    if excluded.empty:
        return []
    total = finished + len(excluded)
    lines = ["", "## Runs not in the figures", "",
             f"{len(excluded)} of the {total} runs are in no table, figure or count (seeds, n) "
             "of the report: they did not finish. A diverged run would diverge again with the "
             "same settings (`snakemake --forcerun` retrains it); a failed, paused or missing "
             "one is run or resumed by the next `snakemake`.", ""]
    rows = [[getattr(row, c) for c in COLUMNS] for row in excluded.itertuples(index=False)]
    return lines + markdown_table(COLUMNS, rows, text_columns=len(COLUMNS))
