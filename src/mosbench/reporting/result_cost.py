"""The cost of a result: what a run took, in time and money, and what reaching a target took.

Per run:

* ``train_time_s``: every epoch's training time, finetune epochs included,
  summed over every launch of the job (train.json); the validation passes
  after each epoch and the job's start-up are not in it;
* ``eval_time_s``: the evaluate job's wall time (its Snakemake benchmark
  file), when the aggregate is given those files;
* ``total_time_s`` and ``total_cost``: the two together, priced with the
  config's ``cost`` prices (a job on N GPUs pays N GPU-hours per hour);
* ``target_valid_ppl``: the validation perplexity to reach: the config's
  ``reference.<dataset>.<model>.target_valid_ppl`` where set, else the
  published ``valid_ppl`` of the same block;
* ``epochs_to_target``, ``time_to_target_s``, ``cost_to_target``: the first
  epoch whose validation perplexity is at or below the target, and the
  training time and money spent up to the end of it.

Each figure a run lacks gets its reason in :func:`cost_of_results`' second
return value, as the other figures do.
"""

import re
from pathlib import Path

import pandas as pd

from mosbench import paths
from mosbench.errors import MosbenchError
from mosbench.measurement.cost import cost
from mosbench.reporting.tables import mean_std_by

RUN_COLUMNS = ["eval_time_s", "total_time_s", "train_cost", "eval_cost", "total_cost",
               "target_valid_ppl", "epochs_to_target", "time_to_target_s", "cost_to_target"]
TARGET_SOURCES = ("target_valid_ppl", "valid_ppl")  # the config's, then the published one
# a benchmark file's path ends in paths.RUN + ".tsv"
_BENCHMARK = re.compile(
    re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(paths.RUN)) + r"\.tsv$")


def read_benchmarks(files):
    """{(dataset, model, framework, seed, gpus): wall seconds} from Snakemake benchmark files.

    A file's run is read off its path (``...{framework}/{dataset}/{model}/seed{seed}-
    gpus{gpus}.tsv``, the layout of the evaluate rule's ``benchmark:``); repeated
    measurements in one file are averaged.
    """
    seconds = {}
    for path in map(Path, files):
        match = _BENCHMARK.search(path.as_posix())
        if not match:
            raise MosbenchError(f"benchmark file {path}: its path should end in "
                                f"{paths.RUN}.tsv, to say which run it timed")
        try:
            table = pd.read_csv(path, sep="\t")
            wall = float(table["s"].mean())
        except (OSError, ValueError, KeyError) as exc:
            raise MosbenchError(f"cannot read benchmark file {path} (a Snakemake benchmark "
                                f"table with an 's' column): {exc}") from exc
        run = match.groupdict()
        seconds[(run["dataset"], run["model"], run["framework"], int(run["seed"]),
                 int(run["gpus"]))] = wall
    return seconds


def target_of(reference, dataset, model):
    """(target validation perplexity, where it comes from), or (None, why there is none)."""
    block = (reference or {}).get(dataset, {}).get(model, {})
    for key in TARGET_SOURCES:
        if key in block:
            origin = "config target" if key == "target_valid_ppl" else "published"
            return float(block[key]), f"{origin}: {block.get('source', 'reference block')}"
    return None, (f"no target validation perplexity: the config's reference.{dataset}.{model} "
                  "has neither target_valid_ppl nor a published valid_ppl")


def _first_reach(history, target):
    """(epochs, training seconds) up to the first epoch at or below ``target``; None if never."""
    elapsed = 0.0
    for i, epoch in enumerate(history):
        elapsed += epoch.get("epoch_time_s") or 0.0
        ppl = epoch.get("valid_ppl")
        if ppl is not None and ppl <= target:
            return epoch.get("epoch", i + 1), elapsed
    return None


def cost_of_results(train, runs, *, prices=None, reference=None, eval_seconds=None):
    """Per-run cost figures (a frame indexed like ``runs``) and {(run, figure): reason}.

    ``train``: {run key: (path, train.json data)}; ``runs``: the runs table;
    ``eval_seconds``: :func:`read_benchmarks` of the evaluate jobs (None: not given).
    """
    rows, absent = [], {}
    for index, run in runs.iterrows():
        key = (run["dataset"], run["model"], run["framework"], run["seed"], run["gpus"])
        history = train[key][1].get("history") or []
        figures = dict.fromkeys(RUN_COLUMNS)
        reasons = {}
        train_s = run["train_time_s"]
        if eval_seconds is None:
            reasons["eval_time_s"] = ("the aggregate was not given the evaluate jobs' "
                                      "benchmark files: the totals are training only")
        elif key in eval_seconds:
            figures["eval_time_s"] = eval_seconds[key]
        else:
            reasons["eval_time_s"] = "no benchmark file of this run's evaluate job"
        if pd.notna(train_s):
            figures["total_time_s"] = train_s + (figures["eval_time_s"] or 0.0)
        target, origin = target_of(reference, run["dataset"], run["model"])
        if target is None:
            reasons["target_valid_ppl"] = origin
        else:
            figures["target_valid_ppl"] = target
            reached = _first_reach(history, target)
            if reached is None:
                best = min((h["valid_ppl"] for h in history if h.get("valid_ppl") is not None),
                           default=float("nan"))
                reasons["time_to_target_s"] = (f"target valid ppl {target:g} not reached in "
                                               f"{len(history)} epochs (best {best:.2f})")
            else:
                figures["epochs_to_target"], figures["time_to_target_s"] = reached
        for seconds, money in (("train", "train_cost"), ("eval_time_s", "eval_cost"),
                               ("total_time_s", "total_cost"), ("time_to_target_s",
                                                                "cost_to_target")):
            value = train_s if seconds == "train" else figures[seconds]
            if not prices:
                reasons[money] = "no prices configured (config key cost)"
            elif value is not None and pd.notna(value):
                figures[money] = cost(value, int(run["gpus"]), prices)
        for figure in ("epochs_to_target", "cost_to_target"):
            if "time_to_target_s" in reasons:
                reasons.setdefault(figure, reasons["time_to_target_s"])
            elif "target_valid_ppl" in reasons:
                reasons.setdefault(figure, reasons["target_valid_ppl"])
        if "target_valid_ppl" in reasons:
            reasons.setdefault("time_to_target_s", reasons["target_valid_ppl"])
        if "eval_time_s" in reasons:
            reasons.setdefault("eval_cost", reasons["eval_time_s"])
        rows.append(figures)
        absent.update({(index, figure): reason for figure, reason in reasons.items()})
    table = pd.DataFrame(rows, index=runs.index, columns=RUN_COLUMNS)
    return table.apply(pd.to_numeric, errors="coerce"), absent


SUMMARY_FIGURES = ["train_time_s", "total_time_s", "total_cost", "time_to_target_s",
                   "cost_to_target"]


def cost_summary(runs, cell):
    """Per ``cell`` (columns): seeds, seeds that reached the target, mean and std of the
    figures."""
    table, grouped = mean_std_by(runs, cell, list(SUMMARY_FIGURES), "n_seeds")
    table.insert(1, "n_reached", grouped["time_to_target_s"].count())
    table.insert(2, "target_valid_ppl", grouped["target_valid_ppl"].first())
    return table.reset_index()
