"""Speed of the weight-dropped LSTM against a plain keras.layers.LSTM of the same size.

Times forward+backward of one layer (training mode, so the DropConnect mask
is drawn every step) after a warm-up, and prints a table with the ratio. On a
GPU both layers are forced onto the fused cuDNN kernel (``use_cudnn=True``),
so a silent fallback to the generic loop fails instead of passing; on a
machine without one both run their CPU loops.

Usage: ``.venv/bin/python benchmarks/weight_drop_lstm.py [--units 1150 --input 400
--batch 20 --steps 70 --repeats 20]`` (defaults: an AWD-LSTM PTB middle layer).
"""

import argparse
import statistics
import time

import keras
import tensorflow as tf

from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM


def timed_steps(layer_call, variables, inputs, repeats, warmup=3):
    """Median and p95 seconds of a compiled forward+backward step."""

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer_call(inputs))
        return tape.gradient(loss, variables)

    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        grads = step()
        _ = [g.numpy() for g in grads[:1]]  # wait for the device before reading the clock
        if i >= warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=1150)
    parser.add_argument("--input", type=int, default=400)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    gpu = bool(tf.config.list_physical_devices("GPU"))
    keras.utils.set_random_seed(0)
    x = tf.random.normal((args.batch, args.steps, args.input))
    h0 = tf.zeros((args.batch, args.units))

    dropped = WeightDropLSTM(args.units, weight_dropout=0.5, use_cudnn=True if gpu else False)
    dropped.build(x.shape)
    plain = keras.layers.LSTM(args.units, return_sequences=True, use_cudnn=True if gpu else False)
    plain.build(x.shape)

    rows = {
        "keras.layers.LSTM": timed_steps(lambda v: plain(v, initial_state=[h0, h0],
                                                         training=True),
                                         plain.trainable_variables, x, args.repeats),
        "WeightDropLSTM (p=0.5)": timed_steps(lambda v: dropped(v, (h0, h0), training=True)[0],
                                              dropped.trainable_variables, x, args.repeats),
    }
    device = tf.config.list_physical_devices("GPU")[0].name if gpu else "CPU"
    kernel = "cuDNN (forced)" if gpu else "generic loop"
    print(f"device: {device}; kernel: {kernel}; batch {args.batch} x {args.steps} steps, "
          f"{args.input} -> {args.units} units; forward+backward, {args.repeats} timed steps")
    print("| layer | median ms | p95 ms | tokens/s | time vs keras LSTM |")
    print("|---|---:|---:|---:|---:|")
    base = rows["keras.layers.LSTM"][0]
    for name, (median, p95) in rows.items():
        tokens = args.batch * args.steps / median
        print(f"| {name} | {median * 1e3:.2f} | {p95 * 1e3:.2f} | {tokens:,.0f} | "
              f"{median / base:.2f}x |")


if __name__ == "__main__":
    main()
