"""Strong and weak probes on one and on two logical CPU devices; run by test_probe.py.

A separate process because logical devices must be configured before
TensorFlow starts. Arguments: the tokenised data folder. Prints one JSON
object per probe.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from mosbench.measurement.probe import run_probe  # noqa: E402

HP = dict(emsize=8, nhid=16, nhidlast=12, nlayers=2, dropout=0.1, dropouth=0.1, dropouti=0.1,
          dropoute=0.1, wdrop=0.2, init_range=0.5, n_experts=3, dropoutl=0.1, alpha=2.0,
          beta=1.0, clip=0.25, small_batch_size=None, lr=5.0, batch_size=4, bptt=10)

for scaling, devices in (("strong", ["/cpu:0"]), ("strong", ["/cpu:0", "/cpu:1"]),
                         ("weak", ["/cpu:0", "/cpu:1"])):
    result = run_probe(sys.argv[1], model_name="awd-lstm-mos", hparams=HP, seed=1, gpus=0,
                       framework="tensorflow", scaling=scaling, steps=4, warmup=1,
                       repeats=2, devices=devices)
    print(json.dumps(result))
