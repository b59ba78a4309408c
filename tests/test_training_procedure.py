"""The reference training procedure: BPTT windows, NT-ASGD, checkpoints, resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import TINY_CONFIG
from mosbench.engines import FRAMEWORKS, load_engine
from mosbench.engines.tensorflow.averaging import IterateAverage
from mosbench.engines.tensorflow.models import build_model
from mosbench.errors import PAUSED_EXIT_CODE, MosbenchError
from mosbench.training import checkpoint
from mosbench.training.bptt import epoch_windows, sample_seq_len
from mosbench.training.nt_asgd import nonmono_triggered

MOSBENCH = Path(sys.executable).with_name("mosbench")


# --- variable-length BPTT -------------------------------------------------------------------

def test_windows_cover_the_stream_once_with_reference_lengths():
    rng = np.random.default_rng(0)
    windows = list(epoch_windows(rng, 5000, 70, variable=True, max_seq_len_delta=40))
    starts = [s for s, _, _ in windows]
    lengths = [n for _, n, _ in windows]
    assert starts[0] == 0
    assert all(a + n == b for a, n, b in zip(starts, lengths, starts[1:], strict=False))
    assert starts[-1] + lengths[-1] == 4999  # every position but the last is an input once
    assert min(lengths[:-1]) >= 5 and max(lengths) <= 110
    assert all(scale == pytest.approx(n / 70) for _, n, scale in windows[:-1])
    fixed = list(epoch_windows(rng, 1000, 35, variable=False))
    assert {n for _, n, _ in fixed[:-1]} == {35} and {s for _, _, s in fixed} == {1.0}


def test_sequence_length_distribution():
    rng = np.random.default_rng(1)
    lengths = np.array([sample_seq_len(rng, 70) for _ in range(20000)])
    halves = (lengths < 52).mean()  # base bptt/2 = 35 with probability 0.05
    assert 0.04 < halves < 0.06
    assert abs(np.median(lengths) - 70) <= 1 and lengths.min() >= 5
    assert max(sample_seq_len(rng, 70, cap=72) for _ in range(2000)) == 72


def test_variable_windows_compile_once():
    import keras

    from mosbench.engines.tensorflow.steps import make_train_step

    model = build_model("lstm", 20, HP)
    optimizer = keras.optimizers.SGD(1.0)
    step = make_train_step(model, optimizer, 4, dict(HP, clip=0.25, small_batch_size=None))
    states = model.initial_state(4)
    for length in (5, 9, 70, 3):
        tokens = np.random.default_rng(length).integers(0, 20, (4, length + 1)).astype("int32")
        _, states = step(tf.constant(tokens[:, :-1]), tf.constant(tokens[:, 1:]), states,
                         tf.constant(1.0))
    assert step.experimental_get_tracing_count() == 1


def test_resuming_an_epoch_draws_the_same_windows():
    whole = list(epoch_windows(np.random.default_rng(3), 3000, 70))
    rng = np.random.default_rng(3)
    first = epoch_windows(rng, 3000, 70)
    head = [next(first) for _ in range(10)]
    resumed = rng.bit_generator.state  # what a checkpoint keeps
    restored = np.random.default_rng()
    restored.bit_generator.state = resumed
    rest = list(epoch_windows(restored, 3000, 70, start=head[-1][0] + head[-1][1]))
    assert head + rest == whole


# --- NT-ASGD ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("previous", "loss", "fires"),
    [
        ([5.0, 4.0, 3.0], 3.5, False),  # not more than nonmono=3 losses before it
        ([5.0, 4.0, 3.0, 2.9], 4.5, False),  # worse than 5.0? no: best of all but the last 3
        ([5.0, 4.0, 3.0, 2.9], 5.1, True),
        ([3.0, 4.0, 5.0, 6.0, 7.0], 3.5, True),  # min of the first two is 3.0
        ([3.0, 4.0, 5.0, 6.0, 7.0], 2.9, False),
    ],
)
def test_nonmono_trigger_follows_the_reference_rule(previous, loss, fires):
    assert nonmono_triggered(previous, loss, nonmono=3) is fires


def test_iterate_average_is_the_mean_of_the_iterates():
    variable = tf.Variable([1.0, -2.0])
    averager = IterateAverage([variable])
    iterates = [np.array([1.0, 2.0]), np.array([3.0, -4.0]), np.array([8.0, 0.5])]
    for value in iterates:
        variable.assign(value)
        averager.update()
    np.testing.assert_allclose(averager.averages[0].numpy(), np.mean(iterates, axis=0))
    with averager.swapped_in():
        np.testing.assert_allclose(variable.numpy(), np.mean(iterates, axis=0))
    np.testing.assert_array_equal(variable.numpy(), iterates[-1])  # the iterate comes back


# --- checkpoints ----------------------------------------------------------------------------

HP = dict(emsize=8, nhid=8, nlayers=1, dropout=0.0, tie_weights=True, init_range=0.1, lr=1.0,
          clip=0.25, small_batch_size=None)


def _engine(framework, hparams=HP):
    engine = load_engine(framework)
    engine.build("lstm", 20, hparams)
    engine.prepare_training(hparams, 4)
    return engine


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_checkpoint_round_trip_and_verification(tmp_path, framework):
    engine = _engine(framework)
    checkpoint.save(tmp_path, engine, {"epoch": 3}, hidden=[np.ones((2, 8))])
    saved = engine.checkpoint_arrays()
    engine.load_weights({name: np.zeros_like(value) for name, value in engine.weights().items()})
    state, hidden = checkpoint.load(tmp_path, engine)
    assert state["epoch"] == 3 and hidden[0].shape == (2, 8)
    for name, value in engine.checkpoint_arrays().items():
        np.testing.assert_array_equal(value, saved[name])

    arrays = tmp_path / json.loads((tmp_path / checkpoint.STATE).read_text())["arrays"]
    raw = arrays.read_bytes()
    arrays.write_bytes(raw[: len(raw) // 2])  # a half-written file
    with pytest.raises(MosbenchError, match="does not match its checksum"):
        checkpoint.load(tmp_path, engine)


def test_a_newer_npz_without_its_json_is_ignored_then_cleaned(tmp_path):
    """A job killed between writing the npz and the JSON: the previous checkpoint holds."""
    engine = _engine("tensorflow")
    state = {"epoch": 1}
    checkpoint.save(tmp_path, engine, state)
    named = json.loads((tmp_path / checkpoint.STATE).read_text())["arrays"]
    (tmp_path / "checkpoint-99.npz").write_bytes(b"an interrupted write")
    (tmp_path / "best-7.weights.npz").write_bytes(b"best weights of an epoch never checkpointed")
    assert checkpoint.load(tmp_path, engine)[0]["epoch"] == 1
    state.update(epoch=2, keep=["best-1.weights.npz"])
    checkpoint.save(tmp_path, engine, state)
    (tmp_path / "best-1.weights.npz").write_bytes(b"kept")
    state["epoch"] = 3
    checkpoint.save(tmp_path, engine, state)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["best-1.weights.npz", "checkpoint-3.npz", "checkpoint.json"]
    assert named == "checkpoint-1.npz"
    checkpoint.remove(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_checkpoint_of_another_model_is_refused(tmp_path, framework):
    checkpoint.save(tmp_path, _engine(framework), {"epoch": 1})
    other = _engine(framework, dict(HP, emsize=12, nhid=12))
    with pytest.raises(MosbenchError, match="different model or preset"):
        checkpoint.load(tmp_path, other)


# --- whole jobs: interrupted and resumed ------------------------------------------------------

def _config(tmp_path):
    """The tiny MoS preset, deterministic, with NT-ASGD switching and a finetune phase."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["presets"]["tiny"]["awd-lstm-mos"].update(
        epochs=4, nonmono=1, finetune_epochs=1, small_batch_size=4, max_seq_len_delta=10,
        deterministic=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _job(workdir, config, *stages, kill_after=None, sig=signal.SIGKILL):
    """Run mosbench stages in ``workdir``; optionally kill training when a line appears."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    for stage in stages:
        argv = [str(MOSBENCH), "--config", str(config), *stage]
        if kill_after is None or stage[0] != "train":
            done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
            continue
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            if line.startswith(kill_after):
                process.send_signal(sig)
                break
        process.stdout.read()
        return process.wait(timeout=600)
    return 0


def _train(framework):
    return ("train", "tiny", "awd-lstm-mos", "--seed", "1", "--framework", framework)


def _run_dir(framework):
    return Path(f"results/train/{framework}/tiny/awd-lstm-mos/seed1-gpus0")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    config = _config(workdir)
    _job(workdir, config, ("download", "tiny"), ("tokenise", "tiny"))
    return workdir, config, set()


def _losses(workdir, framework):
    summary = json.loads((workdir / _run_dir(framework) / "train.json").read_text())
    return [(r["epoch"], r["phase"], r["train_loss"], r["valid_loss"], r["averaging"])
            for r in summary["history"]], summary


# This test adds to tests/test_preemption.py (each framework's jobs stopped both ways at seven
# points) the MoS model's NT-ASGD switch and finetune phase, which the framework-neutral
# procedure carries over a stop: one engine suffices, the one that starts fastest. Each engine's
# own state (weights, optimiser, iterate average, generators) resuming bit for bit is
# tests/test_engine_conformance.py's test_a_resume_is_bit_identical, for every framework.
PROCEDURE_FRAMEWORK = "pytorch"
STOPS = [("epoch   2", signal.SIGKILL, -signal.SIGKILL),  # killed hard after epoch 2 ended
         ("epoch   1", signal.SIGTERM, PAUSED_EXIT_CODE)]  # SLURM's warning: pause mid-epoch


@pytest.mark.slow
@pytest.mark.parametrize(("kill_after", "sig", "exit_code", "framework"),
                         [(*stop, PROCEDURE_FRAMEWORK) for stop in STOPS])
def test_interrupted_job_resumes_to_the_same_result(uninterrupted, tmp_path, kill_after, sig,
                                                     exit_code, framework):
    whole_dir, config, trained = uninterrupted
    if framework not in trained:  # the uninterrupted job, once per framework
        _job(whole_dir, config, _train(framework))
        trained.add(framework)
    run_dir = _run_dir(framework)
    shutil.copytree(whole_dir / "results" / "data", tmp_path / "results" / "data")
    assert _job(tmp_path, config, _train(framework), kill_after=kill_after, sig=sig) == exit_code
    assert checkpoint.exists(tmp_path / run_dir)
    assert not (tmp_path / run_dir / "train.json").exists()
    _job(tmp_path, config, _train(framework))

    expected, whole = _losses(whole_dir, framework)
    resumed, summary = _losses(tmp_path, framework)
    assert resumed == expected  # bit-identical: deterministic ops, every RNG state checkpointed
    assert {phase for _, phase, *_ in expected} == {"train", "finetune"}
    assert not checkpoint.exists(tmp_path / run_dir)  # removed once the job is done

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mosbench-test"])
    assert len(runs) == 1 and runs["status"].tolist() == ["FINISHED"]
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(summary["run_id"],
                                                                       "history/valid_ppl")]
    assert steps == list(range(1, len(expected) + 1))  # each epoch once, none missing


# --- dynamic evaluation -----------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dynamic_evaluation(tiny_data, framework):
    from mosbench.data.tokenise import load_split
    from mosbench.evaluation.dynamic_eval import dynamic_evaluation
    from mosbench.evaluation.perplexity import evaluate_loss

    engine = load_engine(framework)
    engine.build("lstm", 40, dict(HP, init_range=0.5))
    train_ids, _ = load_split(tiny_data, "train")
    test_ids = load_split(tiny_data, "test")[0][:600]
    trained = engine.weights()
    static = evaluate_loss(engine, test_ids, 1, 5)
    frozen = dynamic_evaluation(engine, train_ids, test_ids, lr=0.0, lamb=0.0, epsilon=1e-3,
                                stat_max_batches=5)
    assert frozen == pytest.approx(static, rel=1e-6)  # no step: the static score
    # On text that repeats, adapting to what was just read must help.
    repeated = np.tile(test_ids[:40], 15)
    adapted = dynamic_evaluation(engine, train_ids, repeated, lr=0.01, lamb=0.0, epsilon=1e-3,
                                 stat_max_batches=5)
    assert adapted < evaluate_loss(engine, repeated, 1, 5)
    for name, value in engine.weights().items():
        np.testing.assert_array_equal(value, trained[name])  # trained weights restored
