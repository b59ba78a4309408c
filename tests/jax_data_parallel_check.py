"""Run by test_jax_engine.py in a process of its own: 2 logical CPU devices against 1.

XLA fixes its device count when it starts, hence the flag before JAX is imported
and the separate process. Prints one JSON line of the largest differences.
"""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=2 "
                           + os.environ.get("XLA_FLAGS", "")).strip()
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from toy_stream import AWD, train, training_windows  # noqa: E402

from mosbench.engines import load_engine  # noqa: E402
from mosbench.errors import MosbenchError  # noqa: E402


def pair(hp, batch):
    """One engine on one CPU device and one over two, with the same weights."""
    engines = []
    for devices in (None, ["/cpu:0", "/cpu:1"]):
        engine = load_engine("jax", seed=1, threads=2, devices=devices)
        engine.build("awd-lstm-mos", 40, hp)
        engine.prepare_training(hp, batch)
        engines.append(engine)
    engines[1].load_weights(engines[0].weights())
    return engines


def differences(hp, steps, batch=6):
    one, two = pair(hp, batch)
    data = training_windows(batch, steps, lengths=(6,))  # one length: one compile per engine
    (loss_1, states_1), (loss_2, states_2) = (train(e, data, average_from=2)
                                              for e in (one, two))
    with one.averaged(), two.averaged():
        averaged = max(float(np.abs(a - b).max())
                       for a, b in zip(one.weights().values(), two.weights().values(),
                                       strict=True))
    return {"loss": float(np.abs(loss_1 / loss_2 - 1).max()),
            "weights": max(float(np.abs(a - b).max())
                           for a, b in zip(one.weights().values(), two.weights().values(),
                                           strict=True)),
            "averaged": averaged,
            "states": max(float(np.abs(a - b).max())
                          for a, b in zip(one.state_arrays(states_1),
                                          two.state_arrays(states_2), strict=True)),
            "moved": float(np.abs(loss_1[0] - loss_1[-1])),
            "devices": len(two.devices),
            "programs": len(two._train.programs)}


def too_few_rows():
    """The message a batch with fewer rows than devices gets."""
    engine = load_engine("jax", devices=["/cpu:0", "/cpu:1"])
    engine.build("awd-lstm-mos", 40, AWD)
    try:
        engine.prepare_training(AWD, 1)
    except MosbenchError as exc:
        return str(exc)
    return None


if __name__ == "__main__":
    print(json.dumps({
        "too_few_rows": too_few_rows(),
        # dropout off, chunks of 4 + 2 rows on one device, 3 rows on each replica
        "plain": differences(AWD, 5),
        # weight drop only, one chunk: its mask is shared by the replicas, so it is the
        # one device's mask
        "weight_drop": differences({**AWD, "wdrop": 0.5, "small_batch_size": 6}, 3),
        # 5 rows: 3 and 2, the second replica's share padded with a row that counts for
        # nothing; chunks of 1 row, so its last chunk is all padding
        "uneven": differences({**AWD, "small_batch_size": 1}, 3, batch=5),
    }))
