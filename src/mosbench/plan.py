"""What a study costs before it is submitted: jobs per rule, GPU-hours and money.

Three figures per rule. The *ceiling*: every job running once to its time
limit (``cluster.*.runtime``). The *worst case*: every submitted job using
every retry the profile allows, each to its limit. The *expected* figure:
epochs times the time of an epoch for training, the timed steps for probes,
and typical times for the rest. Epoch times come, in this order, from earlier
training runs under ``results/`` (same framework, data set, model and GPU
count), from probes there (training tokens over the strong probe's tokens/s),
and else from :data:`EPOCH_TIME_S`, the published speeds on one GPU. A job
on N GPUs costs N GPU-hours an hour; a probe with ``cluster.exclusive`` costs
the whole node (``cluster.max_gpus``); a CPU job (gpus = 0) costs CPU-hours.
"""

import glob
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mosbench import study
from mosbench.config import preset
from mosbench.io import read_json

# Seconds per epoch on one GPU, from the published speeds (shared/reference/mos-reference.md)
# or, where none was published, estimated from them; measured times replace these.
EPOCH_TIME_S = {
    # salesforce/awd-lstm-lm README, one Quadro GP100: PTB about 65 s, WT2 about 105 s
    ("ptb", "awd-lstm"): 65.0,
    ("wikitext2", "awd-lstm"): 105.0,
    # zihangdai/mos issue: about 110 ms per 12 x 70 batch, about 130 s per PTB epoch
    ("ptb", "awd-lstm-mos"): 130.0,
    # estimates: MoS on WT2, 2.25x the tokens and about 3x the multiply-adds per token
    # (the 15-expert head over 33,278 words dominates); MoC, the AWD-LSTM's step at the
    # MoS batch (12 or 15 rows, so 1.7x or 5x the steps of the AWD-LSTM's epoch)
    ("wikitext2", "awd-lstm-mos"): 870.0,
    ("ptb", "awd-lstm-moc"): 110.0,
    ("wikitext2", "awd-lstm-moc"): 300.0,
    # estimates: the 2 x 650 LSTM at batch 20 x 35 with cuDNN, about 10 ms (PTB) and
    # 15 ms (WT2, a 3.3x larger softmax) per step
    ("ptb", "lstm"): 20.0,
    ("wikitext2", "lstm"): 45.0,
}
# Tokens of the training split when it is not tokenised yet (the official counts).
TRAIN_TOKENS = {"ptb": 929_589, "wikitext2": 2_088_628}
EVALUATE_H = 0.25  # an evaluation without dynamic evaluation: minutes on one GPU
DYNAMIC_EVALUATE_H = 0.75  # with it: the test stream at batch 1, a gradient every 5 tokens
PIPELINE_H = 0.1  # a data-pipeline measurement: three passes over the training split
PROBE_START_H = 0.05  # a probe's start-up: imports, data, building and compiling the model
SUBMITTED = ("train", "probe", "evaluate", "data_pipeline")


@dataclass
class RuleCost:
    """One rule's jobs and what they cost, in GPU-hours (and CPU-hours for CPU jobs)."""

    rule: str
    jobs: int = 0
    ceiling_gpu_h: float = 0.0
    ceiling_cpu_h: float = 0.0
    expected_gpu_h: float = 0.0
    expected_cpu_h: float = 0.0
    limits_h: set = field(default_factory=set)
    sources: set = field(default_factory=set)
    by_framework: dict = field(default_factory=dict)  # framework -> [ceiling, expected] GPU-h
    local: bool = False  # runs where Snakemake runs: no GPU, no time limit

    def add(self, framework, gpus, limit_h, expected_h, source, billed_gpus=None):
        billed = gpus if billed_gpus is None else billed_gpus
        self.jobs += 1
        self.limits_h.add(limit_h)
        self.sources.add(source)
        if billed:
            self.ceiling_gpu_h += billed * limit_h
            self.expected_gpu_h += billed * expected_h
        else:
            self.ceiling_cpu_h += limit_h
            self.expected_cpu_h += expected_h
        per = self.by_framework.setdefault(framework, [0.0, 0.0])
        per[0] += billed * limit_h
        per[1] += billed * expected_h


class EpochTimes:
    """Seconds per epoch by (framework, dataset, model, gpus), and where each came from."""

    def __init__(self, results="results"):
        self.results, self.tokens = results, {}
        self.trained, self.probed = {}, {}
        for path in glob.glob(f"{results}/train/*/*/*/seed*-gpus*/train.json"):
            record = read_json(path)
            seconds = (record.get("measurements") or {}).get("epoch_time_s")
            if seconds:
                key = tuple(record[k] for k in ("framework", "dataset", "model", "gpus"))
                self.trained.setdefault(key, []).append(seconds)
        for path in glob.glob(f"{results}/probe/*/*/*/strong-gpus*/probe.json"):
            record = read_json(path)
            key = tuple(record[k] for k in ("framework", "dataset", "model", "gpus"))
            self.probed[key] = record["tokens_per_s"]

    def train_tokens(self, dataset):
        """The training split's tokens: tokenised data when there is some (read once)."""
        if dataset not in self.tokens:
            data = Path(self.results) / "data" / dataset / "train.parquet"
            if data.exists():
                from mosbench.data.tokenise import read_metadata

                self.tokens[dataset] = read_metadata(data)["tokens"]["train"]
            else:
                self.tokens[dataset] = TRAIN_TOKENS.get(dataset)
        return self.tokens[dataset]

    def get(self, framework, dataset, model, gpus):
        """``(seconds, source)``, or ``(None, reason)`` when nothing says."""
        key = (framework, dataset, model, gpus)
        if key in self.trained:
            return statistics.median(self.trained[key]), "earlier runs"
        tokens = self.train_tokens(dataset)
        if key in self.probed and tokens:
            return tokens / self.probed[key], "probes"
        if gpus >= 1 and (dataset, model) in EPOCH_TIME_S:
            # no speed-up assumed on more GPUs: an upper estimate until probes measure it
            return EPOCH_TIME_S[(dataset, model)], "published speeds"
        return None, "no epoch time known"


def _limit_h(config, rule, dataset=None, model=None):
    """A job's time limit in hours: the training one per (dataset, model), else the rule's."""
    if rule == "train":
        return study.train_limit(config, dataset, model, "runtime") / 60
    return config["cluster"][rule]["runtime"] / 60


def plan(config, *, retries=0, results="results", default_runtime_min=120):
    """Per-rule costs of ``config``: ``(rules, warnings)``."""
    times = EpochTimes(results)
    rules = {name: RuleCost(name) for name in SUBMITTED}
    warnings = []
    if config["cluster"]["gpu_model"] is None and any(g >= 1 for g in config["run"]["gpus"]):
        warnings.append("cluster.gpu_model is null: jobs may land on different GPU models, "
                        "and frameworks compared on different hardware; set it")
    for job in study.training_jobs(config):
        f, d, m, g = job["framework"], job["dataset"], job["model"], job["gpus"]
        hp = preset(config, d, m)
        epochs = hp.get("epochs", 0) + hp.get("finetune_epochs", 0)
        limit = _limit_h(config, "train", d, m)
        seconds, source = times.get(f, d, m, g)
        expected = epochs * seconds / 3600 if seconds else 0.0
        rules["train"].add(f, g, limit, expected, source)
        if job["seed"] != config["run"]["seeds"][0]:
            pass  # one warning per cell, not per seed
        elif not seconds:
            warnings.append(f"{d} {m} ({f}, {g} GPUs): {source}: its expected time is left out")
        elif math.ceil(expected / limit) > 1 + retries:
            warnings.append(
                f"{d} {m} ({f}, {g} GPUs): about {expected:,.0f} h per run at {epochs} "
                f"epochs, more than the {1 + retries} x {limit:.0f} h the time limit and "
                "retries allow: run snakemake again to resume it, or raise "
                "cluster.train.runtime / the profile's retries")
        evaluate = DYNAMIC_EVALUATE_H if hp.get("dynamic_eval") else EVALUATE_H
        rules["evaluate"].add(f, min(g, 1), _limit_h(config, "evaluate"), evaluate, "typical")
    probes = config["run"]["probes"]
    for job in study.probe_jobs(config):
        f, d, m, g = job["framework"], job["dataset"], job["model"], job["gpus"]
        hp = preset(config, d, m)
        seconds, source = times.get(f, d, m, max(g, 1) if job["scaling"] == "strong" else 1)
        tokens = times.train_tokens(d)
        steps = probes["warmup"] + probes["steps"] * probes["repeats"]
        rows = hp["batch_size"] * (g if job["scaling"] == "weak" else 1)
        step_s = (seconds * rows * hp["bptt"] / tokens) if seconds and tokens else 0.0
        billed = config["cluster"]["max_gpus"] if config["cluster"]["exclusive"] and g else g
        rules["probe"].add(f, g, _limit_h(config, "probe"),
                           PROBE_START_H + steps * step_s / 3600, source, billed_gpus=billed)
    for job in study.data_pipeline_jobs(config):
        rules["data_pipeline"].add(job["framework"], int(job["device"] == "gpu"),
                                   default_runtime_min / 60, PIPELINE_H, "typical")
    local = _local_jobs(config)
    return [r for r in rules.values() if r.jobs] + local, warnings


def _local_jobs(config):
    """The rules that run where Snakemake runs (no GPU, no SLURM job): jobs only."""
    datasets = config["run"]["datasets"]
    sources = {config["datasets"][d]["source"] for d in datasets}
    counts = {"download": len(sources), "tokenise": len(datasets), "aggregate": 1}
    return [RuleCost(rule, jobs=n, local=True) for rule, n in counts.items()]


def profile_settings(profile):
    """``(retries, default runtime in minutes)`` of a Snakemake profile folder (0, 120 if none)."""
    path = Path(profile) / "config.yaml"
    if not path.exists():
        return 0, 120
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return (int(settings.get("retries", 0)),
            int((settings.get("default-resources") or {}).get("runtime", 120)))


def money(gpu_h, cpu_h, prices):
    return gpu_h * prices["gpu_hour"] + cpu_h * prices["cpu_hour"]


def report(rules, warnings, config, *, retries, origin):
    """The plan as lines of text; the last is the total."""
    prices, currency = config["cost"], config["cost"]["currency"]
    lines = [f"Plan of {origin} (retries: {retries}; GPU-hours, and CPU-hours for CPU jobs)",
             "",
             f"{'rule':<14}{'jobs':>6}{'limit h':>10}{'ceiling':>12}{'worst':>12}"
             f"{'expected':>12}  expected from"]
    total = {"jobs": 0, "ceiling": 0.0, "worst": 0.0, "expected": 0.0, "cpu": [0.0, 0.0, 0.0]}
    frameworks = {}
    for r in rules:
        total["jobs"] += r.jobs
        if r.local:
            lines.append(f"{r.rule:<14}{r.jobs:>6}{'local':>10}{0:>12}{0:>12}{0:>12}  "
                         "runs where snakemake runs")
            continue
        worst = r.ceiling_gpu_h * (1 + retries)
        limits = sorted(r.limits_h)
        limit = (f"{limits[0]:g}" if len(limits) == 1 else f"{limits[0]:g}-{limits[-1]:g}")
        lines.append(f"{r.rule:<14}{r.jobs:>6}{limit:>10}{r.ceiling_gpu_h:>12,.0f}"
                     f"{worst:>12,.0f}{r.expected_gpu_h:>12,.0f}  {', '.join(sorted(r.sources))}")
        if r.ceiling_cpu_h:
            lines.append(f"{'  CPU-hours':<30}{r.ceiling_cpu_h:>12,.1f}"
                         f"{r.ceiling_cpu_h * (1 + retries):>12,.1f}{r.expected_cpu_h:>12,.1f}")
        total["ceiling"] += r.ceiling_gpu_h
        total["worst"] += worst
        total["expected"] += r.expected_gpu_h
        for i, v in enumerate((r.ceiling_cpu_h, r.ceiling_cpu_h * (1 + retries),
                               r.expected_cpu_h)):
            total["cpu"][i] += v
        for f, (ceiling, expected) in r.by_framework.items():
            per = frameworks.setdefault(f, [0.0, 0.0])
            per[0] += ceiling
            per[1] += expected
    lines.append("")
    for f, (ceiling, expected) in frameworks.items():
        lines.append(f"{f}: ceiling {ceiling:,.0f} GPU-hours, expected {expected:,.0f}")
    cpu = total["cpu"]
    lines.append(f"money ({currency}, at {prices['gpu_hour']:g} a GPU-hour and "
                 f"{prices['cpu_hour']:g} a CPU-hour): ceiling "
                 f"{money(total['ceiling'], cpu[0], prices):,.0f}, worst "
                 f"{money(total['worst'], cpu[1], prices):,.0f}, expected "
                 f"{money(total['expected'], cpu[2], prices):,.0f}")
    lines += [f"warning: {w}" for w in warnings]
    lines.append(f"total: {total['jobs']} jobs, ceiling {total['ceiling']:,.0f} GPU-hours, "
                 f"expected {total['expected']:,.0f} GPU-hours, "
                 f"{money(total['expected'], cpu[2], prices):,.0f} {currency}")
    return lines
