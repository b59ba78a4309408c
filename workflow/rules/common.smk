# Helpers for the stage files: name patterns, input functions, the grid,
# conda environments per framework, code hashes (params), cluster resources and, before
# a cluster run submits anything, the check of its tracking store.

import functools
import os
import re
import sys

from mosbench import paths, study
from mosbench.code_hash import code_hash
from mosbench.config import SPLITS, preset
from mosbench.engines import FRAMEWORKS
from mosbench.workload import training_hparams

# Each job's `code` param: the package code's hash per (stage, framework), computed once
# per Snakemake process (the paper's grid asks for it 1,280 times; it reads the files).
code_hash = functools.cache(code_hash)

# Light or network-bound steps run where Snakemake runs, even under a cluster
# executor (compute nodes are often offline); train and evaluate are submitted.
localrules:
    download_corpus,
    generate_synthetic_corpus,
    tokenise,
    aggregate,


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


def canonical(value):
    """``value`` with mapping keys sorted at every level.

    Snakemake compares params by their repr, so a param built this way does
    not change, and reruns nothing, when keys are merely reordered in the YAML.
    """
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    return value


def hparams(wildcards):
    """The whole preset of a (dataset, model): what evaluate reads (it rebuilds the model)."""
    return canonical(preset(config, wildcards.dataset, wildcards.model))


def engine_options(wildcards):
    """The framework's own engine settings (config key engines.<framework>): a change reruns
    that framework's training, evaluation and probe jobs, no other framework's."""
    return canonical(config["engines"].get(wildcards.framework, {}))


def train_hparams(wildcards):
    """The preset without the keys only evaluation reads (workload.EVALUATION_KEYS): a
    new dynamic_eval, rank_contexts or test_batch_size reruns evaluate, not training."""
    return canonical(training_hparams(preset(config, wildcards.dataset, wildcards.model)))


def grid():
    """Every (framework, dataset, model, seed, gpus) trained to convergence (mosbench.study)."""
    return study.training_jobs(config)


def all_runs(template):
    return [template.format(**job) for job in grid()]


def probe_files():
    """Every probe's record (run.probes): speed, scaling and memory at each GPU count."""
    return [f"{paths.PROBE}/probe.json".format(**job) for job in study.probe_jobs(config)]


def probe_settings():
    """Steps, warm-up, repeats and seed of every probe."""
    probes = config["run"]["probes"]
    return dict(steps=probes["steps"], warmup=probes["warmup"], repeats=probes["repeats"],
                seed=study.probe_seed(config))


def previous_probe(wildcards):
    """The same cell's probe of the framework before this one (nothing for the first)."""
    previous = study.previous_framework(config, wildcards.framework)
    if previous is None:
        return []
    return f"{paths.PROBE}/probe.json".format(**{**wildcards, "framework": previous})


def data_pipeline_files():
    """One data-pipeline measurement per (framework, dataset, device) of the study."""
    return [f"{paths.DATA_PIPELINE}/data_pipeline.json".format(**job)
            for job in study.data_pipeline_jobs(config)]


def framework_env(wildcards):
    """The conda environment of a job's framework (`--sdm conda`): envs/<framework>.yaml.

    Relative to this folder, as Snakemake resolves a rule's `conda:` path; each
    environment installs only its own framework (`pip install -e '.[<framework>]'`).
    """
    return f"../../envs/{wildcards.framework}.yaml"


def raw_source(wildcards):
    """The raw corpus' source.json: the data-pipeline job times preprocessing the text beside it."""
    return raw_files(wildcards)["source_json"]


# Where each aggregate output goes in the HTML report (category, caption, subcategory);
# others stay out.
REPORTED = {
    # "Answer (start here)" sorts first among the report's categories (they are alphabetical),
    # and within it "1. Verdict" before "2. Details" (subcategories are alphabetical too)
    "verdict_html": ("Answer (start here)", "verdict", "1. Verdict"),
    "frameworks_html": ("Answer (start here)", "frameworks", "2. Details"),
    "result_cost_html": ("Answer (start here)", "result_cost", "2. Details"),
    "result_cost_png": ("Answer (start here)", "result_cost_plot", "2. Details"),
    "summary_html": ("Tables", "summary"),
    "scaling_html": ("Tables", "scaling"),
    "published_html": ("Tables", "published"),
    "ease_of_use_html": ("Ease of use", "ease_of_use"),
    "valid_ppl_png": ("Plots", "valid_ppl"),
    "scaling_png": ("Plots", "scaling_plot"),
    "memory_png": ("Plots", "memory"),
    "latency_png": ("Plots", "latency"),
    "runs": ("Data (CSV)", "runs"),
    "summary_csv": ("Data (CSV)", "summary_csv"),
}


def aggregate_outputs():
    """The aggregate's files by name (paths.AGGREGATE_OUTPUTS), flagged for the report."""
    outputs = {}
    for name, filename in paths.AGGREGATE_OUTPUTS.items():
        path = f"{paths.AGGREGATE}/{filename}"
        if name in REPORTED:
            category, caption, *subcategory = REPORTED[name]
            path = report(path, caption=f"../report/{caption}.rst", category=category,
                          subcategory=subcategory[0] if subcategory else None)
        outputs[name] = path
    return outputs


def reference_results():
    """The published perplexities (config `reference`) of the data sets this run trains on."""
    return {d: config["reference"][d] for d in config["run"]["datasets"] if d in config["reference"]}


# Cluster resources. Resources never trigger reruns, so moving to another
# cluster, partition or time limit reruns nothing. `gpu` also limits local runs
# (`--resources gpu=N`); mosbench.gpu_slots gives each local job its own devices.


def slurm_placement():
    """Partition and account: $SBATCH_PARTITION / $SBATCH_ACCOUNT, else `cluster:` in the config.

    None leaves the choice to the plugin (the default partition, no account).
    """
    cluster = config["cluster"]
    return dict(
        slurm_partition=os.environ.get("SBATCH_PARTITION") or cluster["partition"],
        slurm_account=os.environ.get("SBATCH_ACCOUNT") or cluster["account"],
    )


def train_limit(wildcards, key):
    """cpus_per_gpu, mem_mb or runtime of one (dataset, model), from `cluster:`."""
    return study.train_limit(config, wildcards.dataset, wildcards.model, key)


def wall_time_s(runtime_min):
    """Seconds a train or evaluate job may run under a `runtime` limit (minutes): it then
    saves where it is (checkpoint, evaluation progress) and ends.

    The margin, 10 % of the limit but 5 to 30 minutes (and at most half),
    covers the job's start-up and writing what it saves.
    """
    limit = 60 * runtime_min
    return limit - min(max(limit // 10, 5 * 60), 30 * 60, limit // 2)


def gpu_model(gpus):
    """The GPU type to ask for (`cluster.gpu_model`), none for a CPU job."""
    return config["cluster"]["gpu_model"] if int(gpus) else None


def train_resources():
    """SLURM resources of a training job besides `gpu`, as functions of its wildcards."""
    return dict(
        nodes=1,  # one process drives all of a job's GPUs: `--gpus=N` must not span nodes
        gpu_model=lambda wildcards: gpu_model(wildcards.gpus),
        cpus_per_gpu=lambda wildcards: (
            train_limit(wildcards, "cpus_per_gpu") if int(wildcards.gpus) else None
        ),
        mem_mb=lambda wildcards: train_limit(wildcards, "mem_mb"),
        runtime=lambda wildcards: train_limit(wildcards, "runtime"),
        # read by workflow/scripts/train.py
        wall_time_s=lambda wildcards: wall_time_s(train_limit(wildcards, "runtime")),
        **slurm_placement(),
    )


def probe_resources():
    """SLURM resources of a probe: a training job's GPUs, CPUs and memory, the probe's time
    limit, and the whole node with `cluster.exclusive` (nothing else shares it while it times)."""
    resources = train_resources()
    resources["runtime"] = config["cluster"]["probe"]["runtime"]
    del resources["wall_time_s"]
    if config["cluster"]["exclusive"]:
        resources["slurm_extra"] = "--exclusive"
    return resources


def data_pipeline_resources():
    """SLURM resources of a data-pipeline job besides `gpu`: for device gpu, what a one-GPU
    training job gets (GPU model, CPUs per GPU), since that host is what the figures
    describe; time and memory: the profile's."""
    on_gpu = lambda wildcards: wildcards.device == "gpu"
    return dict(
        gpu_model=lambda wildcards: gpu_model(int(on_gpu(wildcards))),
        cpus_per_gpu=lambda wildcards: (
            config["cluster"]["train"]["cpus_per_gpu"] if on_gpu(wildcards) else None
        ),
        **slurm_placement(),
    )


def evaluate_resources():
    """SLURM resources of an evaluation job besides `gpu`: `cluster.evaluate`'s time and memory."""
    runtime = config["cluster"]["evaluate"]["runtime"]
    return dict(gpu_model=lambda wildcards: gpu_model(wildcards.gpus),
                mem_mb=config["cluster"]["evaluate"]["mem_mb"], runtime=runtime,
                wall_time_s=wall_time_s(runtime),  # read by workflow/scripts/evaluate.py
                **slurm_placement())


def check_tracking_store():
    """Before anything is submitted: jobs on other machines (`--profile slurm`) log to the
    store MLFLOW_TRACKING_URI names, a tracking server by default; never, unasked, to one
    SQLite file over the cluster's file system (src/mosbench/tracking/shared_store.py)."""
    from mosbench.errors import MosbenchError
    from mosbench.tracking.shared_store import cluster_store_line

    if not workflow.non_local_exec:
        return
    try:
        line = cluster_store_line(workflow.executor_plugin.name, os.environ)
    except MosbenchError as exc:
        print(f"mosbench: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    if line:
        print(f"mosbench: {line}", file=sys.stderr, flush=True)


onstart:
    check_tracking_store()
