"""What variable BPTT and the scan's unroll cost the JAX engine: compiles and step times.

For one preset: per ``unroll`` of the LSTM's ``lax.scan``, the seconds to compile
one training step and its median step time; then the compile seconds a new
window length costs, and the step time, with exact lengths (one program per
window shape) and with windows padded to a bucket (one per bucket). Run alone:
on 2 busy cores the numbers move by up to 2x.

    .venv/bin/python benchmarks/jax_bptt.py --config config/demo.yaml --dataset synthetic \\
        --model awd-lstm-mos --vocab 1000
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mosbench.config import load_config, preset
from mosbench.engines import load_engine
from mosbench.engines.jax.models import scan_lstm

REPO = Path(__file__).resolve().parents[1]


def engine_for(model, vocab, hp, batch, unroll):
    scan_lstm.UNROLL = unroll  # the layers read it at trace time
    engine = load_engine("jax", seed=1)
    engine.build(model, vocab, hp)
    engine.prepare_training(hp, batch)
    return engine


def window(vocab, batch, length, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, vocab, (batch, length)).astype(np.int32),
            rng.integers(0, vocab, (batch, length)).astype(np.int32))


def timed_steps(engine, vocab, batch, length, steps):
    states = engine.initial_state(batch)
    x, y = window(vocab, batch, length)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        _, states = engine.train_step(x, y, states, 1.0, False)
        times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "config" / "demo.yaml"))
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--model", default="awd-lstm-mos")
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--unrolls", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lengths", default="33,34,35,36")
    parser.add_argument("--unroll", type=int, default=scan_lstm.UNROLL,
                        help="the unroll of the length comparison")
    parser.add_argument("--bucket", type=int, default=8)
    args = parser.parse_args(argv)
    hp = preset(load_config(args.config), args.dataset, args.model)
    batch, bptt = hp["batch_size"], hp["bptt"]
    print(f"{args.model} on {args.dataset}: batch {batch}, bptt {bptt}, vocab {args.vocab}")
    print("| unroll | compile s | median step s |\n|---:|---:|---:|")
    for unroll in [int(u) for u in args.unrolls.split(",")]:
        engine = engine_for(args.model, args.vocab, hp, batch, unroll)
        times = timed_steps(engine, args.vocab, batch, bptt, args.steps + 1)
        compile_s = engine.compile_statistics()[0]["compile_s"]
        print(f"| {unroll} | {compile_s:.2f} | {statistics.median(times[1:]):.4f} |")
    print("\n| windows | new length | compile s | median step s |\n|---|---:|---:|---:|")
    for bucket in (None, args.bucket):
        engine = engine_for(args.model, args.vocab, hp, batch, args.unroll)
        engine.bucket = bucket
        for length in [int(n) for n in args.lengths.split(",")]:
            before = engine.compile_statistics()[0]["compile_s"]
            times = timed_steps(engine, args.vocab, batch, length, args.steps + 1)
            compile_s = engine.compile_statistics()[0]["compile_s"] - before
            print(f"| {f'padded to {bucket}s' if bucket else 'exact'} | {length} | "
                  f"{compile_s:.2f} | {statistics.median(times[1:]):.4f} |")


if __name__ == "__main__":
    main()
