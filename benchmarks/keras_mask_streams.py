"""The TensorFlow engine's own mask draws: two checks at fidelity.py's scale (issue 24).

TensorFlow trained lower whenever its masks came from anywhere but its own Keras
``SeedGenerator``s (benchmarks/README.md, sixth and seventh sittings), while every
statistic of those masks checked so far is as the rule says. Each site draws
``tf.random.stateless_uniform`` keyed ``[S_i, t]``: ``S_i`` the site's generator seed,
``t`` its count of draws. Two mechanisms would pass those statistics and still train
differently; these checks look for each:

- ``streams``: sites whose Philox streams overlap, so that one site's numbers come back
  at another (or at the same site a step later). For every pair of the engine's mask
  generators, ``--values`` uniforms each, keyed as the engine keys them, at steps
  ``0 .. --steps - 1`` and one step apart: the count of values in common, against
  about ``values^2 / 2^23`` by chance (TensorFlow's float32 uniforms lie on a grid of
  2^-23), and the chance of the largest count over all comparisons (Poisson, times the
  number of comparisons). Two sites on one stream share all ``values``.
- ``weight-drop-backward``: whether weight drop's backward uses its forward's mask. From
  the initial weights, ``--steps`` real training steps at lr 1 without clipping, decay,
  AR or TAR on one random window; for each weight-dropped kernel, the entries that moved
  against the masks its generator gives at the states of that step's forwards (``t``
  before the step and each further forward of the step's chunks). An entry that moved
  where every one of those masks dropped it is one the backward saw kept: there must be
  none. The control: the same count against the next step's masks.

The engine is fidelity.py's model (the ``ptb`` AWD-LSTM-MoS preset scaled to emsize 200,
nhid 400, nhidlast 200, 5 experts) at PTB's vocabulary size, built with ``--seed``; no data
is read (the window is random tokens).

    .venv/bin/python benchmarks/keras_mask_streams.py streams --values 8192 --steps 3
    .venv/bin/python benchmarks/keras_mask_streams.py weight-drop-backward --steps 3
"""

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import SCALED, machine_lines, write_config  # noqa: E402
from fidelity_probe import engine_for, plain_step  # noqa: E402

PTB_VOCAB = 10000
GRID = 2 ** 23  # float32 uniforms from stateless_uniform: 23 random mantissa bits


def mask_generators(model):
    """``{site: (SeedGenerator, key dtype)}`` of a Keras model's mask sites, in layer order;
    the key's dtype as the site's draw passes it (Keras's weight drop casts to int32)."""
    import keras

    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    found = {}
    for layer in model._flatten_layers():  # the model itself first
        for attribute, value in vars(layer).items():
            if isinstance(value, keras.random.SeedGenerator) and \
                    all(value is not g for g, _ in found.values()):
                dtype = "int32" if isinstance(layer, WeightDropLSTM) else "int64"
                found[f"{layer.name}.{attribute}"] = (value, dtype)
    return found


def uniforms(site_seed, step, values, dtype):
    import tensorflow as tf

    key = tf.constant([site_seed, step], dtype)
    return tf.random.stateless_uniform((values,), seed=key).numpy()


def stream_overlaps(sites, values, steps):
    """``sites``: ``{site: (S_i, key dtype)}``. One row per comparison: values in common
    between site a at step t and site b at step t + offset (every pair at offsets -1, 0, 1;
    each site with itself one step on)."""
    drawn = {}

    def draw(site, step):
        if (site, step) not in drawn:
            seed, dtype = sites[site]
            drawn[site, step] = uniforms(seed, step, values, dtype)
        return drawn[site, step]

    pairs = [(a, b, offset) for a, b in itertools.combinations(sites, 2)
             for offset in (-1, 0, 1)] + [(a, a, 1) for a in sites]
    return [{"a": a, "b": b, "step": t, "offset": offset,
             "common": int(np.intersect1d(draw(a, t), draw(b, t + offset)).size)}
            for a, b, offset in pairs for t in range(steps) if t + offset >= 0]


def overlap_summary(rows, values, worst=8):
    from scipy.stats import poisson

    chance = values * values / GRID
    rows = sorted(rows, key=lambda r: -r["common"])
    largest = rows[0]["common"]
    # the chance of a count this large in any of the comparisons (Bonferroni bound)
    p_any = min(1.0, len(rows) * poisson.sf(largest - 1, chance))
    lines = [f"{len(rows)} comparisons of {values} uniforms; by chance about {chance:.1f} "
             f"values in common; the largest {largest}, p {p_any:.3g} that chance gives one "
             f"this large",
             "| site a | site b | step | offset | in common |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['a']} | {r['b']} | {r['step']} | {r['offset']:+d} | {r['common']} |"
              for r in rows[:worst]]
    return lines, p_any


def forward_masks(layer, state, forwards):
    """The weight-drop masks (True: kept) of ``forwards`` forwards from generator ``state``,
    as Keras's dropout draws them."""
    import tensorflow as tf

    shape = tuple(layer.recurrent_kernel.shape)
    return [tf.nn.experimental.stateless_dropout(
        tf.ones(shape), layer.weight_dropout,
        seed=tf.constant([state[0], state[1] + k], tf.int32)).numpy() != 0
        for k in range(forwards)]


def weight_drop_backward(engine, window, steps, lr=1.0):
    """One row per step and weight-dropped layer: entries, the share that moved, the share
    the step's masks kept, moved entries every one of those masks dropped (must be 0), and
    the same against the next step's masks (the control)."""
    from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM
    layers = [layer for layer in engine.model._flatten_layers()
              if isinstance(layer, WeightDropLSTM) and layer.weight_dropout > 0]
    batch = window.shape[0]
    rows = []
    for step in range(steps):
        states = [layer.seed_generator.state.numpy().copy() for layer in layers]
        before = [layer.recurrent_kernel.numpy().copy() for layer in layers]
        engine.train_step(window[:, :-1], window[:, 1:], engine.initial_state(batch), lr, False)
        for layer, state, weights in zip(layers, states, before, strict=True):
            forwards = int(layer.seed_generator.state.numpy()[1] - state[1])
            moved = layer.recurrent_kernel.numpy() != weights
            masks = forward_masks(layer, state, 2 * forwards)
            kept = np.logical_or.reduce(masks[:forwards])
            kept_next = np.logical_or.reduce(masks[forwards:])
            rows.append({"step": step, "layer": layer.name, "entries": moved.size,
                         "forwards": forwards, "moved": float(moved.mean()),
                         "kept": float(kept.mean()),
                         "moved where dropped": int((moved & ~kept).sum()),
                         "control": int((moved & ~kept_next).sum())})
    return rows


def backward_table(rows):
    lines = ["| step | layer | entries | forwards | moved | kept by the step's masks | "
             "moved where they dropped (must be 0) | moved where the next step's dropped |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['layer']} | {r['entries']} | {r['forwards']} | "
              f"{r['moved']:.4f} | {r['kept']:.4f} | {r['moved where dropped']} | "
              f"{r['control']} |" for r in rows]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("streams", "weight-drop-backward"))
    parser.add_argument("--seed", type=int, default=28, help="the engine's seed (28)")
    parser.add_argument("--steps", type=int, default=3,
                        help="streams: steps per site; weight-drop-backward: training steps (3)")
    parser.add_argument("--values", type=int, default=8192,
                        help="streams: uniforms per site and step (8192)")
    parser.add_argument("--threads", type=int, default=1, help="the engine's threads (1)")
    args = parser.parse_args(argv)
    print("\n".join(machine_lines(args.threads)))
    print("command:", " ".join(["benchmarks/keras_mask_streams.py", *(argv or sys.argv[1:])]))
    with tempfile.TemporaryDirectory(prefix="mosbench-keras-masks-") as scratch:
        _, hp = write_config(Path(scratch), {**SCALED, "epochs": 1}, args.threads)
    engine = engine_for("tensorflow", plain_step(hp), PTB_VOCAB, args.seed, args.threads)
    if args.check == "streams":
        sites = {name: (int(generator.state.numpy()[0]), dtype)
                 for name, (generator, dtype) in mask_generators(engine.model).items()}
        print(f"{len(sites)} mask sites, seed {args.seed}: " + ", ".join(
            f"{name} S={seed} ({dtype})" for name, (seed, dtype) in sites.items()))
        lines, _ = overlap_summary(stream_overlaps(sites, args.values, args.steps),
                                   args.values)
    else:
        window = np.random.default_rng(args.seed).integers(
            0, PTB_VOCAB, (hp["batch_size"], hp["bptt"] + 1)).astype(np.int32)
        print(f"{args.steps} steps at lr 1, no clip, decay, AR or TAR, one random window of "
              f"{hp['bptt']} tokens, zero states, seed {args.seed}")
        lines = backward_table(weight_drop_backward(engine, window, args.steps))
    engine.close()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
