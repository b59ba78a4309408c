"""A few minutes' check of the PyTorch engine on a GPU: the paper's MoS PTB preset, bounded.

For a GPU machine with PyTorch (2.11 or later) and without TensorFlow: builds
the ``ptb awd-lstm-mos`` preset of config/config.yaml through the PyTorch
engine on one GPU, asserts that the LSTMs run cuDNN's fused kernel, times
``--steps`` training steps and ``--steps`` evaluation windows on random ids
(after a warm-up), and prints the versions, tokens/s, the allocator's peak
(``torch.cuda.max_memory_allocated``) and NVML's peak of the device memory,
with the GPU's utilisation and power. It stops after ``--budget-s`` seconds
of timed work whatever ``--steps`` says.

Usage::

    python benchmarks/gpu_check.py [--steps 50] [--budget-s 240] [--precision float32]

Needs the project's source (``src/``) importable and nvidia-ml-py for the
NVML figures (absent, with the reason, otherwise). Prints a Markdown table.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mosbench.config import load_config, preset  # noqa: E402
from mosbench.engines import load_engine  # noqa: E402
from mosbench.measurement.hardware import HardwareMonitor, hardware_metrics  # noqa: E402

VOCAB = 10000  # PTB's


def timed(step, windows, budget_s):
    """Seconds per call of ``step`` over ``windows``, until they or the budget run out."""
    times, began = [], time.perf_counter()
    for inputs, targets in windows:
        start = time.perf_counter()
        step(inputs, targets)
        times.append(time.perf_counter() - start)
        if time.perf_counter() - began > budget_s:
            break
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--precision", choices=["float32", "tf32", "mixed_bfloat16"])
    args = parser.parse_args(argv)

    import torch

    from mosbench.engines.pytorch.models import assert_fused_lstm

    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch: this check needs a GPU")
    hp = preset(load_config(REPO / "config" / "config.yaml"), "ptb", "awd-lstm-mos")
    if args.precision:
        hp["matmul_precision"] = args.precision
    rng = np.random.default_rng(0)

    def windows(batch, count):
        ids = rng.integers(0, VOCAB, (count, batch, hp["bptt"] + 1), dtype=np.int32)
        return [(w[:, :-1].copy(), w[:, 1:].copy()) for w in ids]

    with HardwareMonitor(gpus=1) as monitor:
        engine = load_engine("pytorch", gpus=1, seed=0, precision=hp["matmul_precision"])
        engine.build("awd-lstm-mos", VOCAB, hp)
        assert_fused_lstm(engine.model)  # raises unless cuDNN's fused LSTM kernel runs
        engine.prepare_training(hp, hp["batch_size"])
        state = {"train": engine.initial_state(hp["batch_size"]),
                 "eval": engine.initial_state(hp["eval_batch_size"])}

        def train(inputs, targets):
            _, state["train"] = engine.train_step(inputs, targets, state["train"], hp["lr"],
                                                  False)

        def evaluate(inputs, targets):
            _, state["eval"] = engine.eval_window(inputs, targets, state["eval"])

        timed(train, windows(hp["batch_size"], args.warmup), args.budget_s)
        train_times = timed(train, windows(hp["batch_size"], args.steps), args.budget_s / 2)
        timed(evaluate, windows(hp["eval_batch_size"], args.warmup), args.budget_s)
        eval_times = timed(evaluate, windows(hp["eval_batch_size"], args.steps),
                           args.budget_s / 2)
    figures, absent = hardware_metrics(monitor)
    allocator, reason = engine.allocator_peak_mb()

    versions = engine.versions()
    print(f"GPU: {torch.cuda.get_device_name(0)}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)
          + f"; precision {hp['matmul_precision']}; cuDNN fused LSTM: asserted")
    print(f"preset ptb awd-lstm-mos: {engine.n_params:,} parameters, batch {hp['batch_size']} "
          f"(eval {hp['eval_batch_size']}), bptt {hp['bptt']}\n")
    print("| step | steps timed | tokens/s | median (ms) | p95 (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, times, batch in (("train", train_times, hp["batch_size"]),
                               ("eval", eval_times, hp["eval_batch_size"])):
        median, p95 = np.percentile(times, [50, 95])
        print(f"| {name} | {len(times)} | {batch * hp['bptt'] / median:,.0f} | "
              f"{median * 1e3:.1f} | {p95 * 1e3:.1f} |")
    print()

    def show(value, why, unit):
        return f"{value:,.0f} {unit}" if value is not None else f"absent ({why})"

    print(f"allocator peak: {show(allocator, reason, 'MiB')}")
    for key, unit in (("gpu_memory_peak_mb", "MiB"), ("gpu_util_mean_pct", "%"),
                      ("gpu_power_mean_w", "W")):
        print(f"{key}: {show(figures.get(key), absent.get(key), unit)}")


if __name__ == "__main__":
    main()
