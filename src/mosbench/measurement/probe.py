"""Speed, scaling and memory probes: bounded timed training steps, no converged model.

A probe builds the model from its initial weights and times real training
steps (the engine's ``train_step``: forward, backward over the preset's
chunks, all-reduce, clip, update) on the training split. ``warmup`` untimed
steps come first (tracing, compilation, cuDNN autotuning, allocator growth),
then ``repeats`` timed blocks of ``steps`` steps each. Strong scaling keeps
the preset's global batch at every device count (what a training job runs);
weak scaling gives every device the preset's batch, so the global batch grows
with the devices. The figures: tokens/s per block (their median is the
headline), the median step time, the framework allocator's peak summed over
the devices, and what NVML saw the job's processes hold.
"""

import time

import numpy as np

from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split
from mosbench.engines import load_engine
from mosbench.errors import MosbenchError
from mosbench.measurement.hardware import HardwareMonitor, hardware_metrics
from mosbench.measurement.provenance import provenance

SCALINGS = ("strong", "weak")


def global_batch(hparams, scaling, n_devices):
    """The rows of one step: the preset's batch (strong), or that many per device (weak)."""
    if scaling not in SCALINGS:
        raise MosbenchError(f"unknown scaling '{scaling}'; allowed: {list(SCALINGS)}")
    return hparams["batch_size"] * (n_devices if scaling == "weak" else 1)


def run_probe(data_dir, *, model_name, hparams, seed, gpus, framework, scaling="strong",
              steps=50, warmup=5, repeats=3, threads=None, devices=None, engine_options=None):
    """Time ``repeats`` blocks of ``steps`` training steps; a dict of figures.

    ``devices`` overrides the GPUs (the tests use logical CPU devices).
    """
    n_devices = len(devices) if devices else max(gpus, 1)
    batch, bptt = global_batch(hparams, scaling, n_devices), hparams["bptt"]
    train_ids, meta = load_split(data_dir, "train")
    streams = batchify(train_ids, batch)
    if streams.shape[1] < bptt + 1:
        raise MosbenchError(f"{scaling}-scaling probe: the training split has too few tokens "
                            f"for a batch of {batch} x {bptt + 1} ({len(train_ids)} tokens)")
    with HardwareMonitor(gpus=gpus) as monitor:
        engine = load_engine(framework, engine_options, gpus=gpus, threads=threads,
                             devices=devices, seed=seed,
                             precision=hparams.get("matmul_precision", "float32"))
        try:
            engine.build(model_name, meta["vocab_size"], hparams)
            engine.prepare_training(hparams, batch)
            states, step = engine.initial_state(batch), 0

            def window():
                nonlocal step
                start = (step * bptt) % (streams.shape[1] - bptt)
                step += 1
                return streams[:, start:start + bptt + 1]

            began = time.perf_counter()
            for _ in range(warmup):
                w = window()
                _, states = engine.train_step(w[:, :-1], w[:, 1:], states, hparams["lr"], False)
            warmup_s = time.perf_counter() - began
            blocks, step_times = [], []
            for _ in range(repeats):
                block_began = time.perf_counter()
                for _ in range(steps):
                    w = window()
                    t = time.perf_counter()
                    # returns once the step has finished (the engines synchronise)
                    _, states = engine.train_step(w[:, :-1], w[:, 1:], states, hparams["lr"],
                                                  False)
                    step_times.append(time.perf_counter() - t)
                blocks.append(batch * bptt * steps / (time.perf_counter() - block_began))
            allocator_peak, allocator_absent = engine.allocator_peak_mb()
            ran_on = provenance(engine.versions(), gpus)
        finally:
            engine.close()  # data-parallel workers stop before the monitor's last sample
    hardware, absent = hardware_metrics(monitor)
    if allocator_absent:
        absent["allocator_peak_mb"] = allocator_absent
    return {"scaling": scaling, "devices": n_devices, "per_device_batch": batch / n_devices,
            "global_batch": batch, "bptt": bptt, "warmup_steps": warmup, "timed_steps": steps,
            "repeats": repeats, "warmup_s": warmup_s,
            "tokens_per_s": float(np.median(blocks)), "tokens_per_s_blocks": blocks,
            "step_time_median_s": float(np.median(step_times)),
            "allocator_peak_mb": allocator_peak, **hardware, "absent": absent,
            "provenance": ran_on}
