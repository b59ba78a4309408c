"""The PyTorch engine through the Engine interface, where it goes beyond the others.

What every engine must do (the same numbers as the first framework, weight
round trips, bit-identical resumes on one process, evaluation) is the
conformance suite's (``test_engine_conformance.py``). Here:

* Data parallelism over two CPU processes (gloo) makes the update one process
  makes, with an uneven split (4 + 3 rows); locked and embedding dropout draw
  their own masks per replica while weight drop's mask is shared.
* Worker processes never outlive the job, whether it exits or is killed.
* A resume from ``checkpoint_arrays`` is bit-identical, dropout on, on two
  processes; draws from torch's global generator (a ``DataLoader``) leave
  the masks alone.
* On the CPU the fused-LSTM check refuses the model (it passes on CUDA).
* Each ``matmul_precision`` sets PyTorch's flags; mixed bfloat16 trains
  float32 weights to a loss within 2 % of float32.

``pytest -s`` prints the largest differences seen.
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from toy_stream import AWD, DROPOUTS, LR, LSTM, VOCAB, train, training_windows  # noqa: E402

from mosbench.engines import load_engine  # noqa: E402
from mosbench.engines.pytorch.engine import ShardedStates  # noqa: E402
from mosbench.errors import MosbenchError  # noqa: E402

PRESETS = {"awd-lstm-mos": AWD, "lstm": LSTM}


@pytest.fixture(autouse=True)
def _torch_flags():
    """Engines set process-wide flags (threads, precision, determinism): put them back."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    yield
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1])
    torch.set_float32_matmul_precision(saved[2])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3:5]
    torch.backends.cudnn.deterministic = saved[5]


def engine(model="awd-lstm-mos", framework="pytorch", hp=None, batch=6, **placement):
    built = load_engine(framework, **{"seed": 1, "threads": 2, **placement})
    hp = hp or PRESETS[model]
    built.build(model, VOCAB, hp)
    built.prepare_training(hp, batch)
    return built


def largest_difference(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# ------------------------------------------------------------------ data parallelism


def test_two_processes_make_the_update_one_process_makes():
    """Batch 7 over two CPU processes (4 + 3 rows), chunks of 2, a tiny clip, weight decay."""
    hp = {**AWD, "small_batch_size": 2, "clip": 0.01}
    data = training_windows(7, 3)
    one = engine(hp=hp, batch=7)
    one_losses, one_states = train(one, data, average_from=1)
    with engine(hp=hp, batch=7, devices=["cpu", "cpu"]) as two:
        two_losses, two_states = train(two, data, average_from=1)
        with pytest.raises(MosbenchError, match="only the latest"):
            two.train_step(*data[0], ShardedStates(1), LR, False)
        states_error = largest_difference(dict(enumerate(one.state_arrays(one_states))),
                                          dict(enumerate(two.state_arrays(two_states))))
        weights_error = largest_difference(one.weights(), two.weights())
        with one.averaged(), two.averaged():
            average_error = largest_difference(one.weights(), two.weights())
    rel = np.abs(one_losses / two_losses - 1).max()
    print(f"\nNLL rel {rel:.2e}, weights {weights_error:.2e}, averaged {average_error:.2e}, "
          f"states {states_error:.2e}")
    assert rel < 1e-6 and weights_error < 1e-6 and average_error < 1e-6 and states_error < 1e-6
    assert two.workers is None  # closed


def _halves_after_one_step(rates, devices):
    """Carried states after one step on a batch whose rows 4-7 repeat rows 0-3."""
    hp = {**AWD, **dict.fromkeys(DROPOUTS, 0.0), **rates, "small_batch_size": None}
    x, y = training_windows(4, 1)[0]
    x, y = np.concatenate([x, x]), np.concatenate([y, y])
    with engine(hp=hp, batch=8, devices=devices) as built:
        loss, states = built.train_step(x, y, built.initial_state(8), LR, False)
        arrays = built.state_arrays(states)
        weights = built.weights()
    return loss, arrays, weights


@pytest.mark.parametrize("site", ["dropouti", "dropoute"])
def test_replicas_draw_their_own_sequence_masks(site):
    _, arrays, _ = _halves_after_one_step({site: 0.5}, ["cpu", "cpu"])
    difference = max(float(np.abs(a[:4] - a[4:]).max()) for a in arrays)
    print(f"\n{site}: the replicas' equal rows differ by {difference:.2e}")
    assert difference > 1e-3


def test_replicas_share_the_weight_drop_mask():
    """Equal rows stay equal across replicas, and the update is one process' update."""
    loss, arrays, weights = _halves_after_one_step({"wdrop": 0.5}, ["cpu", "cpu"])
    one_loss, _, one_weights = _halves_after_one_step({"wdrop": 0.5}, None)
    difference = max(float(np.abs(a[:4] - a[4:]).max()) for a in arrays)
    print(f"\nweight drop: replicas' rows differ by {difference:.2e}; against one process "
          f"weights {largest_difference(weights, one_weights):.2e}")
    assert difference < 1e-6
    assert abs(loss / one_loss - 1) < 1e-6
    assert largest_difference(weights, one_weights) < 1e-6
    dropless = _halves_after_one_step({}, None)[2]
    assert largest_difference(weights, dropless) > 1e-3  # the mask really dropped


WORKERS_SCRIPT = """
import os, signal, sys
from mosbench.engines import load_engine

if __name__ == "__main__":
    engine = load_engine("pytorch", devices=["cpu", "cpu"], threads=1)
    engine.build("lstm", 40, {hp!r})
    engine.prepare_training({hp!r}, 4)
    print(*(p.pid for p in engine.workers.processes), flush=True)
    if sys.argv[1] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("end", ["exits", "killed"])
def test_workers_never_outlive_the_job(tmp_path, end):
    """Whether the job's process exits without closing the engine or is killed outright."""
    script = tmp_path / "job.py"
    script.write_text(WORKERS_SCRIPT.format(hp=LSTM))
    done = subprocess.run([sys.executable, str(script), end], capture_output=True, text=True,
                          timeout=120)
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 1, done.stderr[-2000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and running(pids[0]):
        time.sleep(0.2)
    assert not running(pids[0]), f"replica process {pids[0]} outlived the job"


def running(pid):
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# ------------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("devices", [["cpu", "cpu"]], ids=["two-processes"])
def test_a_resume_is_bit_identical(tmp_path, devices):
    hp = {**AWD, **DROPOUTS}
    data = training_windows(6, 6)
    with engine(hp=hp, deterministic=True, devices=devices) as straight:
        straight_losses, _ = train(straight, data, average_from=2)
        expected = straight.checkpoint_arrays()
    with engine(hp=hp, deterministic=True, devices=devices) as first:
        first_losses, states = train(first, data[:3], average_from=2)
        np.savez(tmp_path / "checkpoint.npz", **first.checkpoint_arrays(),
                 **{f"hidden/{i}": a for i, a in enumerate(first.state_arrays(states))})
    with engine(hp=hp, deterministic=True, devices=devices, seed=2) as resumed:
        with np.load(tmp_path / "checkpoint.npz") as stored:
            resumed.restore_checkpoint({k: stored[k] for k in stored.files
                                        if not k.startswith("hidden/")})
            hidden = [stored[f"hidden/{i}"] for i in range(4)]
        states = resumed.states_from_arrays(hidden)
        later = []
        for x, y in data[3:]:
            loss, states = resumed.train_step(x, y, states, LR, True)
            later.append(loss)
        got = resumed.checkpoint_arrays()
    assert list(straight_losses) == first_losses.tolist() + later
    assert expected.keys() == got.keys()
    unequal = [k for k in expected if not np.array_equal(expected[k], got[k])]
    assert not unequal
    assert int(got["average/count"]) == 4


def test_draws_from_the_global_generator_leave_the_masks_alone():
    """A DataLoader (or any code) drawing from torch's global generator between steps."""
    hp = {**AWD, **DROPOUTS}
    data = training_windows(6, 3)
    quiet = train(engine(hp=hp), data)[0]
    noisy, losses = engine(hp=hp), []
    states = noisy.initial_state(6)
    for x, y in data:
        torch.rand(1000)
        loss, states = noisy.train_step(x, y, states, LR, False)
        losses.append(loss)
    assert losses == quiet.tolist()


def test_the_average_is_the_mean_of_the_iterates():
    built = engine()
    data = training_windows(6, 5)
    train(built, data[:2])
    built.start_average()
    seen = []
    states = built.initial_state(6)
    for x, y in data[2:]:
        _, states = built.train_step(x, y, states, LR, True)
        seen.append(built.weights())
    with built.averaged():
        averaged = built.weights()
    assert largest_difference(built.weights(), seen[-1]) == 0  # the iterate came back
    mean = {k: np.mean([w[k] for w in seen], axis=0) for k in averaged}
    assert largest_difference(averaged, mean) < 1e-6


# ------------------------------------------------------------------------ the fused LSTM


def test_the_fused_lstm_check_refuses_a_cpu_model_and_passes_on_cuda():
    from mosbench.engines.pytorch.models import assert_fused_lstm

    model = engine().model
    with pytest.raises(RuntimeError, match="LSTM weights not on a CUDA device: rnns.0"):
        assert_fused_lstm(model)
    if torch.cuda.is_available():
        assert_fused_lstm(model.cuda())


# --------------------------------------------------------------------------- precision


@pytest.mark.cpu_bfloat16
def test_each_precision_sets_the_flags():
    expected = {"float32": (False, False, "highest"), "tf32": (True, True, "high"),
                "mixed_bfloat16": (False, False, "highest")}
    for precision, flags in expected.items():
        load_engine("pytorch", precision=precision)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                torch.get_float32_matmul_precision()) == flags, precision
    with pytest.raises(MosbenchError, match="matmul_precision"):
        load_engine("pytorch", precision="float16")


@pytest.mark.cpu_bfloat16
def test_a_mixed_bfloat16_step_trains_float32_weights_to_a_close_loss():
    full, mixed = engine(), engine(precision="mixed_bfloat16")
    mixed.load_weights(full.weights())
    data = training_windows(6, 3)
    full_losses, mixed_losses = train(full, data)[0], train(mixed, data)[0]
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert all(a.dtype == np.float32 for a in mixed.weights().values())
    rel = np.abs(mixed_losses / full_losses - 1).max()
    print(f"\nmixed bfloat16 against float32: loss rel diff {rel:.2e}")
    assert rel < 0.02
    assert largest_difference(full.weights(), mixed.weights()) > 0  # bfloat16 really ran
