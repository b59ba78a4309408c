"""Where a TensorFlow training or evaluation step of a preset spends its time, op by op.

Runs the TensorFlow engine's step (``Engine.train_step`` / ``Engine.eval_window``,
as ``benchmarks/throughput.py``'s TensorFlow side calls them) of a preset under
TensorFlow's profiler and prints the ops with the most time per step, XLA
clusters included. Times are wall
time on the executor threads, so ops that TensorFlow runs concurrently on
the 2 cores each count their whole span.

Usage: ``.venv/bin/python benchmarks/profile_step.py --preset lstm-wt2 [--step eval] [--top 25]``
"""

import argparse
import collections
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402
from throughput import PRESETS, EngineSide, preset_hparams, windows  # noqa: E402

# Events that wrap a whole step or executor bookkeeping, not an op.
WRAPPERS = ("step", "TFE_", "Eager", "KernelAndDeviceFunc", "ExecutorState", "BlockUntilReady",
            "ThunkExecutor", "CpuExecutable", "ParallelFor")


def op_times(logdir, steps):
    """Milliseconds per step by event name, summed over the profile's threads."""
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    parser.add_argument("--step", choices=["train", "eval"], default="train")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    model_name, vocab, hp = preset_hparams(args.preset)
    side = EngineSide("tensorflow", model_name, vocab, hp)  # the steps throughput.py times
    batch = hp["batch_size"] if args.step == "train" else hp["eval_batch_size"]
    (inputs, targets), = windows(vocab, batch, hp["bptt"], 1, seed=0)
    step = side.train_step if args.step == "train" else side.eval_step

    def run():
        return step(inputs, targets)

    run(), run()  # tracing, XLA compilation, allocation
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(args.steps):
            run()
        tf.profiler.experimental.stop()
        totals = op_times(logdir, args.steps)
    print(f"{args.preset} {args.step} step, ms per step (top {args.top} of {len(totals)} ops)")
    for name, ms in totals.most_common(args.top):
        print(f"{ms:9.1f}  {name[:110]}")


if __name__ == "__main__":
    main()
