"""Do the frameworks train to the same point? Whole training runs of every engine and the reference.

The run of issue 24: the ``ptb`` AWD-LSTM-MoS preset of config/config.yaml
scaled to emsize 200, nhid 400, nhidlast 200 and 5 experts, one epoch, no
finetune, no dynamic evaluation, on the real PTB (``../shared/data/ptb``), for
N seeds, in every framework of ``mosbench.engines.FRAMEWORKS`` and in the
reference code (zihangdai/mos). An engine's run is the pipeline's own:
``mosbench --config <work>/config.yaml train ptb awd-lstm-mos --framework F
--seed S --gpus N`` in a scratch folder (N 0, the CPU, unless ``--gpus``), where
config.yaml is the project's with that preset changed and the data went through
``mosbench tokenise``. The reference is cloned into the scratch folder (or copied
there from ``--reference DIR``), patched there as :data:`REFERENCE_PATCHES` says,
and run on the CPU with the same hyperparameters and seed; when no copy can be
had it is skipped in one line. Runs are interleaved (seed by seed, every side in
turn), each in its own process, one at a time unless ``--parallel`` (below).

Printed: the machine, the versions and the command; each run as it ends; the
validation perplexity of every seed per side with mean +- std; and each side
against the first framework (the baseline): the difference of the mean
per-token validation loss with its 95 % Welch interval (SciPy), a two
one-sided test of equivalence at ``--margin`` (statsmodels ``ttost_ind``,
Welch; default log(1.01) nats, 1 % of perplexity) and the verdict in words;
then the engines' mean training loss per block of 100 windows over their
seeds, with each side's difference from the first (where the runs part).
The runs and the summary are written to ``--results`` (default
results/fidelity) as CSV and JSON, after every run.

Each finished run is also kept in ``--results``/runs/, keyed by what makes it
the same run (side, seed, hyperparameters, the cut, and the code: the train
stage's code hash of that engine, or the reference's commit and patches), and
a later invocation reuses it instead of training again (``--fresh`` trains
everything). So a study too long for one sitting accumulates: run the sides in
separate invocations, in turn or side by side with ``--threads 1``, then
``--report`` prints the table from the stored runs alone. The thread count is
recorded per run but not part of the key: another count redraws a run as
another seed does (docs/design.md), it does not bias it. A run is kept in a
file of its own key (``<side>-seed<S>-<key>.json``), so a run of later code
never replaces one of earlier code. ``--report --code SIDE=REV`` reads a
side's runs kept under its code at git revision REV (the commit they were
trained at), so engines trained at different commits share one table, each
side's commit printed with it.

A setting that changes which kernels the libraries pick, set in the
environment (``throughput.KERNEL_CHOICE_ENV``: ``TF_ENABLE_ONEDNN_OPTS=0``,
``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS``, ``XLA_FLAGS`` ...),
reaches every run, is printed and recorded with it, and enters its key: such
a run rounds otherwise, so it is never reused for the plain run of its seed,
whose key is unchanged (``--report`` under the same settings finds it).

``--gpus N`` trains each engine's run on N GPUs: ``mosbench train ... --gpus N``,
its summary read from ``seed<S>-gpus<N>``. Such a run is kept under a key that
holds the GPU count (a CPU run's key is what it was before the option), so a GPU
run is never reused for a CPU run nor mixed with one; every run records its
``gpus`` as it does its ``threads``, a GPU run also its ``device`` (and its log
is ``<side>-seed<S>-gpus<N>.log``), and the machine lines name the GPU (from
NVML). The reference stays on the CPU (its CUDA
path is neither patched nor checked here), so ``--gpus`` needs ``--no-reference``.
On a GPU the JAX runs share one persistent compilation cache (config key
``engines.jax.compilation_cache``, a folder in the scratch folder, so ``--work``
keeps it for later invocations): each of an epoch's ~50 window lengths is a
compile, and a run loads what an earlier or concurrent run has compiled (an
entry still being written reads as damaged: JAX warns and compiles). It
changes no arithmetic: a program is cached under a hash of its HLO, compile
options, device kind and JAX version, so a run that loads one runs the program a
fresh compile would give, the only possible difference being which kernel XLA's
GPU autotuner timed fastest, a pick that may differ between any two compiles.
CPU runs get no cache: they run exactly as before the option.

``--parallel K`` runs up to K runs at once, each in its own process with
``--threads`` threads (default: the usable cores over K), e.g. four engine runs
on one H200. They share the machine, so with K > 1 the step times (and the smoke
run's estimate) say nothing about speed: only the losses are results. The
records and tables keep the order of the runs (seed by seed, side by side)
whatever order they end in; each run is printed and kept as it ends, after the
kept runs of earlier invocations. Concurrent runs in
one scratch folder are safe: each writes its own
``train/<framework>/ptb/awd-lstm-mos/seed<S>-gpus<N>`` folder, the data is
tokenised once before any starts, and the MLflow SQLite store they share is
created under a lock by mosbench, its "database is locked" retried. With K > 1
on GPUs the engines start with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless set):
JAX's default takes 75 % of a GPU's memory at start, and the next process would
find too little. That setting chooses the allocator, not the arithmetic. Every
run takes the first N GPUs it sees (``CUDA_VISIBLE_DEVICES``): K runs share them,
they are not spread over a larger machine's GPUs.

``--masks numpy`` (PyTorch and TensorFlow), ``--masks torch-rand`` (PyTorch)
or ``--masks tf-stateless`` (TensorFlow) trains the engines with their dropout
masks drawn from another source (``mask_sources/sitecustomize.py``: NumPy,
``torch.rand`` in place of ``bernoulli_``, or TensorFlow's own stateless op
keyed by seeds unrelated to the engine's generators), everything else their
own; such runs are kept under keys of their own. It separates what the masks'
draws do from what the rest does. ``--masks tf-site-seeds`` (TensorFlow) keeps
the engine's draw and keying ``[S_i, t]`` but gives each site another ``S_i``
(from NumPy); ``--masks tf-crossed-seeds`` gives each site the ``S_i`` Keras
drew for it in the run of the next seed, so run S trains on exactly run S+1's
native masks with its own weights and windows; ``--masks tf-engine`` passes the
engine's own draws through the same seams, the control that must reproduce the
native run.
``--mask-sites`` (TensorFlow) gives the source only some of the engine's mask
sites (``weight-drop``, ``locked``, ``embedding``), the rest drawn as the
engine draws them: which site carries a difference.

``--max-steps N`` makes a smoke run: every training stream is cut to
``N * bptt + 1`` positions (the same cut in the reference), so an epoch is
about N windows, and the perplexities are not a result.

Usage::

    .venv/bin/python benchmarks/fidelity.py                 # 5 seeds, all frameworks
    .venv/bin/python benchmarks/fidelity.py --seeds 3 --frameworks tensorflow pytorch
    .venv/bin/python benchmarks/fidelity.py --seeds 2 --max-steps 30   # a smoke run
    .venv/bin/python benchmarks/fidelity.py --reference ~/src/mos      # a copy at hand
    .venv/bin/python benchmarks/fidelity.py --seeds 3 --no-reference --report  # stored runs
    .venv/bin/python benchmarks/fidelity.py --report --no-reference --seeds 6 \
        --code tensorflow=b809011 --code pytorch=b809011 --code jax=484512b
    .venv/bin/python benchmarks/fidelity.py --masks numpy --no-reference --seeds 4
    .venv/bin/python benchmarks/fidelity.py --frameworks tensorflow --masks numpy \
        --mask-sites weight-drop --no-reference --seeds 4
    .venv/bin/python benchmarks/fidelity.py --frameworks pytorch jax --seeds 4 \
        --no-reference --gpus 1 --parallel 4 --work /tmp/fid-gpu   # one GPU, 4 runs at once

Needs statsmodels (``.venv/bin/pip install statsmodels==0.15.0``) and, for
the reference and the PyTorch engine, torch. Run it alone: on 2 cores anything
else busy slows it (the perplexities do not depend on it).
"""

import argparse
import contextlib
import csv
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import yaml

from mosbench.code_hash import code_hash
from mosbench.config import load_config, preset
from mosbench.data.batching import batchify
from mosbench.data.tokenise import read_tokens
from mosbench.engines import FRAMEWORKS
from mosbench.errors import PAUSED_EXIT_CODE
from mosbench.evaluation.perplexity import perplexity
from mosbench.reporting.statistics import (  # ALPHA: a 95 % interval, each one-sided test 5 %
    ALPHA,
    equivalence,
    loss_verdict,
    margin_nats,
    ppl_change,
)
from mosbench.training.bptt import epoch_windows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ptb"
DATASET, MODEL = "ptb", "awd-lstm-mos"
# Issue 24's scaling of the preset: small enough for a CPU, the preset's regularisation kept.
SCALED = {"emsize": 200, "nhid": 400, "nhidlast": 200, "n_experts": 5,
          "finetune_epochs": 0, "dynamic_eval": None}
REFERENCE = "reference"
# --masks: where an engine's dropout masks come from (mask_sources/sitecustomize.py, loaded
# here under another name: it installs nothing unless MOSBENCH_MASK_SOURCE is set)
MASK_SOURCES = Path(__file__).resolve().parent / "mask_sources"
_spec = importlib.util.spec_from_file_location("mask_sources", MASK_SOURCES / "sitecustomize.py")
mask_sources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mask_sources)
MASKS = {"native": None, **mask_sources.AVAILABLE}
MASK_SITES = mask_sources.SITES  # engine: its sites that --mask-sites can name
REFERENCE_URL = "https://github.com/zihangdai/mos"

# What the reference needs to run here, applied to a copy at run time: (file, text there,
# replacement, why). Each text must occur exactly once, else the reference is skipped.
REFERENCE_PATCHES = [
    ("weight_drop.py",
     "                w = torch.nn.functional.dropout(raw_w, p=self.dropout, "
     "training=self.training)\n",
     "                w = torch.nn.functional.dropout(raw_w, p=self.dropout, "
     "training=self.training)\n"
     "                if not self.training:\n"
     "                    w = raw_w.detach()\n",
     "weight drop in evaluation mode hands the LSTM a plain tensor: the raw Parameter it "
     "handed over is registered again by current PyTorch, and the next training step fails "
     "(from the second epoch on)"),
    ("main.py",
     "            val_loss = evaluate(val_data, eval_batch_size)\n",
     "            val_loss = evaluate(val_data, eval_batch_size)\n"
     "            print('fidelity: valid loss per token', "
     "repr(val_loss * len(val_data) / (len(val_data) - 1)))\n",
     "prints each validation loss in full precision, per token: evaluate() divides the summed "
     "loss by the stream's length, one more than the targets scored"),
    ("main.py",
     "            val_loss2 = evaluate(val_data)\n",
     "            val_loss2 = evaluate(val_data)\n"
     "            print('fidelity: valid loss per token', "
     "repr(val_loss2 * len(val_data) / (len(val_data) - 1)))\n",
     "the same once averaging (ASGD) has started"),
    ("main.py",
     "# Load the best saved model.\n",
     "sys.exit(0)  # fidelity.py: no test pass\n",
     "stops after training: the test pass after it reloads a whole pickled model "
     "(torch.load without weights_only=False, refused by current PyTorch) onto CUDA; "
     "validation is what is compared"),
]
STEP_CAP_ANCHOR = "train_data = batchify(corpus.train, args.batch_size, args)\n"
# Preset keys the reference takes as command-line options of the same name.
REFERENCE_OPTIONS = ("emsize", "nhid", "nhidlast", "nlayers", "lr", "clip", "epochs",
                     "batch_size", "bptt", "dropout", "dropouth", "dropouti", "dropoute",
                     "dropoutl", "wdrop", "alpha", "beta", "wdecay", "nonmono", "n_experts",
                     "small_batch_size", "max_seq_len_delta")
# What the reference fixes in its code; another value leaves it out of the comparison.
REFERENCE_FIXED = {"eval_batch_size": 10, "init_range": 0.1, "variable_bptt": True,
                   "schedule": "nt-asgd", "tie_weights": True, "finetune_epochs": 0}


# --- statistics ---

def parse_code_revisions(items, frameworks):
    """``["jax=484512b", ...]`` -> ``{"jax": "484512b"}``, each side one of ``frameworks``."""
    revisions = {}
    for item in items:
        side, sep, revision = item.partition("=")
        if not sep or not revision:
            raise ValueError(f"--code {item!r}: expected SIDE=REV, e.g. jax=484512b")
        if side not in frameworks:
            raise ValueError(f"--code {item!r}: side '{side}' is not one of --frameworks "
                             f"{list(frameworks)}")
        if side in revisions:
            raise ValueError(f"--code: side '{side}' given twice")
        revisions[side] = revision
    return revisions


def margin_type(text):
    """``--margin``: nats per token (``0.0099``) or a share of perplexity (``1%``)."""
    try:
        if text.endswith("%"):
            value = margin_nats(float(text[:-1]))
        else:
            value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected nats (0.01) or a percentage (1%), "
                                         f"got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the margin must be positive, got {text!r}")
    return value


# The comparison itself is the aggregate's (mosbench.reporting.statistics): one implementation
# of the Welch interval, the TOST and the verdict's words for the benchmark and the report.
compare = equivalence
verdict = loss_verdict


# --- the machine, the data and the engines' runs ---

def gpu_label(gpus):
    """The model of the first ``gpus`` GPUs as NVML names it, or "GPU (name unknown)"
    (no nvidia-ml-py, no driver); None for the CPU (``gpus`` 0)."""
    if not gpus:
        return None
    from mosbench.measurement.provenance import gpu_description

    return gpu_description(gpus)[1] or "GPU (name unknown)"


def kernel_env():
    """The settings of this process's environment that change which kernels the libraries
    pick (``throughput.KERNEL_CHOICE_ENV``, e.g. ``TF_ENABLE_ONEDNN_OPTS=0``): every run
    inherits them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import kernel_settings

    return kernel_settings()


def machine_lines(threads, gpus=0, parallel=1):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from throughput import cpu_description

    versions = [f"python {platform.python_version()}"]
    for package in ("tensorflow", "keras", "torch", "jax", "jaxlib", "optax", "numpy", "scipy",
                    "statsmodels"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    lines = [f"cpu: {cpu_description()}; {threads} threads per run"]
    if gpus:
        lines.append(f"gpu: {gpus} x {gpu_label(gpus)} per engine run (mosbench train --gpus "
                     f"{gpus}); the reference is not run")
    if parallel > 1:
        lines.append(f"parallel: up to {parallel} runs at once on this machine"
                     + (" and its GPUs" if gpus else "")
                     + ": their step times say nothing about speed")
    return lines + ["versions: " + ", ".join(versions)]


def check_ptb(data_dir, config):
    """The three PTB files, each checked against the config's sha256."""
    members = config["sources"][DATASET]["members"]
    for split in ("train", "valid", "test"):
        path = data_dir / f"{split}.txt"
        if not path.exists():
            raise SystemExit(f"fidelity: no PTB at {data_dir} ({path.name} missing); "
                             "give its folder with --data")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if members[split]["sha256"] and digest != members[split]["sha256"]:
            raise SystemExit(f"fidelity: {path} has sha256 {digest}, the config expects "
                             f"{members[split]['sha256']} (sources.ptb.members.{split})")


def write_config(work, overrides, threads, jax_cache=None):
    """The project's config with the scaled preset; return (its path, the preset).

    ``jax_cache``: a folder for the JAX engine's persistent compilation cache
    (``engines.jax.compilation_cache``), shared by the runs that read this config.
    """
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    presets = config["presets"][DATASET]
    presets[MODEL] = {**presets[MODEL], **overrides}
    config["threads"] = threads
    if jax_cache is not None:
        config.setdefault("engines", {}).setdefault("jax", {})["compilation_cache"] = str(
            Path(jax_cache).resolve())
    config["mlflow"]["experiment"] = "mosbench-fidelity"
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, preset(load_config(path), DATASET, MODEL)


def mosbench(work, config_path, *args, log, env=None):
    """``mosbench --config CONFIG ARGS`` in ``work`` (its results/ there), output to ``log``;
    ``env``: more environment variables."""
    exe = Path(sys.executable).with_name("mosbench")
    command = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else
               ["-c", "import sys; from mosbench.cli import main; sys.exit(main())"]),
               "--config", str(config_path), *args]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'results' / 'mlflow.db'}",
           "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with open(log, "w") as out:
        return subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)


def prepare_data(work, data_dir, config_path, hp, positions, logs):
    """Tokenise PTB with ``mosbench tokenise`` in ``work``; cut the train streams if capped."""
    raw = work / "results" / "raw" / DATASET
    raw.mkdir(parents=True, exist_ok=True)  # --resume: already there
    for split in ("train", "valid", "test"):
        shutil.copyfile(data_dir / f"{split}.txt", raw / f"{split}.txt")
    (raw / "source.json").write_text(json.dumps({"name": DATASET, "kind": "archive",
                                                 "url": None, "copied_from": str(data_dir)}))
    done = mosbench(work, config_path, "tokenise", DATASET, log=logs / "tokenise.log")
    if done.returncode:
        raise SystemExit(f"fidelity: mosbench tokenise failed; see {logs / 'tokenise.log'}")
    if positions:
        cut_train_streams(work / "results" / "data" / DATASET / "train.parquet",
                          hp["batch_size"], positions)


def cut_train_streams(path, batch_size, positions):
    """Keep the first ``positions`` of every batch stream: an epoch of the full run, shortened.

    Written row by row, so that ``batchify`` gives back exactly those columns;
    the vocabulary and the other splits stay whole.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mosbench.data.tokenise import META_KEY, load_split

    ids, meta = load_split(path.parent, "train")
    kept = batchify(ids, batch_size)[:, :positions].reshape(-1)
    meta["tokens"]["train"] = int(kept.size)
    meta["cut_streams_to"] = positions
    table = pa.table({"id": kept.astype(np.int32)})
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), path)


def window_count(stream_positions, hp, seed, epochs=1, reference=False):
    """Training steps of a run: its windows, drawn as ``mosbench train`` draws them.

    ``reference``: as the reference draws them, from NumPy's global generator
    seeded with the seed, which nothing else in its main.py draws from.
    """
    rng = np.random.RandomState(seed) if reference else np.random.default_rng(seed)
    return sum(1 for _ in range(epochs) for _ in epoch_windows(
        rng, stream_positions, hp["bptt"], hp["variable_bptt"], hp.get("max_seq_len_delta")))


def mask_environment(masks, framework, seed, sites=None):
    """What makes ``mosbench train`` draw its masks from ``masks`` (mask_sources/), at
    ``sites`` only when given."""
    if masks == "native":
        return {}
    path = os.pathsep.join(p for p in (str(MASK_SOURCES), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "MOSBENCH_MASK_SOURCE": masks,
           "MOSBENCH_MASK_FRAMEWORK": framework, "MOSBENCH_MASK_SEED": str(seed)}
    if sites is not None:
        env["MOSBENCH_MASK_SITES"] = ",".join(sites)
    return env


def chosen_sites(sites, framework):
    """``--mask-sites`` in the engine's order; None when it names them all (the same run
    as no --mask-sites, kept under the same key)."""
    every = MASK_SITES.get(framework, ())
    if sites is None or set(every) <= set(sites):
        return None
    return tuple(s for s in every if s in sites)


def masked_code(code, masks, sites=None):
    """An engine's code key with its mask source and sites: another source, another run
    (native as before, so runs kept before --masks existed are still found)."""
    if masks == "native":
        return code
    return f"{code}:masks={masks}" + ("" if sites is None else "@" + "+".join(sites))


def engine_arguments(framework, seed, gpus=0):
    """``mosbench train``'s arguments for one engine run."""
    return ["train", DATASET, MODEL, "--framework", framework, "--seed", str(seed),
            "--gpus", str(gpus)]


def summary_path(work, framework, seed, gpus=0):
    """Where ``mosbench train`` in ``work`` writes that run's summary (paths.TRAIN)."""
    return (work / "results" / "train" / framework / DATASET / MODEL / f"seed{seed}-gpus{gpus}"
            / "train.json")


def engine_log(logs, framework, seed, gpus=0):
    """A run's log; a GPU run's named apart, so it never overwrites the CPU run's."""
    return logs / (f"{framework}-seed{seed}.log" if not gpus
                   else f"{framework}-seed{seed}-gpus{gpus}.log")


def engine_environment(gpus, parallel):
    """What every engine process gets besides the mask source: with several runs on GPUs,
    JAX's allocator takes what it needs instead of 75 % of the GPU at start (the next
    process would find too little); the arithmetic is the same either way."""
    if gpus and parallel > 1 and "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ:
        return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    return {}


def run_engine(framework, seed, work, config_path, logs, masks="native", sites=None, gpus=0,
               env=None):
    """One ``mosbench train`` run on ``gpus`` GPUs (0: the CPU); ``env``: more variables."""
    log = engine_log(logs, framework, seed, gpus)
    start = time.monotonic()
    done = mosbench(work, config_path, *engine_arguments(framework, seed, gpus), log=log,
                    env={**(env or {}), **mask_environment(masks, framework, seed, sites)})
    record = {"side": framework, "seed": seed, "wall_s": time.monotonic() - start,
              "log": str(log), "gpus": gpus}
    summary_file = summary_path(work, framework, seed, gpus)
    if done.returncode == PAUSED_EXIT_CODE:  # SIGTERM: a checkpoint to resume from
        return {**record, "status": f"paused: {last_line(log)}; the same command with "
                                    f"--work {work.parent} --resume continues it"}
    if done.returncode or not summary_file.exists():
        return {**record, "status": f"failed (exit {done.returncode}): {last_line(log)}"}
    summary = json.loads(summary_file.read_text())
    if summary["outcome"] != "finished":
        return {**record, "status": f"{summary['outcome']}: {summary.get('reason')}"}
    last = summary["history"][-1]
    return {**record, "status": "ok", "valid_loss": summary["best_valid_loss"],
            "train_loss": last["train_loss"], "n_params": summary["n_params"],
            "step_median_s": summary["measurements"]["step_time_median_s"],
            "train_s": summary["train_time_s"], "train_progress": progress_losses(log)}


# `mosbench train`'s progress line: the epoch's running mean training loss after a step.
PROGRESS = re.compile(r"train epoch 1/\d+ \| step (\d+)/~?\d+ [^|]*\| loss ([0-9.]+)")
LAST_VALID = re.compile(r"best valid loss ([0-9.]+)\s*$")


def progress_losses(log, valid_loss=None):
    """``[[step, running mean training loss], ...]`` of the first epoch from a run's log.

    None when the log has no progress lines, is a resumed run's (its running mean
    restarts at the resume), or, given ``valid_loss``, ends with another run's loss
    (a log the next run of that side and seed wrote over).
    """
    text = own_log_text(log, valid_loss, LAST_VALID)
    if text is None or "resuming at epoch" in text:
        return None
    found = {int(step): float(loss) for step, loss in PROGRESS.findall(text)}
    return [[step, found[step]] for step in sorted(found)] or None


def own_log_text(log, valid_loss, logged_valid):
    """A run's log (carriage returns as new lines), or None when it cannot be read or, given
    ``valid_loss``, when the best validation loss ``logged_valid`` finds in it is another
    run's (a later run of that side and seed wrote over the log)."""
    try:
        text = Path(log).read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return None
    if valid_loss is not None:
        logged = [float(v) for v in logged_valid.findall(text)]
        if not logged or abs(min(logged) - valid_loss) > 5e-5:
            return None
    return text


def block_losses(progress, stream_positions, hp, seed):
    """``{last step: mean training loss of the block}`` between progress lines.

    Recovered from the running means, token-weighted, with the seed's own window
    lengths (the running mean is printed to 3 decimals, so a late block's mean is good to
    about 0.005 nats).
    """
    lengths = [length for _, length, _ in epoch_windows(
        np.random.default_rng(seed), stream_positions, hp["bptt"], hp["variable_bptt"],
        hp.get("max_seq_len_delta"))]
    tokens = np.concatenate([[0], np.cumsum(lengths)])
    blocks, previous, total = {}, 0, 0.0
    for step, loss in progress:
        if step > len(lengths):
            break
        blocks[step] = (loss * tokens[step] - total) / (tokens[step] - tokens[previous])
        previous, total = step, loss * tokens[step]
    return blocks


def run_key(side, seed, hp, stream_positions, code, gpus=0, kernels=None):
    """A digest of what makes a stored run the same run as the one asked for.

    ``gpus`` enters only when above 0: a GPU run is another run than a CPU run,
    and a CPU run's key is the one it had before runs could be on GPUs.
    ``kernels`` (:func:`kernel_env`) enters only when some are set: a run with
    oneDNN's rewrites off or its ISA capped rounds otherwise, so it is another
    run, never reused for (nor mixed with) the plain one, whose key is unchanged.
    """
    what = {"side": side, "seed": seed, "hparams": hp, "stream_positions": stream_positions,
            "code": code}
    if gpus:
        what["gpus"] = gpus
    if kernels:
        what["kernels"] = kernels  # json.dumps below sorts its names
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def run_path(folder, side, seed, key):
    """Where the run of ``side`` and ``seed`` under ``key`` is kept: one file per key, so a
    run of other code (a later commit) is kept beside it, never over it."""
    return folder / "runs" / f"{side}-seed{seed}-{key}.json"


def stored_run(folder, side, seed, key):
    """The finished run kept under ``key``, or None.

    Also reads the one-file-per-seed name of earlier versions (``<side>-seed<S>.json``),
    whose key is inside the file.
    """
    for path in (run_path(folder, side, seed, key),
                 folder / "runs" / f"{side}-seed{seed}.json"):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        record = stored.get("record") or {}
        if stored.get("key") == key and record.get("status") == "ok":
            return record
    return None


def store_run(folder, record, key):
    """Keep a finished run for later invocations; written whole or not at all."""
    path = run_path(folder, record["side"], record["seed"], key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"key": key, "record": record}, indent=2) + "\n")
    os.replace(partial, path)


def code_hash_at(revision, side, scratch, repo=REPO):
    """``side``'s train code hash at git ``revision`` of ``repo``: the key its runs were kept
    under when they were trained there.

    The package at that revision is extracted (``git archive``) into ``scratch`` and hashed
    with this checkout's rule (:func:`mosbench.code_hash.code_hash` with ``root``).
    Raises ValueError naming the revision when git cannot read it.
    """
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--short",
                           f"{revision}^{{commit}}"], capture_output=True, text=True)
    if done.returncode:
        raise ValueError(f"--code {side}={revision}: not a commit of {repo} "
                         f"({last_text(done.stderr)})")
    commit = done.stdout.strip()
    tree = scratch / f"code-{commit}"
    if not (tree / "src" / "mosbench").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "src/mosbench"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return commit, code_hash("train", side, root=tree / "src" / "mosbench")


def run_all(jobs, parallel, finished):
    """Call each of ``jobs`` (``{position: job}``, a job a callable returning a record), up
    to ``parallel`` at once, and ``finished(position, record)`` in this thread as each ends.

    One at a time they run here, in the order given. Otherwise each in a thread of a pool,
    started in that order: a job waits on a process of its own, so threads suffice.
    """
    if parallel <= 1:
        for position, job in jobs.items():
            finished(position, job())
        return
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="fidelity-run")
    try:
        running = {pool.submit(job): position for position, job in jobs.items()}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=running.get):
                finished(running.pop(future), future.result())
    finally:
        # after an error or ^C nothing more starts; the runs under way end (^C reached them)
        pool.shutdown(wait=True, cancel_futures=True)


def last_text(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def last_line(log):
    return last_text(Path(log).read_text(errors="replace"))


# --- the reference: fetched, patched, run ---

def fetch_reference(given, scratch):
    """A checkout of zihangdai/mos (``given``, else cloned): (folder, commit) or (None, why)."""
    if given is not None:
        source = Path(given).expanduser()
        if not (source / "main.py").exists():
            return None, f"{source} has no main.py: not a checkout of {REFERENCE_URL}"
    else:
        source = scratch / "mos-clone"
        try:
            done = subprocess.run(["git", "clone", "--quiet", REFERENCE_URL, str(source)],
                                  capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"could not clone {REFERENCE_URL} ({exc})"
        if done.returncode:
            why = (done.stderr.strip().splitlines() or ["git failed"])[-1]
            return None, f"could not clone {REFERENCE_URL} ({why})"
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True)
    return source, (commit.stdout.strip() if commit.returncode == 0 else "commit unknown")


def patch_reference(source, target, positions):
    """Copy the reference's Python files to ``target`` and patch them; return what was done."""
    target.mkdir(parents=True)
    for path in source.glob("*.py"):
        shutil.copyfile(path, target / path.name)
    patches = list(REFERENCE_PATCHES)
    if positions:
        patches.append(("main.py", STEP_CAP_ANCHOR, STEP_CAP_ANCHOR
                        + f"train_data = train_data[:{positions}]  # fidelity.py --max-steps\n",
                        f"smoke run: the training streams cut to their first {positions} "
                        "positions, as the engines' (--max-steps)"))
    for name, old, new, _ in patches:
        path = target / name
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if text.count(old) != 1:
            raise ValueError(f"{name} does not hold the text a patch replaces exactly once "
                             f"({old.strip()[:60]!r}): another version than zihangdai/mos "
                             "6f89b28-9c0c608")
        path.write_text(text.replace(old, new), encoding="utf-8")
    return [f"{name}: {why}" for name, _, _, why in patches]


def reference_mismatch(hp):
    """Why the reference cannot run this preset (a setting its code fixes), or None."""
    wrong = [f"{k}={hp.get(k, v)!r} (it fixes {v!r})" for k, v in REFERENCE_FIXED.items()
             if hp.get(k, v) != v]
    return "; ".join(wrong) or None


def run_reference(seed, code, data_dir, hp, threads, work, logs, log_interval=200):
    """One run of the patched reference's main.py with the preset's settings, on the CPU.

    ``log_interval``: its report interval, whose ms/batch lines give the step time.
    """
    log = logs / f"{REFERENCE}-seed{seed}.log"
    options = [f"--{key}={hp[key]}" for key in REFERENCE_OPTIONS if key in hp]
    command = [sys.executable, "main.py", "--data", str(data_dir), "--seed", str(seed),
               "--save", str(work / f"reference-seed{seed}"), "--cuda",  # --cuda turns CUDA off
               f"--log-interval={log_interval}", *options]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=code, env=env, stdout=out, stderr=subprocess.STDOUT)
    record = {"side": REFERENCE, "seed": seed, "wall_s": time.monotonic() - start,
              "log": str(log)}
    text = log.read_text(errors="replace")
    losses = [float(v) for v in REFERENCE_VALID.findall(text)]
    if done.returncode or not losses:
        return {**record, "status": f"failed (exit {done.returncode}): {last_line(log)}"}
    params = re.search(r"^Model total parameters: (\d+)", text, re.M)
    steps = [float(v) / 1000 for v in re.findall(r"ms/batch\s+([\d.]+)", text)]
    return {**record, "status": "ok", "valid_loss": min(losses),
            "n_params": int(params.group(1)) if params else None,
            "step_median_s": float(np.median(steps)) if steps else None,
            "train_intervals": interval_losses(log)}


# The reference's log line every log_interval windows: the mean loss of those windows.
INTERVAL = re.compile(r"^\| epoch\s+1 \|\s+(\d+)/\s*\d+ batches .*\| loss\s+([0-9.]+) \|", re.M)
REFERENCE_VALID = re.compile(r"^fidelity: valid loss per token (\S+)$", re.M)


def interval_losses(log, valid_loss=None):
    """``[[last window, mean loss of the interval], ...]`` of the reference's first epoch.

    None without such lines or, given ``valid_loss``, when the log is another run's.
    """
    text = own_log_text(log, valid_loss, REFERENCE_VALID)
    if text is None:
        return None
    return [[int(step), float(loss)] for step, loss in INTERVAL.findall(text)] or None


# --- the report ---

def seed_table(records, sides, seeds):
    ok = {(r["side"], r["seed"]): r for r in records}
    lines = ["| seed | " + " | ".join(sides) + " |", "|---:|" + "---:|" * len(sides)]
    for seed in seeds:
        cells = []
        for side in sides:
            r = ok.get((side, seed))
            cells.append("-" if r is None else f"{perplexity(r['valid_loss']):.2f}"
                         if r["status"] == "ok" else "failed")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    cells = []
    for side in sides:
        ppl = [perplexity(r["valid_loss"]) for r in records
               if r["side"] == side and r["status"] == "ok"]
        cells.append(f"{np.mean(ppl):.2f} ± {np.std(ppl, ddof=1):.2f}" if len(ppl) > 1
                     else f"{ppl[0]:.2f}" if ppl else "-")
    lines.append("| mean ± std | " + " | ".join(cells) + " |")
    return lines


def summarise(records, sides, margin):
    """Per side: n, mean and std of the loss and perplexity, the comparison with the first."""
    losses = {s: [r["valid_loss"] for r in records if r["side"] == s and r["status"] == "ok"]
              for s in sides}
    baseline, rows = sides[0], []
    for side in sides:
        x = np.asarray(losses[side], float)
        row = {"side": side, "n": len(x),
               "mean_loss": float(x.mean()) if len(x) else None,
               "std_loss": float(x.std(ddof=1)) if len(x) > 1 else None,
               "mean_ppl": float(np.mean(np.exp(x))) if len(x) else None,
               "std_ppl": float(np.std(np.exp(x), ddof=1)) if len(x) > 1 else None}
        if side != baseline:
            row.update(compare(baseline, losses[baseline], side, x, margin))
        rows.append(row)
    return rows


def comparison_table(rows, margin):
    baseline = rows[0]["side"]
    lines = [f"| side | n | mean loss | std | diff vs {baseline} (nats) | 95 % CI (Welch) "
             "| ppl change | TOST p | verdict |", "|---|---:|---:|---:|---:|---|---:|---:|---|"]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        if r["side"] == baseline:
            lines.append(f"| {baseline} (baseline) | {r['n']} | {num(r['mean_loss'], '.4f')} | "
                         f"{num(r['std_loss'], '.4f')} | | | | | |")
            continue
        ci = ("-" if r["ci_low"] is None
              else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
        change = "-" if r["diff"] is None else f"{ppl_change(r['diff']):+.2f} %"
        lines.append(f"| {r['side']} | {r['n']} | {num(r['mean_loss'], '.4f')} | "
                     f"{num(r['std_loss'], '.4f')} | {num(r['diff'], '+.4f')} | {ci} | {change} "
                     f"| {num(r['p_tost'], '.3f')} | {r['verdict']} |")
    lines.append(f"margin ±{margin:.5f} nats per token (±{ppl_change(margin):.2f} % of "
                 f"perplexity); the interval: scipy.stats.ttest_ind(equal_var=False); the TOST: "
                 f"statsmodels ttost_ind(usevar='unequal'), equivalent when p < {ALPHA}")
    return lines


def run_blocks(record, ends, hp, stream_positions):
    """``{end: mean training loss of the block}`` of one run at the block ``ends``."""
    if record.get("train_progress"):  # an engine: running means, re-cut at the ends
        return block_losses([p for p in record["train_progress"] if p[0] in ends],
                            stream_positions, hp, record["seed"])
    intervals = dict(record["train_intervals"])  # the reference: equal intervals' means
    steps, blocks, start = sorted(intervals), {}, 0
    for end in ends:
        blocks[end] = float(np.mean([intervals[s] for s in steps if start < s <= end]))
        start = end
    return blocks


def curve_table(records, sides, hp, stream_positions):
    """Mean training loss per block of windows, averaged over each side's seeds, and each
    side's difference from the first with the count of seeds below it; [] without curves.

    Blocks end where every run has a figure: every 100 windows for the engines, every
    200 when the reference (its log's interval means) is in.
    """
    runs = {side: {} for side in sides}
    for r in records:
        if r["status"] == "ok" and r["side"] in runs and (r.get("train_progress")
                                                          or r.get("train_intervals")):
            runs[r["side"]][r["seed"]] = r
    if len([side for side in sides if len(runs[side]) > 1]) < 2:
        return []
    base, others = sides[0], [side for side in sides[1:] if runs[side]]
    ends = sorted(set.intersection(*(
        {step for step, _ in (r.get("train_progress") or r["train_intervals"])}
        for side in [base, *others] for r in runs[side].values())))
    blocks = {side: {seed: run_blocks(r, ends, hp, stream_positions)
                     for seed, r in runs[side].items()} for side in [base, *others]}
    lines = ["| windows | " + " | ".join(f"{side} (n = {len(blocks[side])})"
                                         for side in [base, *others]) + " | "
             + " | ".join(f"{side} − {base} (seeds below)" for side in others) + " |",
             "|---|" + "---:|" * (1 + 2 * len(others))]
    start = 1
    for end in (e for e in ends if all(e in b for side in blocks
                                       for b in blocks[side].values())):
        means = {side: np.mean([b[end] for b in blocks[side].values()])
                 for side in [base, *others]}
        below = {side: sum(blocks[side][seed][end] < blocks[base][seed][end]
                           for seed in blocks[side] if seed in blocks[base]) for side in others}
        shared = {side: sum(seed in blocks[base] for seed in blocks[side]) for side in others}
        lines.append(f"| {start}-{end} | " + " | ".join(f"{m:.3f}" for m in means.values())
                     + " | " + " | ".join(f"{means[side] - means[base]:+.3f} "
                                          f"({below[side]}/{shared[side]})" for side in others)
                     + " |")
        start = end + 1
    return lines


def estimate_lines(records, sides, hp, full_windows, seeds):
    """What the full run takes, from the smoke run's own step times and overheads."""
    lines, total = [], 0.0
    for side in sides:
        done = [r for r in records if r["side"] == side and r["status"] == "ok"
                and r.get("step_median_s")]
        if not done:
            lines.append(f"  {side}: no step time measured")
            continue
        step = float(np.median([r["step_median_s"] for r in done]))
        overhead = float(np.median([r["wall_s"] - r["windows"] * r["step_median_s"]
                                    for r in done if r.get("windows")] or [0.0]))
        per_run = overhead + full_windows * hp["epochs"] * step  # overhead: its validations too
        total += per_run * seeds
        lines.append(f"  {side}: median step {step:.2f} s, start-up and validation about "
                     f"{overhead:.0f} s: about {per_run / 60:.0f} min per seed")
    return [f"full run estimate ({full_windows} windows per epoch, {hp['epochs']} epoch(s), "
            f"{seeds} seeds): about {total / 3600:.1f} h"] + lines


def write_results(folder, settings, records, rows):
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["side", "seed", "status", "valid_loss", "valid_ppl", "train_loss", "n_params",
              "windows", "threads", "gpus", "device", "step_median_s", "train_s", "wall_s",
              "log"]
    with open(folder / "fidelity.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fields, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({**r, "valid_ppl": perplexity(r["valid_loss"])
                             if r.get("valid_loss") is not None else None})
    (folder / "fidelity.json").write_text(json.dumps(
        {"settings": settings, "runs": records, "summary": rows}, indent=2) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS),
                        help="the engines, the first the baseline (default: all)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per side (default 5)")
    parser.add_argument("--first-seed", type=int, default=28,
                        help="seeds first..first+N-1 (default 28, the reference's PTB seed)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="smoke run: cut every training stream to N*bptt+1 positions "
                             "(about N windows per epoch), in the reference too")
    parser.add_argument("--margin", type=margin_type, default=math.log(1.01),
                        help="equivalence margin on the mean per-token loss: nats, or a share "
                             "of perplexity such as 2%% (default log(1.01), 1%%)")
    parser.add_argument("--reference", metavar="DIR",
                        help="a checkout of zihangdai/mos to copy (default: git clone)")
    parser.add_argument("--no-reference", action="store_true", help="engines only")
    parser.add_argument("--masks", choices=list(MASKS), default="native",
                        help="the engines' dropout masks: their own (native), drawn by NumPy "
                             "(numpy: pytorch, tensorflow), by torch.rand (torch-rand: "
                             "pytorch) or by tf.random.stateless_uniform from other seeds "
                             "(tf-stateless: tensorflow), keyed as the engine's with other "
                             "site seeds (tf-site-seeds: tensorflow) or with those Keras "
                             "drew in the next seed's run (tf-crossed-seeds: tensorflow), "
                             "or the engine's own through the seams (tf-engine: tensorflow, "
                             "the control); a run of another source is kept under its own key")
    parser.add_argument("--mask-sites", nargs="+", metavar="SITE",
                        choices=sorted({s for sites in MASK_SITES.values() for s in sites}),
                        help="with --masks: only these of the engine's mask sites from the "
                             "source, the rest its own (tensorflow: "
                             + ", ".join(MASK_SITES["tensorflow"]) + "; default all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of PTB's train/valid/test.txt (default ../shared/data/ptb)")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "fidelity",
                        help="folder for fidelity.csv, fidelity.json and the runs' logs "
                             "(default results/fidelity)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per run (default: the usable cores over --parallel)")
    parser.add_argument("--gpus", type=int, default=0, metavar="N",
                        help="train each engine run on N GPUs (mosbench train --gpus N), kept "
                             "under keys apart from CPU runs; needs --no-reference, the "
                             "reference runs on the CPU only (default 0: the CPU)")
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="up to K runs at once, each its own process with --threads "
                             "threads, e.g. 4 on one big GPU; with K > 1 the step times say "
                             "nothing about speed, only the losses count (default 1)")
    parser.add_argument("--fresh", action="store_true",
                        help="train every run, reusing none kept in --results/runs")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: the table from the runs kept in --results/runs")
    parser.add_argument("--code", action="append", default=[], metavar="SIDE=REV",
                        help="with --report: read SIDE's runs kept under its code at git "
                             "revision REV (a commit it was trained at), not this checkout's; "
                             "repeat per side")
    parser.add_argument("--work", type=Path,
                        help="scratch folder, kept (default: a temporary one, removed)")
    parser.add_argument("--resume", action="store_true",
                        help="keep --work's runs: a run paused there (SIGTERM) resumes from "
                             "its checkpoint instead of starting again")
    args = parser.parse_args(argv)
    if args.resume and args.work is None:
        parser.error("--resume needs the --work folder of the paused run")
    if args.seeds < 1 or args.epochs < 1 or (args.max_steps is not None and args.max_steps < 1):
        parser.error("--seeds, --epochs and --max-steps must be at least 1")
    if args.parallel < 1 or (args.threads is not None and args.threads < 1) or args.gpus < 0:
        parser.error("--parallel and --threads must be at least 1, --gpus at least 0")
    if args.gpus and not args.no_reference:
        parser.error(f"--gpus {args.gpus} trains the engines on GPUs, but the reference runs on "
                     "the CPU only (its GPU path is neither patched nor checked): add "
                     "--no-reference")
    if args.threads is None:
        args.threads = max(1, len(os.sched_getaffinity(0)) // args.parallel)
    if args.fresh and args.report:
        parser.error("--fresh trains every run and --report none: give one of them")
    try:
        args.code = parse_code_revisions(args.code, args.frameworks)
    except ValueError as exc:
        parser.error(str(exc))
    if args.masks != "native":
        wrong = [f for f in args.frameworks if f not in MASKS[args.masks]]
        if wrong:
            parser.error(f"--masks {args.masks}: not available for {', '.join(wrong)}; "
                         f"allowed: {', '.join(MASKS[args.masks])}")
        if not args.no_reference:
            parser.error(f"--masks {args.masks} changes the engines' masks, not the "
                         "reference's: add --no-reference")
    if args.mask_sites is not None:
        if args.masks == "native":
            parser.error("--mask-sites names where --masks's source draws: give --masks too")
        wrong = [f for f in args.frameworks if f not in MASK_SITES]
        if wrong:
            parser.error(f"--mask-sites: {', '.join(wrong)} draws every mask through one seam; "
                         f"allowed for {', '.join(MASK_SITES)} only")
    if args.code and not args.report:
        parser.error("--code reads runs kept under another commit's code; it needs --report "
                     "(a run trained now runs this checkout's code)")
    try:
        import statsmodels  # noqa: F401
    except ImportError:
        parser.error("needs statsmodels: .venv/bin/pip install statsmodels==0.15.0")

    config = load_config(REPO / "config" / "config.yaml")
    check_ptb(args.data, config)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    scratch = Path(tempfile.mkdtemp(prefix="mosbench-fidelity-")) if args.work is None \
        else args.work
    scratch.mkdir(parents=True, exist_ok=True)
    work = scratch / "mosbench"
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    logs = args.results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, config, seeds, scratch, work, logs)
    finally:
        if args.work is None:
            shutil.rmtree(scratch, ignore_errors=True)


def run(args, config, seeds, scratch, work, logs):
    overrides = {**SCALED, "epochs": args.epochs}
    # On a GPU every window length is a long compile: JAX's runs share them (module docstring).
    jax_cache = (scratch / "jax-compilation-cache" if args.gpus and "jax" in args.frameworks
                 else None)
    config_path, hp = write_config(work, overrides, args.threads, jax_cache)
    full_positions = len(read_tokens(args.data / "train.txt")) // hp["batch_size"]
    positions = args.max_steps * hp["bptt"] + 1 if args.max_steps else None
    if positions and positions >= full_positions:
        positions = None  # the cap is past the epoch: a full run
    sides = list(args.frameworks)

    print(f"fidelity: {DATASET} {MODEL} preset with "
          + ", ".join(f"{k} {v}" for k, v in overrides.items()) + f"; seeds {seeds[0]}-"
          f"{seeds[-1]}; baseline {sides[0]}")
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    machine = machine_lines(args.threads, args.gpus, args.parallel)
    for line in machine:
        print(line)
    kernels = kernel_env()
    if kernels:
        print("kernels: every run with " + " ".join(f"{k}={v}" for k, v in kernels.items())
              + ", kept under keys of their own (the plain runs are not reused)")
    print(f"data: {args.data} (sha256 of the three files checked against the config)")
    print(f"each engine run: mosbench --config {config_path} train {DATASET} {MODEL} "
          f"--framework F --seed S --gpus {args.gpus} (in {work})")
    if jax_cache is not None:
        print(f"jax: its runs share one persistent compilation cache, {jax_cache}")
    if args.masks != "native":
        print(f"masks: the engines' dropout masks from {args.masks} "
              f"({MASK_SOURCES.relative_to(REPO)}/sitecustomize.py), seeded with the run's seed"
              + ("" if args.mask_sites is None
                 else f"; at {', '.join(args.mask_sites)} only, the rest the engine's own"))
    if positions:
        print(f"SMOKE RUN, not a result: every training stream cut to {positions} positions "
              f"(--max-steps {args.max_steps}: about {args.max_steps} windows of the "
              f"{window_count(full_positions, hp, seeds[0])} of an epoch)")

    reference_note = reference_code = None
    if args.no_reference:
        reference_note = "reference: not run (--no-reference)"
    elif (why := reference_mismatch(hp)) is not None:
        reference_note = f"reference: skipped, its code fixes what this run changes: {why}"
    else:
        source, commit = fetch_reference(args.reference, scratch)
        if source is None:
            reference_note = (f"reference: skipped, {commit}; give a checkout with "
                              "--reference DIR")
        else:
            code = scratch / "reference-code"
            if code.exists():
                shutil.rmtree(code)
            try:
                done = patch_reference(source, code, positions)
            except ValueError as exc:
                reference_note = f"reference: skipped, {exc}"
            else:
                sides.append(REFERENCE)
                reference_code = commit + ":" + hashlib.sha256(json.dumps(
                    [REFERENCE_PATCHES, STEP_CAP_ANCHOR]).encode()).hexdigest()[:16]
                print(f"reference: zihangdai/mos {commit} from {args.reference or REFERENCE_URL}"
                      f", copied to {code} and patched there:")
                for line in done:
                    print(f"  {line}")
                print("  unchanged: the rest, e.g. embedding dropout's padding_idx=-1 (the last "
                      "word's row gets no gradient through the lookup) and gc.collect() per "
                      "chunk")
    if reference_note:
        print(reference_note)
    print()

    if not args.report:
        prepare_data(work, args.data, config_path, hp, positions, logs)
    stream_positions = positions or full_positions
    # the reference's ms/batch lines every 200 steps; a few in a smoke run
    log_interval = max(2, args.max_steps // 4) if positions else 200
    settings = {"command": shlex.join([sys.executable, *sys.argv]), "seeds": seeds,
                "sides": sides, "hparams": hp, "margin": args.margin,
                "max_steps": args.max_steps, "stream_positions": stream_positions,
                "machine": machine, "reference": reference_note,
                "smoke": bool(positions), "masks": args.masks, "mask_sites": args.mask_sites,
                "gpus": args.gpus, "parallel": args.parallel,
                "jax_compilation_cache": None if jax_cache is None else str(jax_cache),
                "kernels": kernels}
    codes = {side: code_hash("train", side) for side in args.frameworks}
    for side, revision in args.code.items():
        try:
            commit, codes[side] = code_hash_at(revision, side, scratch)
        except ValueError as exc:
            print(f"fidelity: {exc}", file=sys.stderr)
            return 2
        print(f"{side}: runs kept under its code at {commit} (train code hash {codes[side]})")
    settings["codes"] = {side: args.code.get(side, "this checkout") + f" ({code})"
                         for side, code in codes.items()}
    mask_sites = {side: chosen_sites(args.mask_sites, side) for side in args.frameworks}
    device = gpu_label(args.gpus)
    engine_env = engine_environment(args.gpus, args.parallel)
    plan, ended, jobs = [], {}, {}  # the runs in the table's order; position -> record, job

    def in_order():
        return [ended[position] for position in sorted(ended)]

    def finished(position, record):
        side, seed, key = plan[position]
        record.setdefault("threads", args.threads)
        record.setdefault("gpus", 0 if side == REFERENCE else args.gpus)
        if kernels:
            record.setdefault("kernels", kernels)
        if record["gpus"]:
            record.setdefault("device", device)
        ended[position] = record
        if record["status"] == "ok":
            store_run(args.results, record, key)
            step = record.get("step_median_s")
            params = record.get("n_params")
            print(f"{side} seed {seed}: valid ppl {perplexity(record['valid_loss']):.2f} "
                  f"(loss {record['valid_loss']:.5f}), "
                  f"{'?' if params is None else f'{params:,}'} parameters, median step "
                  f"{'-' if step is None else f'{step:.3f} s'}, {record['wall_s']:.0f} s "
                  f"in all, {record['threads']} threads"
                  + (f", {record['gpus']} x {record['device']}" if record["gpus"] else ""),
                  flush=True)
        else:
            print(f"{side} seed {seed}: {record['status']}", flush=True)
        write_results(args.results, settings, in_order(),
                      summarise(in_order(), sides, args.margin))

    def train(side, seed):
        if side == REFERENCE:
            record = run_reference(seed, scratch / "reference-code", args.data, hp,
                                   args.threads, scratch, logs, log_interval)
            record["windows"] = window_count(stream_positions, hp, seed, hp["epochs"],
                                             reference=True)
        else:
            record = run_engine(side, seed, work, config_path, logs, args.masks,
                                mask_sites[side], args.gpus, engine_env)
            record["windows"] = window_count(stream_positions, hp, seed, hp["epochs"])
        return record

    for seed in seeds:
        for side in sides:
            code = reference_code if side == REFERENCE else codes[side]
            if side != REFERENCE:
                code = masked_code(code, args.masks, mask_sites[side])
            key = run_key(side, seed, hp, stream_positions, code,
                          0 if side == REFERENCE else args.gpus, kernels)
            plan.append((side, seed, key))
            record = None if args.fresh else stored_run(args.results, side, seed, key)
            if record is not None:
                print(f"{side} seed {seed}: kept from an earlier invocation "
                      f"({args.results / 'runs'})")
                # kept before runs recorded it: from its log, if the log is still its own
                if side == REFERENCE and not record.get("train_intervals"):
                    record["train_intervals"] = interval_losses(record.get("log", ""),
                                                                record["valid_loss"])
                elif side != REFERENCE and not record.get("train_progress"):
                    record["train_progress"] = progress_losses(record.get("log", ""),
                                                               record["valid_loss"])
                finished(len(plan) - 1, record)
            elif args.report:
                print(f"{side} seed {seed}: no kept run (--report trains nothing)")
            else:
                jobs[len(plan) - 1] = functools.partial(train, side, seed)
    run_all(jobs, args.parallel, finished)

    records = in_order()
    rows = summarise(records, sides, args.margin)
    print("\nvalidation perplexity" + (" (SMOKE RUN, not a result)" if positions else ""))
    for line in seed_table(records, sides, seeds):
        print(line)
    print()
    for line in comparison_table(rows, args.margin):
        print(line)
    curves = curve_table(records, sides, hp, stream_positions)
    if curves:
        print("\ntraining loss per block of windows (nats; each run's mean over the block, "
              "from its progress lines, the reference's from its interval lines; then the "
              "mean over seeds)")
        for line in curves:
            print(line)
    if positions:
        print()
        if args.parallel > 1:
            print(f"(the runs shared the machine, up to {args.parallel} at once: their step "
                  "times, and so this estimate, are not a speed)")
        for line in estimate_lines(records, sides, hp,
                                   window_count(full_positions, hp, seeds[0]), len(seeds)):
            print(line)
    write_results(args.results, settings, records, rows)
    print(f"\nwrote {args.results / 'fidelity.csv'}, {args.results / 'fidelity.json'}, "
          f"logs in {args.results / 'logs'}")
    complete = len(records) == len(seeds) * len(sides)
    return 0 if complete and all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
