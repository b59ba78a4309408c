"""Where a training or evaluation step of a preset spends its time, op by op, per framework.

Runs an engine's step (``Engine.train_step`` / ``Engine.eval_window``, as
``benchmarks/throughput.py``'s sides call them) of a preset under the
framework's own profiler and prints the ops with the most time per step:
TensorFlow's profiler (XLA clusters included; wall time on the executor
threads, so ops that TensorFlow runs concurrently on the 2 cores each count
their whole span) or ``torch.profiler`` (self CPU time per op: the op's wall
time on its calling thread minus its children's). The first line gives the
step's median wall time outside the profiler, which the op times are parts of.

Usage::

    .venv/bin/python benchmarks/profile_step.py --preset lstm-wt2 [--step eval] [--top 25]
    .venv/bin/python benchmarks/profile_step.py --preset lstm-wt2 --framework pytorch
"""

import argparse
import collections
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from throughput import PRESETS, EngineSide, parse_override, preset_hparams, windows  # noqa: E402

# Events that wrap a whole step or executor bookkeeping, not an op.
WRAPPERS = ("step", "TFE_", "Eager", "KernelAndDeviceFunc", "ExecutorState", "BlockUntilReady",
            "ThunkExecutor", "CpuExecutable", "ParallelFor")


def op_times(logdir, steps):
    """Milliseconds per step by event name, summed over the profile's threads."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            names = {key: meta.name for key, meta in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    name = names.get(event.metadata_id, "?")
                    if not name.startswith(WRAPPERS):
                        totals[name] += event.duration_ps / 1e9 / steps
    return totals


def tensorflow_profile(run, steps):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            run()
        tf.profiler.experimental.stop()
        return op_times(logdir, steps)


def pytorch_profile(run, steps):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    return collections.Counter({event.key: event.self_cpu_time_total / 1e3 / steps
                                for event in prof.key_averages()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--framework", choices=["tensorflow", "pytorch"], default="tensorflow")
    parser.add_argument("--step", choices=["train", "eval"], default="train")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--set", type=parse_override, action="append", default=[],
                        metavar="KEY=VALUE", help="override a preset hyperparameter (repeatable)")
    args = parser.parse_args(argv)

    model_name, vocab, hp = preset_hparams(args.preset, dict(args.set))
    side = EngineSide(args.framework, model_name, vocab, hp)  # the steps throughput.py times
    batch = hp["batch_size"] if args.step == "train" else hp["eval_batch_size"]
    (inputs, targets), = windows(vocab, batch, hp["bptt"], 1, seed=0)
    step = side.train_step if args.step == "train" else side.eval_step

    def run():
        return step(inputs, targets)

    run(), run()  # tracing, XLA compilation, allocation
    wall = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        wall.append(time.perf_counter() - start)
    profiler = tensorflow_profile if args.framework == "tensorflow" else pytorch_profile
    totals = profiler(run, args.steps)
    median_ms = statistics.median(wall) * 1e3
    print(f"{args.framework} {args.preset} {args.step} step: median {median_ms:.1f} ms "
          f"unprofiled; ms per step (top {args.top} of {len(totals)} ops)")
    for name, ms in totals.most_common(args.top):
        print(f"{ms:9.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
