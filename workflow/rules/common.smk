# Helpers for the stage files: name patterns, input functions, the grid.

import itertools
import re

from mosbench import paths
from mosbench.config import SPLITS, preset


def alternation(names):
    """A regex matching exactly one of ``names`` (and nothing when there are none)."""
    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def sources_of_kind(kind):
    return [name for name, source in config["sources"].items() if source["kind"] == kind]


def model_names():
    return {model for models in config["presets"].values() for model in models}


def raw_files(wildcards):
    """The raw corpus a dataset is tokenised from."""
    raw = paths.RAW.format(source=config["datasets"][wildcards.dataset]["source"])
    return {"source_json": f"{raw}/source.json", **{s: f"{raw}/{s}.txt" for s in SPLITS}}


def data_files(wildcards):
    data = paths.DATA.format(dataset=wildcards.dataset)
    return {s: f"{data}/{s}.parquet" for s in SPLITS}


def hparams(wildcards):
    return preset(config, wildcards.dataset, wildcards.model)


def grid():
    """Every (dataset, model, seed, gpus) job of the run."""
    run = config["run"]
    for dataset, model, seed, gpus in itertools.product(
        run["datasets"], run["models"], run["seeds"], run["gpus"]
    ):
        yield dict(dataset=dataset, model=model, seed=seed, gpus=gpus)


def all_runs(template):
    return [template.format(**job) for job in grid()]


def all_outputs():
    return [
        f"{paths.AGGREGATE}/{name}"
        for name in ("runs.csv", "summary.csv", "summary.md", "valid_ppl.png")
    ]
