"""The jobs a config asks for: one definition for the workflow and for ``mosbench plan``.

A study answers each question at the least cost. Perplexity, dynamic
evaluation, prediction time and the cost of a result need models trained to
convergence: one training and one evaluation per (framework, dataset, model,
seed) at each of ``run.train_gpus`` (default: the smallest of ``run.gpus``).
Speed, multi-GPU scaling and memory need no converged model: bounded probes
time real training steps at every GPU count of ``run.gpus``, per (framework,
dataset, model, scaling mode), so a scaling curve costs GPU-minutes.
"""

import itertools
import math

from mosbench.errors import MosbenchError


def train_limit(config, dataset, model, key):
    """``cpus_per_gpu``, ``mem_mb`` or ``runtime`` of a training job: ``cluster.train``,
    unless ``cluster.overrides.<dataset>.<model>`` says otherwise."""
    cluster = config["cluster"]
    override = cluster["overrides"].get(dataset, {}).get(model, {})
    return override.get(key, cluster["train"][key])


def train_gpus(config):
    """The GPU counts models are trained to convergence at."""
    run = config["run"]
    return run.get("train_gpus") or [min(run["gpus"])]


def comparison_settings(config):
    """How the report compares the frameworks (``aggregate(comparison=...)``): the study's
    frameworks, the baseline (``run.baseline_framework``, else the first), the GPU count of
    the primary endpoints (the smallest of the full-training counts) and each model's
    equivalence margin in nats per token (``statistics.equivalence_margin_pct``)."""
    run = config["run"]
    frameworks = list(run["frameworks"])
    margins = dict((config.get("statistics") or {}).get("equivalence_margin_pct") or {})
    default = margins.pop("default", 1.0)
    return {"frameworks": frameworks,
            "baseline": run.get("baseline_framework") or frameworks[0],
            "primary_gpus": min(train_gpus(config)),
            "margins": {model: math.log1p(margins.get(model, default) / 100)
                        for model in run["models"]}}


def training_jobs(config):
    """Every (framework, dataset, model, seed, gpus) trained to convergence, then evaluated."""
    run = config["run"]
    for framework, dataset, model, seed, gpus in itertools.product(
        run["frameworks"], run["datasets"], run["models"], run["seeds"], train_gpus(config)
    ):
        yield dict(framework=framework, dataset=dataset, model=model, seed=seed, gpus=gpus)


def probe_seed(config):
    """The seed of every probe: ``run.probes.seed``, else the first of ``run.seeds``."""
    seed = config["run"]["probes"].get("seed")
    return config["run"]["seeds"][0] if seed is None else seed


def probe_jobs(config):
    """Every (framework, dataset, model, scaling, gpus) probe; weak scaling on GPUs only
    (on the CPU, or one GPU, it is the strong probe again)."""
    run, probes = config["run"], config["run"]["probes"]
    if not probes["enabled"]:
        return
    for framework, dataset, model, scaling, gpus in itertools.product(
        run["frameworks"], run["datasets"], run["models"], probes["scaling"], run["gpus"]
    ):
        if scaling == "weak" and gpus < 2:
            continue
        yield dict(framework=framework, dataset=dataset, model=model, scaling=scaling, gpus=gpus)


def previous_framework(config, framework):
    """The framework whose probe of a cell runs just before ``framework``'s (None for the
    first): the frameworks of a cell are probed one after another on one node."""
    frameworks = list(config["run"]["frameworks"])
    if framework not in frameworks:
        raise MosbenchError(f"framework '{framework}' is not in run.frameworks {frameworks}")
    i = frameworks.index(framework)
    return frameworks[i - 1] if i else None


def data_pipeline_devices(config):
    """The hardware kinds the study runs on: cpu for gpus = 0, gpu for GPU counts >= 1."""
    counts = set(config["run"]["gpus"]) | set(train_gpus(config))
    return [d for d, used in (("cpu", 0 in counts), ("gpu", any(g >= 1 for g in counts)))
            if used]


def data_pipeline_jobs(config):
    """One data-pipeline measurement per (framework, dataset, device)."""
    run = config["run"]
    for framework, dataset, device in itertools.product(
        run["frameworks"], run["datasets"], data_pipeline_devices(config)
    ):
        yield dict(framework=framework, dataset=dataset, device=device)
