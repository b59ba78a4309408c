"""The GPU smoke test of the study (config/gpu-smoke.yaml) and its one-GPU check script.

The smoke is planned, not run: a dry run through the SLURM profile lists its
jobs and resources, and `mosbench plan` its cost. benchmarks/gpu_check.py, the
smoke's PyTorch (or JAX) part for a single-GPU machine without TensorFlow, runs
here on the CPU (``--cpu``) with TensorFlow, MLflow and Snakemake hidden, as
there (and torch too, for JAX).
"""

import copy
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from snakemake.common.configfile import load_configfile
from snakemake.utils import update_config
from test_rerun import planned_jobs, run_snakemake

from conftest import REPO
from mosbench.config import load_config, preset, validate_config
from mosbench.plan import EPOCH_TIME_S, plan

SMOKE = REPO / "config" / "gpu-smoke.yaml"
GRID = REPO / "config" / "config.yaml"
GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"
MOSBENCH = Path(sys.executable).with_name("mosbench")
FRAMEWORKS = ("tensorflow", "pytorch", "jax")
MODELS = ("lstm", "awd-lstm", "awd-lstm-moc", "awd-lstm-mos")
FINETUNE = {"lstm": 0, "awd-lstm": 1, "awd-lstm-moc": 1, "awd-lstm-mos": 1}
TOTAL = re.compile(r"^total: (\d+) jobs, ceiling ([\d,.]+) GPU-hours, expected ([\d,.]+) "
                   r"GPU-hours, ([\d,.]+) USD$")


def test_the_smoke_plans_exactly_its_jobs_through_the_slurm_profile(tmp_path):
    # as the README's command: from the repository root, the profile found as ./slurm
    done = run_snakemake(tmp_path, "--profile", "slurm", "--dry-run", configfile=SMOKE)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = planned_jobs(done.stdout)
    by_rule = {rule: [j for j in jobs if j.rule == rule] for rule in {j.rule for j in jobs}}
    assert {rule: len(js) for rule, js in by_rule.items()} == {
        "download_corpus": 1, "tokenise": 1, "data_pipeline": 3, "train": 12, "evaluate": 12,
        "probe": 36, "aggregate": 1}

    # 3 frameworks x 4 models x 1 seed, trained and evaluated on 1 GPU ...
    trained = {(f, "ptb", m, "1", "1") for f, m in itertools.product(FRAMEWORKS, MODELS)}
    for rule in ("train", "evaluate"):
        assert {tuple(j.wildcards[k] for k in ("framework", "dataset", "model", "seed", "gpus"))
                for j in by_rule[rule]} == trained
    # ... and probed per framework and model: strong at 1 and 2 GPUs, weak at 2
    probed = {(f, "ptb", m, s, g) for f, m, (s, g) in itertools.product(
        FRAMEWORKS, MODELS, (("strong", "1"), ("strong", "2"), ("weak", "2")))}
    assert {tuple(j.wildcards[k] for k in ("framework", "dataset", "model", "scaling", "gpus"))
            for j in by_rule["probe"]} == probed
    assert done.stdout.count("Group job probe-") == 12  # a cell's three frameworks in one job
    assert {j.wildcards["device"] for j in by_rule["data_pipeline"]} == {"gpu"}

    # limits in minutes fit for a short run; config/config.yaml's 480 for the LSTM not leaked
    for job in by_rule["train"]:
        r = job.resources
        runtime = 15 if job.wildcards["model"] == "lstm" else 30
        assert (r["gpu"], r["nodes"], r["runtime"]) == ("1", "1", str(runtime))
        assert r["mem_mb"] == "32000"  # two side by side on a node
        assert int(r["wall_time_s"]) == 60 * runtime - 300  # checkpoints 5 minutes before
    assert {(j.resources["gpu"], j.resources["runtime"]) for j in by_rule["evaluate"]} == {
        ("1", "20")}
    for job in by_rule["probe"]:
        assert job.resources["gpu"] == job.wildcards["gpus"]
        assert job.resources["runtime"] == "10"
        assert "slurm_extra" not in job.resources  # probes share the node (not --exclusive)


def _smoke_part(config):
    """What the smoke runs of a validated config: every key, PTB's entries only."""
    part = copy.deepcopy(config)
    for key in ("sources", "datasets", "reference", "presets"):
        part[key] = {"ptb": part[key].get("ptb")}
    part["cluster"]["overrides"] = {"ptb": part["cluster"]["overrides"].get("ptb")}
    return part


def test_every_training_is_capped_at_two_epochs_alone_and_merged_over_the_study():
    alone = load_config(SMOKE)  # as `mosbench plan --configfile` reads it
    merged = load_configfile(str(GRID))  # as Snakemake does: the Snakefile's configfile,
    update_config(merged, load_configfile(str(SMOKE)))  # then --configfile over it
    merged = validate_config(merged)
    assert _smoke_part(merged) == _smoke_part(alone)  # nothing of the study leaks in

    study = load_config(GRID)
    for model in MODELS:
        hp, paper = preset(alone, "ptb", model), preset(study, "ptb", model)
        assert (hp["epochs"], hp["finetune_epochs"]) == (2, FINETUNE[model])
        # the paper's training keys but the epochs (the probes and trainings read these)
        cut = ("epochs", "finetune_epochs", "rank_contexts", "dynamic_eval")
        assert {k: v for k, v in hp.items() if k not in cut} == \
            {k: v for k, v in paper.items() if k not in cut}
    for model in ("awd-lstm-moc", "awd-lstm-mos"):  # dynamic evaluation stays on, bounded
        dynamic = preset(alone, "ptb", model)["dynamic_eval"]
        paper = preset(study, "ptb", model)["dynamic_eval"]
        assert {k: dynamic[k] for k in ("lr", "lamb", "epsilon", "bptt")} == \
            {k: paper[k] for k in ("lr", "lamb", "epsilon", "bptt")}
        assert (dynamic["batch_size"], dynamic["stat_max_batches"]) == (10, 200)


def test_the_smoke_costs_little(tmp_path):
    done = subprocess.run([str(MOSBENCH), "plan", "--configfile", str(SMOKE), "--results",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    total = TOTAL.match(done.stdout.splitlines()[-1])
    assert total, done.stdout
    jobs, ceiling, expected, money = (float(g.replace(",", "")) for g in total.groups())
    assert jobs == 12 + 12 + 36 + 3 + 1 + 1 + 1  # the dry run's jobs, `all` aside
    # the planner's own figures: trainings at the published speeds, 3 minutes a probe's
    # start, 15 and 45 minutes an evaluation (the smoke cuts what makes them so long)
    assert expected <= 12 and ceiling <= 30 and money <= 38  # 2 frameworks: 8, 20, 25

    # the trainings' share: 2 epochs (+1 of finetune) each, at the published epoch times
    rules, _ = plan(load_config(SMOKE), results=tmp_path)
    train = next(r for r in rules if r.rule == "train")
    assert train.jobs == 12
    assert train.expected_gpu_h == pytest.approx(len(FRAMEWORKS) * sum(
        (2 + FINETUNE[m]) * EPOCH_TIME_S[("ptb", m)] for m in MODELS) / 3600)


# --- benchmarks/gpu_check.py on the CPU --------------------------------------------------------

def gpu_check(tmp_path, *args, hide=("tensorflow", "keras", "mlflow", "snakemake")):
    """Run the script with ``hide``'s modules missing (in its models' processes too)."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    # None in sys.modules: `import` fails, find_spec says absent, as if not installed
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in hide))
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=300)


def test_gpu_check_runs_on_the_cpu_without_tensorflow(tmp_path):
    out = tmp_path / "check.json"
    # one model (the parameter counts of every preset: tests/test_engine_conformance.py)
    done = gpu_check(tmp_path, "--cpu", "--steps", "1", "--eval-windows", "2",
                     "--models", "awd-lstm-moc", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report["stopped_early"] and report["failed"] == []
    assert report["versions"]["framework_version"].startswith("2.")  # torch's
    # the smoke's probe settings, tiny for the CPU: 1 warm-up step, 2 blocks of 1 step
    assert {k: report["settings"][k] for k in ("steps", "warmup", "repeats", "gpus")} == {
        "steps": 1, "warmup": 1, "repeats": 2, "gpus": 0}
    records = {r["model"]: r for r in report["models"]}
    assert list(records) == ["awd-lstm-moc"]
    # the reference parameter count holds only with PTB's vocabulary of exactly 10,000 words
    assert records["awd-lstm-moc"]["parameters"] == 21_500_620
    for r in records.values():
        probe = r["probe"]
        assert r["status"] == "ok"
        assert (probe["scaling"], probe["devices"], probe["timed_steps"]) == ("strong", 1, 1)
        assert probe["global_batch"] == 12
        assert len(probe["tokens_per_s_blocks"]) == 2 and probe["tokens_per_s"] > 0
        assert probe["step_time_median_s"] > 0
        # no GPU: the memory figures are absent with the reason, never zero
        assert probe["allocator_peak_mb"] is None and probe["gpu_memory_peak_mb"] is None
        assert probe["absent"]["gpu_memory_peak_mb"] == "gpus=0: a CPU job"
        assert r["cudnn"]["status"] == "skipped" and "--cpu" in r["cudnn"]["detail"]
        assert r["eval"]["windows"] == 2 and r["eval"]["tokens_per_s"] > 0

    text = done.stdout
    assert "## Versions" in text and "- framework_version: 2." in text
    header = next(line for line in text.splitlines() if line.startswith("| model |"))
    assert "tokens/s (median)" in header and "NVML peak (MiB)" in header
    rows = [line for line in text.splitlines() if line.startswith("| awd-lstm-moc ")]
    assert len(rows) == 1 and rows[0].count("|") == header.count("|")
    assert "| 21,500,620 | 12 x 70 |" in rows[0]
    assert "- awd-lstm-moc: cuDNN assertion skipped: --cpu" in text  # the reason, printed


def test_gpu_check_runs_jax_on_the_cpu_without_tensorflow_or_torch(tmp_path):
    out = tmp_path / "check.json"
    # the cheapest model, one step a block, one block, one evaluation window (the session's
    # quick XLA flags, inherited): under 20 s on 2 busy cores, most of it compiling
    done = gpu_check(tmp_path, "--cpu", "--framework", "jax", "--steps", "1", "--repeats", "1",
                     "--eval-windows", "1", "--models", "lstm", "--out", str(out),
                     hide=("tensorflow", "keras", "mlflow", "snakemake", "torch"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report["stopped_early"] and report["failed"] == []
    assert report["settings"]["framework"] == "jax"
    assert report["versions"]["framework"] == "jax"
    assert "jaxlib" in report["versions"]["libraries"]
    [r] = report["models"]
    assert (r["model"], r["status"], r["parameters"]) == ("lstm", "ok", 13_275_200)
    assert r["environment"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    probe = r["probe"]
    assert probe["provenance"]["framework"] == "jax"
    assert (probe["timed_steps"], probe["repeats"]) == (1, 1) and probe["tokens_per_s"] > 0
    # on the CPU, as every engine says it: the allocator figure is a GPU's
    assert probe["allocator_peak_mb"] is None and probe["absent"]["allocator_peak_mb"] == (
        "gpus=0: a CPU job")
    assert r["cudnn"]["status"] == "skipped" and "--cpu" in r["cudnn"]["detail"]
    assert r["eval"]["windows"] == 1 and r["eval"]["tokens_per_s"] > 0

    text = done.stdout
    assert "## JAX on CPU (--cpu)" in text and "- libraries: jaxlib " in text
    [row] = [line for line in text.splitlines() if line.startswith("| lstm ")]
    assert "| 13,275,200 | 20 x 35 |" in row and "| skipped |" in row
    assert "- lstm: cuDNN assertion skipped: --cpu" in text  # the reason, printed


def test_gpu_check_stops_at_its_budget_and_says_so(tmp_path):
    out = tmp_path / "check.json"
    done = gpu_check(tmp_path, "--cpu", "--budget-s", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["stopped_early"]
    assert [(r["model"], r["status"]) for r in report["models"]] == [
        (m, "not started") for m in MODELS]
    assert "Stopped early: the 1 s budget ran out" in done.stdout


def test_gpu_check_without_jsonschema_says_what_to_carry(tmp_path):
    # the GPU machine's Python has no jsonschema, which validates the presets
    done = gpu_check(tmp_path, "--cpu", hide=("tensorflow", "jsonschema"))
    assert done.returncode == 2
    assert "missing Python packages: jsonschema" in done.stderr
    assert "jsonschema-specifications referencing rpds-py" in done.stderr
