"""Weak scaling: training throughput with the per-device batch held fixed.

The training runs measure strong scaling (the preset's global batch at every
GPU count). A probe instead gives every device the preset's batch, so the
global batch grows with the devices, and times ``steps`` training steps of
the real train step (after ``warmup`` steps, which trace and compile) from
the initial weights. It trains nothing worth keeping: throughput only.
"""

import time

import numpy as np

from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split
from mosbench.engines import load_engine
from mosbench.errors import MosbenchError


def weak_scaling_probe(data_dir, *, model_name, hparams, seed, gpus, steps, warmup=2,
                       threads=None, devices=None, framework="tensorflow"):
    """Tokens/s of ``steps`` timed training steps at ``batch_size`` per device.

    ``devices`` overrides the GPUs (the tests use logical CPU devices).
    """
    engine = load_engine(framework, gpus=gpus, threads=threads, devices=devices, seed=seed,
                         precision=hparams.get("matmul_precision", "float32"))
    n_devices = len(devices) if devices else max(gpus, 1)
    batch, bptt = hparams["batch_size"] * n_devices, hparams["bptt"]
    train_ids, meta = load_split(data_dir, "train")
    streams = batchify(train_ids, batch)
    if streams.shape[1] < bptt + 1:
        raise MosbenchError(f"weak-scaling probe: the training split has too few tokens for a "
                            f"batch of {batch} x {bptt + 1} ({len(train_ids)} tokens)")
    engine.build(model_name, meta["vocab_size"], hparams)
    engine.prepare_training(hparams, batch)
    states, times = engine.initial_state(batch), []
    for i in range(warmup + steps):
        start = (i * bptt) % (streams.shape[1] - bptt)
        window = streams[:, start:start + bptt + 1]
        began = time.perf_counter()
        _, states = engine.train_step(window[:, :-1], window[:, 1:], states, hparams["lr"],
                                      False)  # returns once the step has finished
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return {"devices": n_devices, "per_device_batch": hparams["batch_size"],
            "global_batch": batch, "bptt": bptt, "timed_steps": steps,
            "tokens_per_s": batch * bptt * steps / sum(times),
            "step_time_median_s": float(np.median(times))}
