"""Train on the real PTB for a bounded number of steps on this machine and print the curve.

Two parts, both with the project's own training step (variable BPTT, AR/TAR,
gradient accumulation, clipping after the all-reduce, SGD with weight decay):

1. ``--steps`` steps of the **MoS PTB preset** (21.5M parameters, the paper's
   hyperparameters from config/config.yaml): the training-loss curve.
2. ``--epoch-model``: one full epoch of an affordable model (by default the plain
   LSTM at Zaremba et al.'s "small" size, 200 units) and its validation
   perplexity, to show the loop learns real text end to end.

Reads ../shared/data/ptb (never part of the repository); says so and exits 0
when it is absent. Usage: ``.venv/bin/python benchmarks/ptb_training_curve.py
[--steps 20] [--epoch-model lstm-small|none]``.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mosbench.config import load_config, preset
from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split, tokenise
from mosbench.engines.tensorflow.models import build_model
from mosbench.engines.tensorflow.steps import make_train_step
from mosbench.evaluation.perplexity import evaluate_loss, perplexity
from mosbench.training.bptt import epoch_windows

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ptb"
SMALL_LSTM = dict(emsize=200, nhid=200, nlayers=2, dropout=0.0, tie_weights=True,
                  init_range=0.1, lr=20.0, clip=0.25, batch_size=20, bptt=35,
                  small_batch_size=None, eval_batch_size=10)


def tokenised_ptb(raw_dir, work_dir):
    staged = work_dir / "raw"
    staged.mkdir()
    for split in ("train", "valid", "test"):
        (staged / f"{split}.txt").symlink_to(raw_dir / f"{split}.txt")
    (staged / "source.json").write_text(json.dumps({"name": "ptb", "kind": "archive"}))
    tokenise(staged, work_dir / "data", expected_vocab=10000)
    return work_dir / "data"


def train_windows(model, hparams, ids, steps=None, variable=True, report=None):
    """Run training windows; return (mean loss, tokens, seconds, per-step records)."""
    optimizer = keras.optimizers.SGD(hparams["lr"], weight_decay=hparams.get("wdecay") or None)
    optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, hparams["batch_size"], hparams)
    streams = batchify(ids, hparams["batch_size"])
    states = model.initial_state(hparams["batch_size"])
    rng = np.random.default_rng(0)
    total, tokens, records, started = 0.0, 0, [], time.perf_counter()
    for i, (start, length, scale) in enumerate(epoch_windows(
            rng, streams.shape[1], hparams["bptt"], variable,
            hparams.get("max_seq_len_delta"))):
        if steps is not None and i >= steps:
            break
        window = streams[:, start:start + length + 1]
        t0 = time.perf_counter()
        nll, states = step(tf.constant(window[:, :-1]), tf.constant(window[:, 1:]), states,
                           tf.constant(hparams["lr"] * scale, tf.float32))
        nll = float(nll)
        seconds = time.perf_counter() - t0
        total += nll * length * hparams["batch_size"]
        tokens += length * hparams["batch_size"]
        records.append((i + 1, length, nll, seconds))
        if report:
            report(i + 1, length, nll, seconds)
    return total / tokens, tokens, time.perf_counter() - started, records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epoch-model", choices=["lstm-small", "none"], default="lstm-small")
    args = parser.parse_args()
    if not (args.data_dir / "train.txt").exists():
        print(f"no PTB at {args.data_dir}: nothing to run")
        return 0
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = tokenised_ptb(args.data_dir, Path(tmp))
        train_ids, meta = load_split(data, "train")
        valid_ids, _ = load_split(data, "valid")

    hparams = preset(load_config(REPO / "config" / "config.yaml"), "ptb", "awd-lstm-mos")
    model = build_model("awd-lstm-mos", meta["vocab_size"], hparams)
    print(f"MoS PTB preset: {model.count_params():,} parameters, batch {hparams['batch_size']}, "
          f"bptt {hparams['bptt']} (variable), lr {hparams['lr']}; {args.steps} steps on the CPU")
    print("| step | window | train loss | train ppl | seconds | tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|")

    def report(i, length, nll, seconds):
        rate = length * hparams["batch_size"] / seconds
        print(f"| {i} | {length} | {nll:.3f} | {perplexity(nll):,.0f} | {seconds:.2f} | "
              f"{rate:,.0f} |", flush=True)

    _, tokens, seconds, records = train_windows(model, hparams, train_ids, args.steps,
                                                report=report)
    warm = records[2:] or records  # the first steps include tracing
    rate = sum(r[1] for r in warm) * hparams["batch_size"] / sum(r[3] for r in warm)
    print(f"MoS: {tokens:,} tokens in {seconds:.1f} s; {rate:,.0f} tokens/s after 2 warm-up steps")

    if args.epoch_model == "lstm-small":
        keras.utils.set_random_seed(0)
        small = build_model("lstm", meta["vocab_size"], SMALL_LSTM)
        loss, tokens, seconds, _ = train_windows(small, SMALL_LSTM, train_ids, variable=False)
        valid = evaluate_loss(small, valid_ids, SMALL_LSTM["eval_batch_size"], 35)
        print(f"plain LSTM 2x200 (tied, no dropout, SGD lr 20), one epoch: train ppl "
              f"{perplexity(loss):.1f}, valid ppl {perplexity(valid):.1f}, {seconds:.0f} s "
              f"({tokens / seconds:,.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
