"""The two parts of an evaluation step, each framework alone: one LSTM layer and the decoder.

Issue 17 asked whether an evaluation step where PyTorch leads is TensorFlow's
doing or ours. This times, without a gradient and on a preset's evaluation
shapes (``eval_batch_size`` x ``bptt``, the first LSTM layer's sizes, the
tied softmax decoder over the vocabulary), each engine's own code and the
fastest alternative the framework offers:

- LSTM layer. TensorFlow: the engine's ``lstm_sequence`` on the CPU; the same
  recurrence unrolled and compiled by XLA; ``BlockLSTMV2``, TensorFlow's own
  fused CPU kernel. PyTorch: the engine's ``lstm_layer`` (``torch.lstm``,
  oneDNN's RNN primitive on the CPU).
- Decoder NLL. TensorFlow: the engine's ``decoder_nll`` (XLA, the preset's
  ``xla_decoder``) and with TensorFlow's default kernels. PyTorch: the engine's
  ``linear_softmax_nll`` (logits in cache-sized row blocks).

Each framework runs in its own process, one after the other; the figure is
the best of ``--rounds`` medians. Run it alone (2 cores: anything else busy
skews it), and set ``LD_PRELOAD`` as benchmarks/README.md explains to see
PyTorch with MKL on its Intel code path on an AMD CPU.

Usage::

    .venv/bin/python benchmarks/eval_parts.py --preset lstm-wt2
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from throughput import PRESETS, cpu_description, preset_hparams, runtime_settings  # noqa: E402


def best_median_ms(call, rounds, repeats=20, warmup=3):
    for _ in range(warmup):
        call()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        medians.append(float(np.median(times)) * 1e3)
    return min(medians)


def shapes(preset):
    _, vocab, hp = preset_hparams(preset)
    emsize = hp["emsize"]
    hidden = hp.get("nhid", emsize)
    # the decoder reads the last layer's output, emsize wide when the weights are tied
    return {"batch": hp["eval_batch_size"], "time": hp["bptt"], "inputs": emsize,
            "hidden": hidden, "decoder_in": emsize, "vocab": vocab,
            "xla_decoder": bool(hp.get("xla_decoder", False))}


def arrays(s):
    rng = np.random.default_rng(0)
    b, t, d, h, v = s["batch"], s["time"], s["inputs"], s["hidden"], s["vocab"]
    return {"x": rng.standard_normal((b, t, d), dtype=np.float32) * 0.1,
            "w_ih": rng.standard_normal((d, 4 * h), dtype=np.float32) * h ** -0.5,
            "w_hh": rng.standard_normal((h, 4 * h), dtype=np.float32) * h ** -0.5,
            "bias": np.zeros(4 * h, np.float32),
            "rows": rng.standard_normal((b * t, s["decoder_in"]), dtype=np.float32) * 0.1,
            "emb": rng.standard_normal((v, s["decoder_in"]), dtype=np.float32) * 0.1,
            "dec_bias": np.zeros(v, np.float32),
            "targets": rng.integers(0, v, b * t)}


def tensorflow_parts(s, rounds, threads):
    import tensorflow as tf

    from mosbench.engines.tensorflow.models.fast_lstm import lstm_sequence
    from mosbench.engines.tensorflow.models.tied_softmax import decoder_nll

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    a = {k: tf.constant(v) for k, v in arrays(s).items()}
    h0 = tf.zeros((s["batch"], s["hidden"]))
    targets = tf.cast(a["targets"], tf.int32)

    def unrolled(x):
        projected = tf.einsum("btd,dg->tbg", x, a["w_ih"]) + a["bias"]
        h, c, outs = h0, h0, []
        for step in range(s["time"]):
            i, f, g, o = tf.split(projected[step] + tf.matmul(h, a["w_hh"]), 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            outs.append(h)
        return tf.stack(outs, 1)

    # one (inputs + hidden, 4H) matrix; the gate order that reproduces the engine's
    # layer on this TensorFlow is the engine's own (checked below)
    block_w = tf.concat([a["w_ih"], a["w_hh"]], axis=0)
    block_b, peephole = a["bias"], tf.zeros(s["hidden"])

    def block(x):
        return tf.transpose(tf.raw_ops.BlockLSTMV2(
            seq_len_max=tf.constant(s["time"], tf.int64), x=tf.transpose(x, (1, 0, 2)),
            cs_prev=h0, h_prev=h0, w=block_w, wci=peephole, wcf=peephole, wco=peephole,
            b=block_b, cell_clip=0.0, use_peephole=False).h, (1, 0, 2))

    engine = tf.function(lambda x: lstm_sequence(x, h0, h0, a["w_ih"], a["w_hh"], a["bias"])[0])
    layers = {"engine (lstm_sequence)": engine,
              "unrolled, XLA": tf.function(unrolled, jit_compile=True),
              "BlockLSTMV2 (fused kernel)": tf.function(block)}
    expected = engine(a["x"]).numpy()
    rows = []
    for name, fn in layers.items():
        np.testing.assert_allclose(fn(a["x"]).numpy(), expected, rtol=1e-4, atol=1e-5,
                                   err_msg=name)
        rows.append(("LSTM layer", name, best_median_ms(lambda f=fn: f(a["x"]).numpy(), rounds)))

    def nll(xla):
        return lambda: decoder_nll(a["rows"], a["emb"], a["dec_bias"], targets,
                                   xla=xla).numpy()

    rows.append(("decoder NLL", f"engine (xla_decoder={s['xla_decoder']})",
                 best_median_ms(nll(s["xla_decoder"]), rounds)))
    rows.append(("decoder NLL", f"xla_decoder={not s['xla_decoder']}",
                 best_median_ms(nll(not s["xla_decoder"]), rounds)))
    return rows


def pytorch_parts(s, rounds, threads):
    import torch

    from mosbench.engines.pytorch.models.fused_lstm import lstm_layer
    from mosbench.engines.pytorch.models.softmax_nll import linear_softmax_nll

    torch.set_num_threads(threads)
    a = {k: torch.from_numpy(v) for k, v in arrays(s).items()}
    x = a["x"].transpose(0, 1).contiguous()  # time-major, as the engine's layers take it
    h0 = torch.zeros(s["batch"], s["hidden"])
    weights = (a["w_ih"].t().contiguous(), a["w_hh"].t().contiguous(), a["bias"],
               torch.zeros_like(a["bias"]))
    with torch.no_grad():
        layer = best_median_ms(lambda: lstm_layer(x, (h0, h0), *weights), rounds)
        decoder = best_median_ms(lambda: linear_softmax_nll(a["rows"], a["emb"], a["dec_bias"],
                                                            a["targets"]), rounds)
    return [("LSTM layer", "engine (torch.lstm, oneDNN)", layer),
            ("decoder NLL", "engine (linear_softmax_nll)", decoder)]


def worker(framework, preset, rounds, threads):
    s = shapes(preset)
    run = tensorflow_parts if framework == "tensorflow" else pytorch_parts
    rows = run(s, rounds, threads)
    print(json.dumps({"runtime": runtime_settings(framework), "rows": rows}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # the presets whose decoder is the tied softmax (MoS's head is not timed here)
    parser.add_argument("--preset", choices=[p for p in sorted(PRESETS) if p != "mos-ptb"],
                        default="lstm-wt2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=["tensorflow", "pytorch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.preset, args.rounds, args.threads)

    s = shapes(args.preset)
    print(f"cpu: {cpu_description()}")
    print(f"preset {args.preset}: batch {s['batch']} x bptt {s['time']}, LSTM "
          f"{s['inputs']} -> {s['hidden']}, decoder {s['decoder_in']} -> {s['vocab']} words")
    table = []
    for framework in ("tensorflow", "pytorch"):
        done = subprocess.run([sys.executable, __file__, "--worker", framework, "--preset",
                               args.preset, "--rounds", str(args.rounds), "--threads",
                               str(args.threads)], capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if done.returncode:
            sys.exit(f"{framework} worker failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{framework} runtime: {result['runtime']}")
        table += [(framework, *row) for row in result["rows"]]
    print(f"\n| part | framework | code | ms (best of {args.rounds} medians) |")
    print("|---|---|---|---:|")
    for framework, part, code, ms in sorted(table, key=lambda r: r[1], reverse=True):
        print(f"| {part} | {framework} | {code} | {ms:.1f} |")


if __name__ == "__main__":
    main()
