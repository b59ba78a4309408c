"""Data-parallel semantics on two logical CPU devices; run by test_data_parallel.py.

A separate process because logical devices must be configured before
TensorFlow starts. Prints one JSON object with the measured differences.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mosbench.engines.tensorflow.models import build_model  # noqa: E402
from mosbench.engines.tensorflow.models.locked_dropout import LockedDropout  # noqa: E402
from mosbench.engines.tensorflow.models.weight_drop_lstm import WeightDropLSTM  # noqa: E402
from mosbench.engines.tensorflow.steps import make_strategy, make_train_step  # noqa: E402

# No dropout, so one device and two replicas see the same function; a tiny clip
# so the clipping is certainly active; AR/TAR, weight decay and chunks on.
HP = dict(emsize=8, nhid=16, nhidlast=12, nlayers=2, dropout=0.0, dropouth=0.0, dropouti=0.0,
          dropoute=0.0, wdrop=0.0, init_range=0.5, n_experts=3, dropoutl=0.0, alpha=2.0,
          beta=1.0, clip=0.01, small_batch_size=2)
BATCH = 7  # uneven over two replicas: 4 and 3 rows
WDECAY = 1e-3


def one_step(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model("awd-lstm-mos", 30, HP)
        optimizer = keras.optimizers.SGD(1.0, weight_decay=WDECAY)
        optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, BATCH, HP, strategy=strategy)
    tokens = np.random.default_rng(1).integers(0, 30, (BATCH, 11)).astype("int32")
    before = [v.numpy().copy() for v in model.trainable_variables]
    nll, states = step(tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:]),
                       model.initial_state(BATCH), tf.constant(1.0))
    after = [v.numpy() for v in model.trainable_variables]
    # The gradient's part of the update: Keras decays first (w *= 1 - lr * wd), then steps.
    update_norm = float(np.sqrt(sum(((b * (1 - WDECAY) - a) ** 2).sum()
                                    for a, b in zip(after, before, strict=True))))
    return float(nll), after, [s.numpy() for layer in states for s in layer], update_norm


def per_replica(strategy, fn):
    return [x.numpy() for x in strategy.experimental_local_results(strategy.run(fn))]


one = one_step(tf.distribute.get_strategy())
mirrored = make_strategy(0, devices=["/cpu:0", "/cpu:1"])
two = one_step(mirrored)

with mirrored.scope():
    locked = LockedDropout(0.5, seed=3)
    dropped_lstm = WeightDropLSTM(6, weight_dropout=0.5, seed=4)
    dropped_lstm.build((None, None, 5))
locked_masks = per_replica(mirrored, tf.function(lambda: locked(tf.ones((4, 3, 16)),
                                                                training=True)))
weight_masks = per_replica(mirrored, tf.function(
    lambda: dropped_lstm.dropped_recurrent_kernel(True)))

print(json.dumps({
    "replicas": mirrored.num_replicas_in_sync,
    "nll_difference": abs(one[0] - two[0]),
    "weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(one[1], two[1],
                                                                         strict=True)),
    "state_difference": max(float(np.abs(a - b).max()) for a, b in zip(one[2], two[2],
                                                                        strict=True)),
    "update_norm": one[3],
    "lr_times_clip": 1.0 * HP["clip"],
    "locked_masks_equal": bool(np.array_equal(*locked_masks)),
    "weight_drop_masks_equal": bool(np.array_equal(*weight_masks)),
}))
