"""Weak scaling: training throughput with the per-device batch held fixed.

The training runs measure strong scaling (the preset's global batch at every
GPU count). A probe instead gives every device the preset's batch, so the
global batch grows with the devices, and times ``steps`` training steps of
the real train step (after ``warmup`` steps, which trace and compile) from
the initial weights. It trains nothing worth keeping: throughput only.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split
from mosbench.engines.tensorflow.models import build_model
from mosbench.errors import MosbenchError
from mosbench.training.devices import configure_devices, set_matmul_precision
from mosbench.training.train import make_strategy, make_train_step


def weak_scaling_probe(data_dir, *, model_name, hparams, seed, gpus, steps, warmup=2,
                       threads=None, devices=None):
    """Tokens/s of ``steps`` timed training steps at ``batch_size`` per device.

    ``devices`` overrides the GPUs (the tests use logical CPU devices).
    """
    device = configure_devices(gpus, threads)
    set_matmul_precision(hparams.get("matmul_precision", "float32"))
    keras.utils.set_random_seed(seed)
    n_devices = len(devices) if devices else max(gpus, 1)
    batch, bptt = hparams["batch_size"] * n_devices, hparams["bptt"]
    train_ids, meta = load_split(data_dir, "train")
    streams = batchify(train_ids, batch)
    if streams.shape[1] < bptt + 1:
        raise MosbenchError(f"weak-scaling probe: the training split has too few tokens for a "
                            f"batch of {batch} x {bptt + 1} ({len(train_ids)} tokens)")
    strategy = make_strategy(gpus, devices)
    with tf.device(device), strategy.scope():
        model = build_model(model_name, meta["vocab_size"], hparams)
        optimizer = keras.optimizers.SGD(learning_rate=hparams["lr"])
        optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, batch, hparams, strategy=strategy)
    states, times = model.initial_state(batch), []
    lr = tf.constant(hparams["lr"], tf.float32)
    for i in range(warmup + steps):
        start = (i * bptt) % (streams.shape[1] - bptt)
        window = streams[:, start:start + bptt + 1]
        began = time.perf_counter()
        with tf.device(device):
            nll, states = step(tf.constant(window[:, :-1]), tf.constant(window[:, 1:]),
                               states, lr)
        float(nll)  # wait for the step
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return {"devices": n_devices, "per_device_batch": hparams["batch_size"],
            "global_batch": batch, "bptt": bptt, "timed_steps": steps,
            "tokens_per_s": batch * bptt * steps / sum(times),
            "step_time_median_s": float(np.median(times))}
