"""Training and evaluation throughput of a preset: one framework's engine against another side.

Each framework runs in its own worker process (so threads, allocators and
peak memory are its own) and the parent interleaves them A B A B: a block of
timed training steps of one, then of the other, then evaluation blocks, for
``--rounds`` rounds, after a warm-up (tracing, allocation) that is not timed.
A training step is the whole update: forward, backward, clipping by global
norm, SGD with weight decay; an evaluation step is a forward pass at the
preset's ``eval_batch_size`` with the state carried. The ``tensorflow``,
``pytorch`` and ``jax`` sides are the project's engines (``Engine.train_step``,
``Engine.eval_window``), so the figures are those a pipeline job gets (JAX's
compiles, one per window shape, fall in the warm-up; its worker starts with
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set, so that on a shared GPU it
leaves the other side its memory); the
``reference`` side is ``torch_reference.py``, an independent PyTorch
implementation written as a user would, to show the engine is no slower.

Printed: tokens/s, median and p95 step time, the worker's peak memory (host
RSS; the device allocator's peak on a GPU), the model's matmul FLOPs per
token from its shapes (forward; training counts 3x), and the share of a
matmul peak that each framework's own large fp32 GEMM reaches in the same
run. The last line is ``ratio train=X eval=Y`` (the first side over the
second, tokens/s from the medians).

Usage::

    .venv/bin/python benchmarks/throughput.py --preset mos-ptb --compare pytorch
    .venv/bin/python benchmarks/throughput.py --preset mos-ptb --framework pytorch \
        --compare reference
    .venv/bin/python benchmarks/throughput.py --preset lstm-wt2 --framework tensorflow
    .venv/bin/python benchmarks/throughput.py --preset awd-ptb --framework jax --compare pytorch

Input tokens are uniform random ids (speed does not depend on them). Run it
alone: on 2 cores anything else busy skews it.
"""

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name -> (config dataset, project model, vocabulary size); hyperparameters from config.yaml
PRESETS = {
    "mos-ptb": ("ptb", "awd-lstm-mos", 10000),
    "awd-ptb": ("ptb", "awd-lstm", 10000),
    "lstm-wt2": ("wikitext2", "lstm", 33278),
}


def preset_hparams(name, overrides=None):
    """(model, vocabulary size, hyperparameters) of a preset, ``overrides`` applied."""
    sys.path.insert(0, str(REPO / "src"))
    from mosbench.config import load_config, preset

    dataset, model, vocab = PRESETS[name]
    hp = preset(load_config(REPO / "config" / "config.yaml"), dataset, model)
    return model, vocab, {**hp, **(overrides or {})}


def parse_override(text):
    """``key=value`` with a YAML value (``xla_decoder=false``, ``batch_size=40``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def flops_per_token(model, vocab, hp):
    """Forward matmul FLOPs (2 per multiply-add) per token, from the layer shapes."""
    def lstm(inp, hid):
        return 2 * 4 * hid * (inp + hid)

    if model == "lstm":
        sizes = [hp["nhid"]] * hp["nlayers"]
        inputs = [hp["emsize"]] + sizes[:-1]
        return sum(map(lstm, inputs, sizes)) + 2 * hp["nhid"] * vocab
    sizes = [hp["nhid"]] * (hp["nlayers"] - 1) + [hp["nhidlast"]]
    inputs = [hp["emsize"]] + sizes[:-1]
    total = sum(map(lstm, inputs, sizes))
    if model == "awd-lstm":
        return total + 2 * hp["emsize"] * vocab
    k, e, last = hp["n_experts"], hp["emsize"], hp["nhidlast"]
    return total + 2 * last * k + 2 * last * k * e + 2 * k * e * vocab


def windows(vocab, batch, bptt, count, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(count, batch, bptt + 1), dtype=np.int32)
    return [(w[:, :-1].copy(), w[:, 1:].copy()) for w in ids]


def peak_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --- the framework sides, each built inside its worker process ---

class EngineSide:
    """A pipeline job's own steps: the framework's engine (``mosbench.engines``)."""

    def __init__(self, framework, model_name, vocab, hp):
        from mosbench.engines import load_engine

        self.framework = framework
        self.engine = load_engine(framework, gpus=int(gpu_available(framework)), seed=0,
                                  precision=hp.get("matmul_precision", "float32"))
        self.engine.build(model_name, vocab, hp)
        self.engine.prepare_training(hp, hp["batch_size"])
        self.lr = hp["lr"]
        self.states = {}

    def _state(self, batch):
        return self.states.get(batch) or self.engine.initial_state(batch)

    def train_step(self, inputs, targets):
        loss, self.states[inputs.shape[0]] = self.engine.train_step(
            inputs, targets, self._state(inputs.shape[0]), self.lr, False)
        return loss  # fetched: the step has finished

    def eval_step(self, inputs, targets):
        loss, self.states[inputs.shape[0]] = self.engine.eval_window(
            inputs, targets, self._state(inputs.shape[0]))
        return loss

    def matmul_gflops(self):
        return GEMM[self.framework]()

    def device_peak_mib(self):
        return self.engine.allocator_peak_mb()[0]

    def parameter_count(self):
        return self.engine.n_params


def gpu_available(framework):
    if framework == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if framework == "jax":
        import jax

        try:
            return bool(jax.devices("gpu"))
        except RuntimeError:  # no GPU backend in this jaxlib, or no GPU
            return False
    import torch

    return torch.cuda.is_available()


def tensorflow_gemm(n=2048, repeats=10):
    """GFLOP/s of TensorFlow's fp32 n^3 matmul on its default device."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    f = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
    float(f(a, b))
    start = time.perf_counter()
    for _ in range(repeats):
        float(f(a, b))
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def pytorch_gemm(n=2048, repeats=10):
    """GFLOP/s of PyTorch's fp32 n^3 matmul on its default device."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    float((a @ b).sum())
    start = time.perf_counter()
    for _ in range(repeats):
        float((a @ b).sum())
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def jax_gemm(n=2048, repeats=10):
    """GFLOP/s of JAX's fp32 n^3 matmul (precision highest: no TF32) on its default device."""
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(key, (n, n), jnp.float32)
            for key in jax.random.split(jax.random.PRNGKey(0)))
    f = jax.jit(lambda a, b: jnp.sum(jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)))
    f(a, b).block_until_ready()  # compiled, and the inputs made
    start = time.perf_counter()
    for _ in range(repeats):
        f(a, b).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


GEMM = {"tensorflow": tensorflow_gemm, "pytorch": pytorch_gemm, "jax": jax_gemm}


# Settings that change which kernels the libraries pick, so how they round: a run under
# one of them is another run of the same seed (fidelity.py keeps it under a key of its own).
KERNEL_CHOICE_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
                     "DNNL_DEFAULT_FPMATH_MODE", "TF_ENABLE_ONEDNN_OPTS",
                     "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "LD_PRELOAD", "XLA_FLAGS")


def kernel_settings():
    """The :data:`KERNEL_CHOICE_ENV` variables set (non-empty) in this process's environment."""
    return {name: os.environ[name] for name in KERNEL_CHOICE_ENV if os.environ.get(name)}


def cpu_description():
    """The CPU and what decides which kernels the libraries pick on it."""
    sys.path.insert(0, str(REPO / "src"))
    from mosbench.measurement.provenance import cpu_model

    info = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    # the name with family and model: one name covers several generations ("AMD EPYC")
    parts = [f"{cpu_model() or 'unknown'}, {info.get('vendor_id', '?')}, "
             f"{len(os.sched_getaffinity(0))} usable cores",
             "ISA " + (" ".join(isa) or "none of avx2/avx512f/avx512_bf16/amx_bf16")]
    # Printed so a run says what it ran with.
    parts += [f"{name}={value}" for name, value in kernel_settings().items()]
    parts += [f"{name}={os.environ[name]}" for name in
              ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
              if os.environ.get(name)]
    if info.get("vendor_id") == "AuthenticAMD" and "LD_PRELOAD" not in os.environ:
        parts.append("MKL (PyTorch's CPU GEMM) takes its non-Intel path on this vendor")
    return "; ".join(parts)


def runtime_settings(framework):
    """Threads and kernel libraries of a worker's framework, read back from the framework."""
    if framework == "tensorflow":
        import tensorflow as tf

        intra = tf.config.threading.get_intra_op_parallelism_threads() or "default"
        inter = tf.config.threading.get_inter_op_parallelism_threads() or "default"
        onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"
        return (f"TensorFlow {tf.__version__}, intra-op threads {intra}, inter-op {inter}, "
                f"oneDNN {'on' if onednn else 'off'}")
    if framework == "jax":
        import jax
        import jaxlib

        device = jax.devices()[0]
        flags = os.environ.get("XLA_FLAGS", "")
        threads = ("1 (xla_cpu_multi_thread_eigen=false)" if
                   "--xla_cpu_multi_thread_eigen=false" in flags else "one per core (XLA's)")
        return (f"JAX {jax.__version__}, jaxlib {jaxlib.__version__}, device {device.platform}:"
                f"{device.id} ({device.device_kind}), default matmul precision "
                f"{jax.config.jax_default_matmul_precision}, XLA_FLAGS {flags or 'unset'}, "
                + (f"CPU threads {threads}" if device.platform == "cpu" else
                   "XLA_PYTHON_CLIENT_PREALLOCATE "
                   f"{os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', 'unset (true)')}"))
    import torch

    blas = "MKL" if torch.backends.mkl.is_available() else "non-MKL BLAS"
    return (f"PyTorch {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
            f"inter-op {torch.get_num_interop_threads()}, GEMM {blas}, oneDNN "
            f"{'on' if torch.backends.mkldnn.is_available() else 'off'}, kernels "
            f"{torch.backends.cpu.get_cpu_capability()}")


class ReferenceSide:
    """``torch_reference.py``: an independent PyTorch implementation, written as a user would."""

    def __init__(self, model_name, vocab, hp):
        import torch

        sys.path.insert(0, str(REPO / "benchmarks"))
        from torch_reference import TorchSide

        torch.manual_seed(0)
        self.torch = torch
        self.gpu = torch.cuda.is_available()
        self.side = TorchSide(model_name, vocab, hp, "cuda" if self.gpu else "cpu")
        self.train_step, self.eval_step = self.side.train_step, self.side.eval_step

    def matmul_gflops(self):
        return pytorch_gemm()

    def device_peak_mib(self):
        return self.torch.cuda.max_memory_allocated() / 2**20 if self.gpu else None

    def parameter_count(self):
        return self.side.parameter_count()


SIDES = {"tensorflow": lambda *a: EngineSide("tensorflow", *a),
         "pytorch": lambda *a: EngineSide("pytorch", *a),
         "jax": lambda *a: EngineSide("jax", *a),
         "reference": ReferenceSide}


def worker(framework, preset, overrides, conn):
    """Build one side, then answer the parent's commands until told to stop."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if framework == "jax":  # before JAX starts: take what it uses, not most of a shared GPU
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    model_name, vocab, hp = preset_hparams(preset, overrides)
    side = SIDES[framework](model_name, vocab, hp)
    data = {
        "train": windows(vocab, hp["batch_size"], hp["bptt"], 4, seed=1),
        "eval": windows(vocab, hp["eval_batch_size"], hp["bptt"], 4, seed=2),
    }
    conn.send({"params": side.parameter_count(), "runtime": runtime_settings(framework)})
    while True:
        command, arg = conn.recv()
        if command == "stop":
            break
        if command in ("train", "eval"):
            step = side.train_step if command == "train" else side.eval_step
            times = []
            for i in range(arg):
                inputs, targets = data[command][i % len(data[command])]
                start = time.perf_counter()
                step(inputs, targets)
                times.append(time.perf_counter() - start)
            conn.send(times)
        elif command == "gemm":
            conn.send(side.matmul_gflops())
        elif command == "memory":
            conn.send({"rss_mib": peak_rss_mib(), "device_mib": side.device_peak_mib()})


class Worker:
    def __init__(self, framework, preset, overrides):
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, args=(framework, preset, overrides, child),
                                       daemon=True)
        self.process.start()
        self.info = self.conn.recv()

    def ask(self, command, arg=None):
        self.conn.send((command, arg))
        return self.conn.recv()

    def stop(self):
        self.conn.send(("stop", None))
        self.process.join()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--framework", choices=sorted(SIDES), default="tensorflow",
                        help="the first side (alone without --compare)")
    parser.add_argument("--compare", choices=sorted(SIDES),
                        help="time the first side and this one side by side, A B A B")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=None,
                        help="timed training steps per block (default: about 10 s of work)")
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--precision", choices=["float32", "tf32", "mixed_bfloat16"],
                        help="the engines' matmul_precision (default: the preset's, float32); "
                             "a row of its own, never mixed with fp32 figures")
    parser.add_argument("--set", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="override a preset hyperparameter (repeatable)")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    overrides = dict(args.set)
    if args.precision:
        overrides["matmul_precision"] = args.precision
    model_name, vocab, hp = preset_hparams(args.preset, overrides)
    precision = hp.get("matmul_precision", "float32")
    frameworks = [args.framework, args.compare] if args.compare else [args.framework]
    if "reference" in frameworks and precision != "float32":
        parser.error("the reference side runs fp32 only; --precision needs two engines")
    workers = {fw: Worker(fw, args.preset, overrides) for fw in frameworks}
    warmup = {(fw, kind): w.ask(kind, args.warmup)  # tracing, allocation, first touch
              for fw, w in workers.items() for kind in ("train", "eval")}
    gemm = {fw: max(w.ask("gemm") for _ in range(2)) for fw, w in workers.items()}

    def block_steps(kind, requested):
        """Steps per block: as asked, or about 10 s at the first side's last warm-up step."""
        if requested:
            return requested
        return max(3, min(50, round(10 / warmup[frameworks[0], kind][-1])))

    steps = {"train": block_steps("train", args.train_steps),
             "eval": block_steps("eval", args.eval_steps)}
    times = {(fw, kind): [] for fw in frameworks for kind in steps}
    for _ in range(args.rounds):
        for kind in steps:
            for fw in frameworks:  # A B, then A B again next round
                times[fw, kind] += workers[fw].ask(kind, steps[kind])
    memory = {fw: w.ask("memory") for fw, w in workers.items()}
    for w in workers.values():
        w.stop()

    per_token = flops_per_token(model_name, vocab, hp)
    peak = max(gemm.values())
    tokens = {"train": hp["batch_size"] * hp["bptt"],
              "eval": hp["eval_batch_size"] * hp["bptt"]}
    print(f"preset {args.preset}: {model_name}, vocab {vocab:,}, batch {hp['batch_size']} "
          f"(eval {hp['eval_batch_size']}), bptt {hp['bptt']}, "
          f"{per_token / 1e6:.1f} MFLOP/token forward (matmuls)")
    if overrides:
        print("overrides: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
    print(f"cpu: {cpu_description()}")
    for fw, w in workers.items():
        print(f"{fw} runtime: {w.info['runtime']}")
    print("matmul peak (fp32 GEMM 2048^3, GFLOP/s): "
          + ", ".join(f"{fw} {g:.0f}" for fw, g in gemm.items()))
    print(f"rounds {args.rounds} x {steps['train']} train / {steps['eval']} eval steps, "
          f"after {args.warmup} warm-up steps each\n")
    print("| framework | precision | step | tokens/s | median (ms) | p95 (ms) | GFLOP/s "
          "| share of fp32 peak | peak RSS (MiB) | device peak (MiB) | parameters |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    speed = {}
    for fw in frameworks:
        for kind in steps:
            median, p95 = np.percentile(times[fw, kind], [50, 95])
            speed[fw, kind] = tokens[kind] / median
            gflops = speed[fw, kind] * per_token * (3 if kind == "train" else 1) / 1e9
            device = memory[fw]["device_mib"]
            print(f"| {fw} | {precision} | {kind} | {speed[fw, kind]:,.0f} | {median * 1e3:.1f} | "
                  f"{p95 * 1e3:.1f} | {gflops:.0f} | {gflops / peak:.0%} | "
                  f"{memory[fw]['rss_mib']:,.0f} | "
                  f"{'-' if device is None else f'{device:,.0f}'} | "
                  f"{workers[fw].info['params']:,} |")
    if args.compare:
        first, other = frameworks
        print(f"\nratio train={speed[first, 'train'] / speed[other, 'train']:.2f} "
              f"eval={speed[first, 'eval'] / speed[other, 'eval']:.2f}")


if __name__ == "__main__":
    main()
