"""What only the JAX engine has: windows padded to a bucket, its compile count, shard_map.

The engine's agreement with the other frameworks is in test_engine_conformance.py
and its masks in test_random_streams.py; here, the ways of running it that those
suites do not choose.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from toy_stream import AWD, DROPOUTS, LR, LSTM, train, training_windows

from conftest import REPO
from mosbench.data.batching import batchify, read_ids, windows
from mosbench.engines import load_engine
from mosbench.errors import MosbenchError

pytest.importorskip("jax")

HP = {**AWD, **DROPOUTS}


def _engine(bucket, hp=HP, seed=3):
    engine = load_engine("jax", {"bptt_bucket": bucket}, seed=seed, threads=2)
    engine.build("awd-lstm-mos", 40, hp)
    engine.prepare_training(hp, 6)
    return engine


def test_windows_padded_to_a_bucket_train_as_exact_ones_with_one_compile():
    """Lengths 6, 4, 7, 5 padded to 8 steps: the same losses, weights and states as exact
    windows, dropout on (every AWD mask is drawn per sequence or per matrix, not per
    step, so padding draws the same masks), from one compiled program instead of four."""
    data = training_windows(6, 8)
    # chunks of 3 rows: settings of this test's own, so no other test compiled its programs
    hp = {**HP, "small_batch_size": 3}
    exact, padded = _engine(None, hp), _engine(8, hp)
    padded.load_weights(exact.weights())
    start = padded.weights()
    results = {}
    for name, engine in (("exact", exact), ("padded", padded)):
        losses, states = train(engine, data, average_from=4)
        results[name] = losses, engine.state_arrays(states), engine.weights()
    (loss_a, states_a, weights_a), (loss_b, states_b, weights_b) = results.values()
    assert np.abs(loss_a / loss_b - 1).max() < 1e-5
    assert max(float(np.abs(a - b).max()) for a, b in zip(states_a, states_b, strict=True)) < 1e-5
    assert max(float(np.abs(weights_a[n] - weights_b[n]).max()) for n in weights_a) < 1e-5
    assert max(float(np.abs(weights_b[n] - start[n]).max()) for n in start) > 1e-2  # it moved
    (exact_figures, reason), (padded_figures, _) = (e.compile_statistics()
                                                    for e in (exact, padded))
    assert reason is None and exact_figures["compile_s"] > 0
    assert exact_figures["compiles"] == 4 and padded_figures["compiles"] == 1


def test_padding_that_leaked_into_the_loss_or_state_would_show():
    """The same padded program with the length ignored (the padding counted as real steps)
    gives other losses: the masking above is what makes the two paths agree."""
    data = training_windows(6, 2, lengths=(5,))
    masked, leaking = _engine(8), _engine(8)
    leaking.load_weights(masked.weights())
    first = train(masked, data)[0]
    states = leaking.initial_state(6)
    unmasked = []
    for x, y in data:
        padded = [np.pad(a, ((0, 0), (0, 3))) for a in (x, y)]
        loss, states = leaking.train_step(*padded, states, LR, False)
        unmasked.append(loss)
    assert np.abs(first - np.array(unmasked)).max() > 1e-3


def test_two_devices_make_the_update_one_device_makes():
    """shard_map over 2 logical CPU devices (a process of its own) against 1: the losses,
    weights, average and states of a few clipped steps, dropout off, with weight drop
    (one mask per global batch, shared by the replicas), and a batch of 5 rows (3 + 2)."""
    done = subprocess.run([sys.executable, str(REPO / "tests" / "jax_data_parallel_check.py")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("too_few_rows") == ("batch_size 1 is smaller than the 2 devices it "
                                          "would be split over: some would get no rows")
    for case, found in result.items():
        assert found["devices"] == 2, case
        assert found["loss"] < 1e-5 and found["states"] < 1e-5, (case, found)
        assert found["weights"] < 1e-5 and found["averaged"] < 1e-5, (case, found)
        assert found["moved"] > 1e-3, (case, found)  # training moved: equality is not vacuous
        assert found["programs"] == 1, (case, found)  # one per window length, not per step


def test_devices_jax_does_not_show_are_refused_in_one_line():
    with pytest.raises(MosbenchError, match=r"2 GPU device\(s\) were asked for .* JAX shows 0 "
                                            r"on this machine; use gpus: \[0\]"):
        load_engine("jax", gpus=2)
    with pytest.raises(MosbenchError, match=r"mix the CPU and GPUs"):
        load_engine("jax", devices=["/cpu:0", "/gpu:0"])


def test_versions_name_jax_jaxlib_and_optax():
    import jax

    from mosbench.engines import engine_class

    versions = engine_class("jax").versions()
    assert versions["framework"] == "jax" and versions["framework_version"] == jax.__version__
    assert set(versions["libraries"]) == {"jaxlib", "optax"}
    if not [d for d in jax.devices() if d.platform == "gpu"]:
        assert versions["cuda"] is None and versions["cudnn"] is None


def test_versions_survive_jaxs_private_cuda_module_moving(monkeypatch, caplog):
    """The CUDA and cuDNN versions come from jax._src.lib.cuda_versions, which a JAX release
    may move: then they are None, the rest is recorded, and a CUDA install logs why."""
    from types import SimpleNamespace

    import jax._src.lib

    from mosbench.engines.jax import engine as jax_engine

    def versions():
        found = jax_engine.JaxEngine.versions()
        assert found["framework_version"] == jax.__version__
        assert set(found["libraries"]) == {"jaxlib", "optax"}
        return found["cuda"], found["cudnn"]

    def failing():
        raise RuntimeError("no libcudart")

    private = "cuda_versions"
    monkeypatch.setattr(jax_engine, "CUDA_PLUGINS", ("mosbench_no_such_plugin",))
    monkeypatch.setattr(jax._src.lib, private, SimpleNamespace(
        cuda_runtime_get_version=lambda: 12080, cudnn_get_version=lambda: 91000),
        raising=False)
    assert versions() == ("12080", "91000")  # what the plugin reports, as text
    monkeypatch.setattr(jax._src.lib, private, SimpleNamespace(
        cuda_runtime_get_version=failing, cudnn_get_version=lambda: 91000))
    assert versions() == (None, "91000")  # one failing call leaves the other
    monkeypatch.delattr(jax._src.lib, private)  # moved out of jax._src.lib
    assert versions() == (None, None)
    monkeypatch.setitem(sys.modules, "jax._src.lib", None)  # jax._src.lib itself gone
    assert versions() == (None, None)
    assert "not recorded" not in caplog.text  # no CUDA plugin installed: nothing lost
    monkeypatch.setattr(jax_engine, "CUDA_PLUGINS", ("json",))  # one installed
    with caplog.at_level("WARNING", logger=jax_engine.__name__):
        assert versions() == (None, None)
    assert "the CUDA and cuDNN versions are not recorded" in caplog.text


def test_the_input_pipelines_read_the_training_windows(tiny_data, tmp_path):
    engine = load_engine("jax")
    path = tiny_data / "train.parquet"
    streams = batchify(read_ids(path), 4)
    expected = (sum(x.size for x, _ in windows(streams, 7)),
                sum(int(y.sum(dtype=np.int64)) for _, y in windows(streams, 7)))
    pipelines = engine.input_pipelines(path, 4, 7, tmp_path / "cache")
    assert set(pipelines) == {"stream", "cache_memory", "cache_file"}
    for name, one_pass in pipelines.items():
        assert one_pass() == expected, name
        assert one_pass() == expected, f"{name}, second pass (from its cache)"
    assert (tmp_path / "cache.npy").exists()


CACHED_JOB = """
import json, sys
import numpy as np
from mosbench.engines import load_engine
engine = load_engine("jax", {"compilation_cache": sys.argv[1]}, seed=1)
engine.build("lstm", 40, json.loads(sys.argv[2]))
states = engine.initial_state(2)
engine.eval_window(np.zeros((2, 5), np.int32), np.zeros((2, 5), np.int32), states)
print(engine.compile_statistics()[0]["compiles"])
"""


def test_a_compilation_cache_keeps_the_programs_for_the_next_job(tmp_path):
    """engines.jax.compilation_cache: a job (a fresh process, as Snakemake starts) writes its
    programs there, however quick their compile, and the next job finds them there: it
    writes none (and still counts the compiles it asked for)."""
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("JAX_")}  # not the test session's own cache
    entries = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", CACHED_JOB, str(cache), json.dumps(LSTM)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert int(done.stdout.split()[-1]) >= 1
        entries.append(sorted(path.name for path in cache.iterdir()))
    assert any(name.endswith("-cache") for name in entries[0])
    assert entries[1] == entries[0]



XLA_FLAGS_JOB = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
os.environ.pop("XLA_FLAGS", None)
import jax
from jax._src import xla_bridge
from mosbench.engines.jax import runtime
runtime.configure(threads=1)
print("before:", os.environ.pop("XLA_FLAGS", None))
jax.devices()
runtime.configure(threads=1)
print("after:", os.environ.pop("XLA_FLAGS", None))
del xla_bridge.backends_are_initialized  # a JAX without the private function
runtime.configure(threads=1)
print("cannot ask:", os.environ.pop("XLA_FLAGS", None))
"""


def test_xla_flags_are_set_before_the_backend_starts_and_said_to_be_late_after():
    """XLA reads XLA_FLAGS once: configure() sets them while no backend has started and,
    once one has, logs that they were not applied. A JAX that no longer lets it ask gets
    them set anyway (an XLA that has started ignores them: only the log line is lost)."""
    done = subprocess.run([sys.executable, "-c", XLA_FLAGS_JOB],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    flag = "--xla_cpu_multi_thread_eigen=false"
    assert f"before: {flag}" in done.stdout
    assert "after: None" in done.stdout
    assert f"XLA already started: {flag} not applied" in done.stdout
    assert f"cannot ask: {flag}" in done.stdout
