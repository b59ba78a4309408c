"""The GPU smoke's PyTorch or JAX part that fits one GPU, in minutes, without TensorFlow.

For a single-GPU machine with PyTorch (2.11 or later) or, with ``--framework
jax``, JAX (0.10 or later, its CUDA plugin installed), offline, holding only
the project's tree: for each PTB model of ``--config`` (the presets and probe
settings of config/gpu-smoke.yaml by default) it runs, in a process of its own
so that no model's memory counts in another's figures,

* the strong-scaling probe on 1 GPU through the workflow's own code
  (:func:`mosbench.measurement.probe.run_probe`, ``framework=`` the one
  asked for): tokens/s (median and per timed block), median step time, the
  allocator's peak (PyTorch's, or JAX's ``memory_stats()`` peak) and NVML's
  peak of the process' device memory (``gpu_memory_peak_mb``);
* the cuDNN assertion: the PyTorch engine's ``assert_fused_lstm`` (under the
  engine's autocast, so in the dtype the steps run in), or for JAX one training
  step at the preset's batch and ``bptt``, whose compiled program must hold
  jaxlib's cuDNN RNN custom calls, forward and backward, for every layer and
  chunk (``JaxEngine.cudnn_calls``); before that the JAX engine refuses a GPU
  whose cuDNN LSTM parts from its scan (``recurrence.assert_cudnn_agrees``),
  and the row then says "failed" with the engine's words, as does the probe;
* a few evaluation windows at the preset's ``eval_batch_size``, timed.

JAX's processes run with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so that its
allocator takes what the model needs rather than most of the GPU, and NVML's
figure means what PyTorch's does. The JAX engine compiles one program per
window shape; a probe's windows, and the evaluation windows timed, are of one
length each, so the compiles fall in the untimed warm-up.

The data is a synthetic corpus with PTB's vocabulary of 10,000 words, written
to a temporary folder as text and turned into Parquet by the project's
tokeniser. (The project's Markov source, ``mosbench.data.synthetic``, needs a
dense 10,000 x 10,000 transition matrix and its SVD: minutes, not seconds, so
the words come from its word list with Zipf frequencies instead; the speed of
a step does not depend on which words they are.) It prints the versions
(torch, or jax and jaxlib; CUDA, cuDNN, GPU, driver) and one Markdown table,
and writes both as
JSON to ``--out``. ``--budget-s`` bounds the whole run: a model still running
then is stopped, the rest are not started, and the report says so.

Usage::

    python3 benchmarks/gpu_check.py --out "$OUT/gpu_check.json"    # the GPU machine
    python3 benchmarks/gpu_check.py --framework jax --out "$OUT/gpu_check_jax.json"
    .venv/bin/python benchmarks/gpu_check.py --cpu --steps 2          # the script itself, on a CPU

Needs numpy, pyarrow, PyYAML, psutil and jsonschema (the presets are
validated and completed by the config schema), torch for PyTorch or jax,
jaxlib and optax for JAX (not the other framework), and nvidia-ml-py for the
NVML figures (absent, with the reason, otherwise). Exit status: 0 when every
model ran (or the budget stopped the run) and cuDNN ran every LSTM; 1 when a
model failed or the assertion did; 2 when the check could not start.
"""

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VOCAB = 10_000  # PTB's
# Enough for every window of a probe to be fresh text (a probe window is at most
# 20 x 71 tokens) and for the evaluation windows at eval_batch_size 10.
TOKENS = {"train": 200_000, "valid": 20_000, "test": 5_000}
COMMON = ("numpy", "pyarrow", "yaml", "psutil", "jsonschema")
NEEDED = {"pytorch": (*COMMON, "torch"), "jax": (*COMMON, "jax", "jaxlib", "optax")}
NAMES = {"pytorch": "PyTorch", "jax": "JAX"}
# jsonschema and its dependencies, for a machine without it (and without a network).
WHEELS = ("jsonschema jsonschema-specifications referencing rpds-py "
          "(attrs and typing-extensions too, where absent)")
MIN_START_S = 10  # a model started with less left would only import its framework
COLUMNS = ("model", "parameters", "batch x bptt", "tokens/s (median)", "tokens/s per block",
           "step median (ms)", "warm-up (s)", "allocator peak (MiB)", "NVML peak (MiB)",
           "eval window median (ms)", "eval tokens/s", "cuDNN fused LSTM", "wall (s)")
TEXT = {"model", "tokens/s per block", "cuDNN fused LSTM"}  # left-aligned; figures right


# --- the corpus -------------------------------------------------------------------------------

def write_corpus(root, seed=0):
    """A tokenised corpus with exactly :data:`VOCAB` word types under ``root/data``; its path.

    Words are drawn with Zipf frequencies and sentence ends as in the project's
    synthetic source (its defaults), and the training split starts with every
    word once, so the tokeniser finds the whole vocabulary (it checks the count).
    """
    from mosbench.data.synthetic import DEFAULTS, word_list
    from mosbench.data.tokenise import tokenise
    from mosbench.io import write_json

    words = np.array(word_list(VOCAB), dtype=object)  # id 0 is <eos>
    rng = np.random.default_rng(seed)
    popularity = np.arange(1, VOCAB, dtype=np.float64) ** -DEFAULTS["zipf_exponent"]
    raw = Path(root) / "raw"
    raw.mkdir(parents=True)
    for split, count in TOKENS.items():
        ids = rng.choice(np.arange(1, VOCAB), size=count, p=popularity / popularity.sum())
        ids[rng.random(count) < DEFAULTS["eos_prob"]] = 0
        if split == "train":
            ids = np.concatenate([rng.permutation(np.arange(1, VOCAB)), ids])
        ids[-1] = 0
        ends = np.flatnonzero(ids == 0)
        starts = np.concatenate(([0], ends[:-1] + 1))
        # one sentence a line, without its <eos>: the tokeniser appends one to every line
        lines = (" ".join(words[ids[a:b]]) for a, b in zip(starts, ends, strict=True))
        (raw / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(raw / "source.json", {"name": "gpu-check", "kind": "zipf", "vocab_size": VOCAB,
                                     "tokens": TOKENS, "seed": seed})
    tokenise(raw, Path(root) / "data", expected_vocab=VOCAB)
    return Path(root) / "data"


# --- one model, in a process of its own -------------------------------------------------------

def run_model(job):
    """Probe, cuDNN assertion and evaluation windows of one model; 1 if any failed.

    The probe comes first, in a fresh process as in the workflow. The record is
    written to ``job["out"]`` after each part, so a run the budget stops keeps
    what it measured.
    """
    from mosbench.config import load_config, preset
    from mosbench.data.tokenise import load_split
    from mosbench.engines import load_engine
    from mosbench.io import write_json
    from mosbench.measurement.probe import run_probe
    from mosbench.workload import training_hparams

    model, gpus, out = job["model"], job["gpus"], Path(job["out"])
    framework = job["framework"]
    # the probe job's hyperparameters: the preset without the evaluation-only keys
    hp = training_hparams(preset(load_config(job["config"]), "ptb", model))
    if job["precision"]:
        hp["matmul_precision"] = job["precision"]
    threads = os.cpu_count() if not gpus else None
    record = {"model": model, "precision": hp["matmul_precision"],
              "batch": hp["batch_size"], "bptt": hp["bptt"]}
    if framework == "jax":  # what XLA started with in this process
        record["environment"] = {name: os.environ.get(name) for name in
                                 ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS")}
    errors = []
    try:
        record["probe"] = run_probe(job["data"], model_name=model, hparams=hp,
                                    seed=job["seed"], gpus=gpus, scaling="strong",
                                    steps=job["steps"], warmup=job["warmup"],
                                    repeats=job["repeats"], threads=threads,
                                    framework=framework)
    except Exception as exc:  # reported; the assertion below still says whether cuDNN runs
        errors.append(f"probe: {type(exc).__name__}: {exc}")
    write_json(out, {**record, "error": "; ".join(errors) or None})

    from mosbench.errors import MosbenchError

    try:  # a JAX GPU engine first checks that cuDNN's LSTM is the scan's, and may refuse
        engine = load_engine(framework, gpus=gpus, threads=threads, seed=job["seed"],
                             precision=hp["matmul_precision"])
    except MosbenchError as exc:
        record["cudnn"] = {"status": "failed", "detail": str(exc)}
        errors.append(f"cuDNN: {exc}")
        write_json(out, {**record, "error": "; ".join(errors)})
        return 1
    try:
        valid, meta = load_split(job["data"], "valid")
        if not gpus:
            record["cudnn"] = {"status": "skipped", "detail": "--cpu: cuDNN runs on a CUDA "
                               "device only, so there is nothing to assert"}
            engine.build(model, meta["vocab_size"], hp)
        elif framework == "jax":
            engine.build(model, meta["vocab_size"], hp)
            try:
                record["cudnn"] = {"status": "passed", "detail": _jax_cudnn(engine, hp)}
            except MosbenchError as exc:  # the engine's check of the compiled program
                record["cudnn"] = {"status": "failed", "detail": str(exc)}
                errors.append(f"cuDNN: {exc}")
        else:
            from mosbench.engines.pytorch.models import assert_fused_lstm

            try:
                engine.build(model, meta["vocab_size"], hp)  # asserts too, on a GPU
                with engine.replica.autocast():  # the dtype the steps compute in
                    assert_fused_lstm(engine.model)
                record["cudnn"] = {"status": "passed",
                                   "detail": "every LSTM weight on the GPU; aten::_cudnn_rnn ran"}
            except RuntimeError as exc:
                if not str(exc).startswith("the fused cuDNN LSTM"):
                    raise  # out of memory, say: not the assertion's answer
                record["cudnn"] = {"status": "failed", "detail": str(exc)}
                errors.append(f"cuDNN: {exc}")
        if record["cudnn"]["status"] != "failed":
            record["parameters"] = engine.n_params
            write_json(out, {**record, "error": "; ".join(errors) or None})
            record["eval"] = _eval_windows(engine, hp, valid, job)
    finally:
        engine.close()
    write_json(out, {**record, "error": "; ".join(errors) or None})
    return 1 if errors else 0


def _jax_cudnn(engine, hp):
    """One training step at the preset's shapes (learning rate 0: the weights stay), then
    the engine's check of its compiled program; the custom calls it found, in words."""
    from mosbench.engines.jax.models.cudnn_lstm import BACKWARD_TARGET, FORWARD_TARGET

    batch, bptt = hp["batch_size"], hp["bptt"]
    engine.prepare_training(hp, batch)
    tokens = np.zeros((batch, bptt), np.int32)
    engine.train_step(tokens, tokens, engine.initial_state(batch), 0.0, False)
    found = engine.cudnn_calls()[0]
    return (f"the training step compiled to {found[FORWARD_TARGET]} {FORWARD_TARGET} and "
            f"{found[BACKWARD_TARGET]} {BACKWARD_TARGET} custom calls (cuDNN's LSTM, forward "
            "and backward, every layer and chunk)")


def _eval_windows(engine, hp, valid, job):
    """Median time of ``eval_windows`` full evaluation windows after ``warmup`` untimed ones."""
    from mosbench.data.batching import batchify, windows

    batch, bptt = hp["eval_batch_size"], hp["bptt"]
    states, times = engine.initial_state(batch), []
    for i, (inputs, targets) in enumerate(windows(batchify(valid, batch), bptt)):
        if i == job["warmup"] + job["eval_windows"] or inputs.shape[1] < bptt:
            break
        began = time.perf_counter()
        _, states = engine.eval_window(inputs, targets, states)  # a float: synchronised
        if i >= job["warmup"]:
            times.append(time.perf_counter() - began)
    median = float(np.median(times))
    return {"windows": len(times), "batch": batch, "bptt": bptt, "window_median_s": median,
            "tokens_per_s": batch * bptt / median}


# --- the run ----------------------------------------------------------------------------------

def missing_modules(framework):
    return [name for name in NEEDED[framework] if importlib.util.find_spec(name) is None]


def child_env(framework):
    """A model's process' environment: for JAX, an allocator that takes what it uses."""
    if framework == "jax":  # read when JAX's GPU backend starts: set before the process is
        return {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    return None


def versions(gpus, framework="pytorch"):
    """The framework's, CUDA, cuDNN, GPU and driver (NVML), host: without starting CUDA in
    this process, whose memory would then sit on the GPU beside the models'."""
    if framework == "jax":
        return jax_versions(gpus)
    import torch

    from mosbench.engines.pytorch.engine import PyTorchEngine
    from mosbench.measurement.provenance import provenance

    built = PyTorchEngine.versions()
    record = provenance(built, gpus)
    record.update(cuda_build=torch.version.cuda, cudnn_build=built["cudnn"],
                  cuda_available=torch.cuda.is_available())
    return record


# Run in a process of its own: JAX has no way to list its devices without starting a backend,
# and one started here would hold GPU memory for the whole run.
JAX_DEVICES = """
import json, jax
try:
    gpus = jax.devices("gpu")
except RuntimeError:
    gpus = []
print(json.dumps({"backend": jax.default_backend(),
                  "gpus": [f"{d.platform}:{d.id} {d.device_kind}" for d in gpus]}))
"""


def jax_versions(gpus):
    """jax, jaxlib, optax, CUDA and cuDNN as jaxlib reports them, and the devices JAX sees
    (asked in a short child process on a GPU machine)."""
    from mosbench.engines.jax.engine import JaxEngine
    from mosbench.errors import MosbenchError
    from mosbench.measurement.provenance import provenance

    built = JaxEngine.versions()
    record = provenance(built, gpus)
    record.update(cuda_build=built["cuda"], cudnn_build=built["cudnn"], jax_backend="cpu",
                  jax_gpus=[], cuda_available=False)
    if gpus:
        done = subprocess.run([sys.executable, "-c", JAX_DEVICES], env=child_env("jax"),
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise MosbenchError("JAX could not list its devices: "
                                + (done.stderr.strip().splitlines() or ["(no output)"])[-1])
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        record.update(jax_backend=seen["backend"], jax_gpus=seen["gpus"],
                      cuda_available=bool(seen["gpus"]))
    return record


def run_all(args, settings, data, deadline, log_dir):
    """Each model in turn, in a child process, within the budget; the list of records."""
    records = []
    for model in settings["models"]:
        left = deadline - time.monotonic()
        if left < MIN_START_S:
            records.append({"model": model, "status": "not started",
                            "detail": f"{max(left, 0):.0f} s of the budget left"})
            continue
        out, log = log_dir / f"{model}.json", log_dir / f"{model}.log"
        job = {**settings, "model": model, "data": str(data), "out": str(out)}
        env = child_env(settings["framework"])
        began = time.monotonic()
        with open(log, "w") as sink:
            child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(job)],
                                     stdout=sink, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
            try:
                code = child.wait(timeout=left)
                status = "ok" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)  # the child's own session: it and its own
                child.wait()
                status = "stopped"
        record = json.loads(out.read_text()) if out.exists() else {"model": model}
        record.update(status=status, wall_s=time.monotonic() - began)
        if status == "stopped":
            record["detail"] = (f"the {args.budget_s:g} s budget ran out after "
                                f"{record['wall_s']:.0f} s")
        elif status == "failed":  # the child's own account, else its output's end
            record["detail"] = record.get("error") or "\n".join(
                log.read_text(errors="replace").splitlines()[-15:])
        print(f"[gpu_check] {model}: {status} in {record['wall_s']:.1f} s", file=sys.stderr,
              flush=True)
        records.append(record)
    return records


def _number(value, digits=0):
    return "—" if value is None else f"{value:,.{digits}f}"


def table(records):
    """The Markdown table: one row per model, "—" where a figure is absent (why: below it)."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "".join("---|" if c in TEXT else "---:|" for c in COLUMNS)]
    notes = []
    for r in records:
        probe, ev, cudnn = r.get("probe") or {}, r.get("eval") or {}, r.get("cudnn") or {}
        blocks = probe.get("tokens_per_s_blocks")
        step = probe.get("step_time_median_s")
        window = ev.get("window_median_s")
        cells = [r["model"], _number(r.get("parameters")),
                 f"{r['batch']} x {r['bptt']}" if "batch" in r else "—",
                 _number(probe.get("tokens_per_s")),
                 ", ".join(f"{b:,.0f}" for b in blocks) if blocks else "—",
                 _number(step and step * 1e3, 1), _number(probe.get("warmup_s"), 1),
                 _number(probe.get("allocator_peak_mb")),
                 _number(probe.get("gpu_memory_peak_mb")),
                 _number(window and window * 1e3, 1), _number(ev.get("tokens_per_s")),
                 cudnn.get("status", "—"), _number(r.get("wall_s"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
        if r["status"] != "ok":
            notes.append(f"- {r['model']}: {r['status']}: {r.get('detail', '')}")
        if cudnn.get("status") in ("failed", "skipped"):
            notes.append(f"- {r['model']}: cuDNN assertion {cudnn['status']}: {cudnn['detail']}")
        for key in ("allocator_peak_mb", "gpu_memory_peak_mb"):
            if key in (probe.get("absent") or {}):
                notes.append(f"- {r['model']}: {key} absent: {probe['absent'][key]}")
    return lines + ([""] + notes if notes else [])


def versions_block(record, framework="pytorch"):
    keys = ("framework_version", "cuda_build", "cudnn_build", "gpu_model", "nvidia_driver",
            "cuda_available", "python_version", "cpu_model", "hostname", "git_commit",
            "git_dirty")
    if framework == "jax":  # jax's version, then jaxlib's and optax's; the devices JAX sees
        keys = (*keys[:1], "libraries", *keys[1:5], "jax_backend", "jax_gpus", *keys[5:])
    return [f"- {key}: {record.get(key)}" for key in keys]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "gpu-smoke.yaml",
                        help="presets (presets.ptb) and probe settings (run.probes) "
                             "(default: config/gpu-smoke.yaml)")
    parser.add_argument("--framework", choices=sorted(NEEDED), default="pytorch",
                        help="the engine to check (default pytorch)")
    parser.add_argument("--models", nargs="+", help="default: the config's run.models")
    parser.add_argument("--steps", type=int, help="timed steps a block (default: run.probes)")
    parser.add_argument("--warmup", type=int, help="untimed steps (and evaluation windows) "
                                                   "first (default: run.probes; --cpu: 1)")
    parser.add_argument("--repeats", type=int, help="timed blocks (default: run.probes)")
    parser.add_argument("--eval-windows", type=int, default=None,
                        help="timed evaluation windows (default 10; --cpu: 2)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="seconds for the whole run, the corpus included (default 240)")
    parser.add_argument("--precision", choices=["float32", "tf32", "mixed_bfloat16"],
                        help="default: the preset's matmul_precision")
    parser.add_argument("--cpu", action="store_true",
                        help="run on the CPU (gpus=0), to check the script without a GPU")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one model's job, as JSON
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_model(json.loads(args.child))
    started = time.monotonic()
    deadline = started + args.budget_s
    missing = missing_modules(args.framework)
    if missing:
        print(f"gpu_check: missing Python packages: {', '.join(missing)}. Offline, carry them as "
              f"wheels (for jsonschema: {WHEELS}), install them with `pip install --no-index "
              "--no-deps --target DIR`, and run with PYTHONPATH=DIR", file=sys.stderr)
        return 2
    from mosbench.config import load_config, preset
    from mosbench.errors import MosbenchError
    from mosbench.study import probe_seed

    gpus = 0 if args.cpu else 1
    try:
        config = load_config(args.config)
        probes = config["run"]["probes"]
        settings = {
            "config": str(args.config), "framework": args.framework,
            "models": args.models or config["run"]["models"],
            "gpus": gpus, "seed": probe_seed(config),
            "steps": args.steps or probes["steps"],
            "warmup": args.warmup or (1 if args.cpu else probes["warmup"]),
            "repeats": args.repeats or probes["repeats"],
            "eval_windows": args.eval_windows or (2 if args.cpu else 10),
            "precision": args.precision, "budget_s": args.budget_s}
        for model in settings["models"]:
            preset(config, "ptb", model)  # an unknown model stops here, not in each child
        ran_on = versions(gpus, args.framework)
        if gpus and not ran_on["cuda_available"]:
            raise MosbenchError(f"{NAMES[args.framework]} sees no CUDA device: run on a GPU, "
                                "or with --cpu")
    except MosbenchError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        data = write_corpus(Path(tmp) / "corpus")
        records = run_all(args, settings, data, deadline, Path(tmp))
    elapsed = time.monotonic() - started
    stopped = [r["model"] for r in records if r["status"] in ("stopped", "not started")]
    failed = [r["model"] for r in records if r["status"] == "failed"
              or (r.get("cudnn") or {}).get("status") == "failed"]
    report = {"versions": ran_on, "settings": settings, "corpus": {"vocab_size": VOCAB,
              "tokens": TOKENS}, "models": records, "elapsed_s": elapsed,
              "stopped_early": bool(stopped), "failed": failed}

    device = "CPU (--cpu)" if args.cpu else f"1 GPU ({ran_on.get('gpu_model')})"
    lines = ["## Versions", "", *versions_block(ran_on, args.framework), "",
             f"## {NAMES[args.framework]} on {device}: strong-scaling probes, PTB presets of "
             f"{args.config.name}",
             "",
             f"Synthetic corpus, vocabulary {VOCAB:,}; probe: {settings['warmup']} warm-up + "
             f"{settings['repeats']} x {settings['steps']} timed steps; "
             f"{settings['eval_windows']} evaluation windows; {elapsed:.0f} s of a "
             f"{args.budget_s:g} s budget.", "", *table(records)]
    if stopped:
        lines += ["", f"Stopped early: the {args.budget_s:g} s budget ran out; not measured "
                      f"in full: {', '.join(stopped)}."]
    print("\n".join(lines), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
