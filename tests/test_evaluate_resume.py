"""Evaluate paused by SIGTERM or its time budget, dynamic evaluation included, and resumed.

Each engine's dynamic-evaluation pass stopped mid-way and resumed from its
saved arrays equals one whole pass. Whole evaluations (PyTorch, which starts
fastest; the stages are engine-neutral) of the tiny MoS with dynamic
evaluation on (small settings: about 75 segments of 20 tokens per split),
with a real MLflow store and the real SIGTERM the process sends itself at a
fault point (``MOSBENCH_FAULT``) inside the dynamic-evaluation loop. The
tests hold a SIGTERM handler of their own while evaluate runs, so an
evaluate that ignored the signal finishes (and the test fails) instead of
killing pytest.
"""

import itertools
import json
import math
import shutil
import signal

import mlflow
import numpy as np
import pytest
import yaml

from conftest import TINY_CONFIG
from mosbench import faults
from mosbench.cli import main
from mosbench.config import validate_config
from mosbench.data.tokenise import load_split
from mosbench.engines import FRAMEWORKS, engine_class, load_engine
from mosbench.errors import PAUSED_EXIT_CODE, EvaluationPaused, MosbenchError
from mosbench.evaluation.dynamic_eval import PassState, adaptive_pass, gradient_statistics
from mosbench.evaluation.evaluate import MEASUREMENT_EVALUATION, RESULT_EVALUATION, evaluate
from mosbench.evaluation.resume import PROGRESS

MODEL = "awd-lstm-mos"
DYNAMIC = {"lr": 0.002, "lamb": 0.075, "epsilon": 0.001, "bptt": 20, "batch_size": 1,
           "stat_batch_size": 100, "stat_max_batches": 3}
TIMINGS = ("eval_tokens_per_s", "test_tokens_per_s", "latency_ms_median", "latency_ms_p95")
# the passes' seconds over every launch, and their sums: no two runs share them either
PASS_SECONDS = (*RESULT_EVALUATION, *MEASUREMENT_EVALUATION, "result_eval_s",
                "measurement_eval_s")
LAUNCH_KEYS = ("provenance", "provenance_launches")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real SQLite MLflow store for the module (creating one takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
    mlflow.set_tracking_uri(None)


def _trained(root, framework, tiny_data, hparams, seed=0):
    """A train job's outputs: the engine's initial weights and a train.json with a real run."""
    engine = load_engine(framework, seed=seed)
    engine.build(MODEL, load_split(tiny_data, "valid")[1]["vocab_size"], hparams)
    root.mkdir(parents=True)
    np.savez(root / "model.weights.npz", **engine.weights())
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("mosbench-test")
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment("mosbench-test"))
    run_id = client.create_run(experiment_id).info.run_id
    (root / "train.json").write_text(json.dumps(
        {"framework": framework, "dataset": "tiny", "model": MODEL, "seed": 1, "gpus": 0,
         "run_id": run_id}))
    return root


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_data, store):
    """A trained PyTorch job and its metrics from an uninterrupted evaluation."""
    config = validate_config(yaml.safe_load(TINY_CONFIG.read_text()))
    hparams = {**config["presets"]["tiny"][MODEL], "dynamic_eval": DYNAMIC}
    framework = "pytorch"
    root = tmp_path_factory.mktemp(f"evaluate-{framework}")
    train_dir = _trained(root / "train", framework, tiny_data, hparams)

    def run(out_dir, **kwargs):
        return evaluate(tiny_data, train_dir, out_dir / "metrics.json", model_name=MODEL,
                        hparams=hparams, experiment="mosbench-test", framework=framework,
                        threads=1, **kwargs)

    whole = run(root / "whole")
    return {"framework": framework, "run": run, "data": tiny_data, "train_dir": train_dir,
            "whole": whole}


def _stop_after(segments):
    """A ``stop`` for adaptive_pass: true once ``segments`` are scored in this call."""
    asked = itertools.count(1)
    return lambda: next(asked) >= segments


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_engine_s_pass_stopped_and_resumed_from_its_arrays_equals_a_whole_pass(
        framework, tiny_data):
    hparams = dict(emsize=6, nhid=10, nhidlast=8, nlayers=2, dropout=0.3, dropouth=0.3,
                   dropouti=0.3, dropoute=0.1, wdrop=0.3, init_range=0.5, n_experts=3,
                   dropoutl=0.3)
    engine = load_engine(framework, threads=1)  # two threads wait on each other when busy
    engine.build(MODEL, load_split(tiny_data, "valid")[1]["vocab_size"], hparams)
    trained = engine.weights()
    statistics = gradient_statistics(engine, load_split(tiny_data, "train")[0][:1200],
                                     stat_batch_size=8, stat_max_batches=3)
    ids = load_split(tiny_data, "test")[0][:201]  # 40 segments of 5
    settings = dict(lr=0.05, lamb=0.5, epsilon=1e-2)
    whole, _ = adaptive_pass(engine, ids, statistics, **settings)

    where = None
    for stop_at, scored in ((13, 13), (7, 20)):  # stopped twice, each time in a new call
        loss, where = adaptive_pass(engine, ids, statistics, **settings, resume=where,
                                    stop=_stop_after(stop_at))
        assert loss is None and len(where.losses) == scored
        for name, value in engine.weights().items():  # the trained weights are back
            np.testing.assert_array_equal(value, trained[name])
        # as saved and read back: copies, nothing shared with the engine
        where = PassState(list(where.losses), {n: a.copy() for n, a in where.weights.items()},
                          [a.copy() for a in where.states])
        assert max(float(np.abs(where.weights[n] - trained[n]).max()) for n in trained) > 1e-4
    resumed, _ = adaptive_pass(engine, ids, statistics, **settings, resume=where)
    assert resumed == whole  # bit for bit: the same float32 steps, states and weights carried


def _progress(folder):
    """The saved progress: its JSON and its arrays."""
    state = json.loads((folder / PROGRESS).read_text())
    with np.load(folder / state["arrays"]) as arrays:
        return state, {name: arrays[name] for name in arrays.files}


def _same_scores(metrics, whole):
    """Every figure but the timings (and the launches' provenance) equal, bit for bit."""
    skip = {*TIMINGS, *PASS_SECONDS, *LAUNCH_KEYS}
    assert {k: v for k, v in metrics.items() if k not in skip} == \
        {k: v for k, v in whole.items() if k not in skip}


class Counted:
    """Counts what the real engine computes: statistics passes and segments scored."""

    def __init__(self, monkeypatch, cls):
        self.statistics, self.segments = 0, 0
        gradient_statistics, adaptive_losses = cls.gradient_statistics, cls.adaptive_losses

        def counted_statistics(engine, *args, **kwargs):
            self.statistics += 1
            return gradient_statistics(engine, *args, **kwargs)

        def counted_losses(engine, *args, **kwargs):
            losses = adaptive_losses(engine, *args, **kwargs)
            self.segments += len(losses)
            return losses

        monkeypatch.setattr(cls, "gradient_statistics", counted_statistics)
        monkeypatch.setattr(cls, "adaptive_losses", counted_losses)


@pytest.fixture
def own_sigterm():
    """A SIGTERM handler of the test's while evaluate runs (evaluate's replaces it)."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append(True))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_in_dynamic_evaluation_pauses_and_the_rerun_ends_as_if_never_stopped(
        job, tmp_path, monkeypatch, own_sigterm):
    out = tmp_path / "evaluate"
    monkeypatch.setattr(faults, "_arrivals", {})
    monkeypatch.setenv("MOSBENCH_FAULT", "dynamic-segment:40:SIGTERM")
    with pytest.raises(EvaluationPaused, match=r"dynamic evaluation \(valid\) stopped after "
                                               r"segment 40"):
        job["run"](out)
    assert not (out / "metrics.json").exists()
    state, arrays = _progress(out)
    assert set(state["stages"]) == {"scores", "rank", "dynamic_statistics"}
    assert state["paused_pass"] == "dynamic_valid"
    assert len(arrays["pass/losses"]) == 40  # scored before the signal; saved at that boundary
    assert any(name.startswith("pass/weights/") for name in arrays)
    assert any(name.startswith("statistics/") for name in arrays)

    monkeypatch.delenv("MOSBENCH_FAULT")
    counted = Counted(monkeypatch, engine_class(job["framework"]))
    metrics = job["run"](out)
    assert counted.statistics == 0  # the saved statistics were used
    valid, test = (math.ceil((len(load_split(job["data"], split)[0]) - 1) / DYNAMIC["bptt"])
                   for split in ("valid", "test"))
    assert counted.segments == (valid - 40) + test  # the rest of valid, then test
    _same_scores(metrics, job["whole"])
    # the timings are the first launch's, measured once, and metrics.json says which launch
    assert {k: metrics[k] for k in TIMINGS} == {k: state["stages"]["scores"]["results"][k]
                                                for k in TIMINGS}
    assert metrics["provenance"] == state["launches"][0]
    assert len(metrics["provenance_launches"]) == 2
    assert not list(out.glob("*evaluate-progress*"))  # removed once the metrics are logged
    assert own_sigterm == []  # evaluate's handler took the signal
    history = mlflow.MlflowClient().get_metric_history(metrics["run_id"], "dynamic_test_ppl")
    assert [m.value for m in history][-1] == metrics["dynamic_test_ppl"]


def test_a_used_up_time_budget_pauses_at_each_stage_and_segment(job, tmp_path, own_sigterm):
    out = tmp_path / "evaluate"
    for expected in ({"scores"}, {"scores", "rank"}, {"scores", "rank", "dynamic_statistics"}):
        with pytest.raises(EvaluationPaused, match="stopped before"):
            job["run"](out, wall_time_s=1e-9)  # used up at once: one stage per launch
        state, _ = _progress(out)
        assert set(state["stages"]) == expected
    with pytest.raises(EvaluationPaused, match="after segment 1,"):  # within the pass too
        job["run"](out, wall_time_s=1e-9)
    state, arrays = _progress(out)
    assert state["paused_pass"] == "dynamic_valid" and len(arrays["pass/losses"]) == 1
    metrics = job["run"](out)
    _same_scores(metrics, job["whole"])
    assert len(metrics["provenance_launches"]) == 5
    assert not list(out.glob("*evaluate-progress*"))


def test_progress_of_another_trained_model_is_not_used(job, tmp_path, own_sigterm, capsys):
    out = tmp_path / "evaluate"
    with pytest.raises(EvaluationPaused):
        job["run"](out, wall_time_s=1e-9)
    before, _ = _progress(out)
    # train ran again: other weights under the same path
    weights = job["train_dir"] / "model.weights.npz"
    kept = weights.read_bytes()
    try:
        with np.load(weights) as arrays:
            np.savez(weights, **{k: v * 0.5 for k, v in arrays.items()})
        with pytest.raises(EvaluationPaused):
            job["run"](out, wall_time_s=1e-9)
    finally:
        weights.write_bytes(kept)
    assert "of another trained model or other settings; evaluating afresh" in \
        capsys.readouterr().out
    after, _ = _progress(out)
    assert list(after["stages"]) == ["scores"] and len(after["launches"]) == 1  # afresh
    assert after["stages"]["scores"]["results"]["best_valid_loss"] != \
        before["stages"]["scores"]["results"]["best_valid_loss"]


def test_altered_progress_arrays_are_refused_in_one_line_and_kept(job, tmp_path, own_sigterm):
    out = tmp_path / "evaluate"
    with pytest.raises(EvaluationPaused):
        job["run"](out, wall_time_s=1e-9)
    state, _ = _progress(out)
    arrays = out / state["arrays"]
    arrays.write_bytes(arrays.read_bytes()[:-8])  # cut short
    with pytest.raises(MosbenchError, match=r"evaluate-progress-1\.npz: does not match its "
                                            r"checksum .*; to evaluate afresh, delete"):
        job["run"](out)
    assert (out / PROGRESS).exists() and arrays.exists()


def test_a_full_disk_while_saving_is_one_line_and_keeps_what_was_saved(job, tmp_path, monkeypatch,
                                                                      own_sigterm):
    out = tmp_path / "evaluate"
    with pytest.raises(EvaluationPaused):
        job["run"](out, wall_time_s=1e-9)  # the scores saved
    monkeypatch.setattr(faults, "_arrivals", {})
    monkeypatch.setenv("MOSBENCH_FAULT", "evaluate-progress-npz:1:ENOSPC")
    with pytest.raises(MosbenchError, match=r"No space left on device while saving evaluate's "
                                            r"progress; what it saved before is kept"):
        job["run"](out)  # the rank done, its save refused
    state, _ = _progress(out)
    assert set(state["stages"]) == {"scores"}
    assert {p.name for p in out.iterdir() if "progress" in p.name} == {
        PROGRESS, "evaluate-progress-1.npz"}  # no temporary file left
    monkeypatch.delenv("MOSBENCH_FAULT")
    with pytest.raises(EvaluationPaused):
        job["run"](out, wall_time_s=1e-9)
    assert set(_progress(out)[0]["stages"]) == {"scores", "rank"}


def test_the_command_exits_75_when_paused_and_0_when_resumed(job, tmp_path, monkeypatch,
                                                            own_sigterm, capsys):
    """`mosbench evaluate`, as the Snakemake script, ends a paused job with EX_TEMPFAIL."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["presets"]["tiny"][MODEL]["dynamic_eval"] = DYNAMIC
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(job["data"], tmp_path / "results" / "data" / "tiny")
    shutil.copytree(job["train_dir"], tmp_path / f"results/train/pytorch/tiny/{MODEL}/seed1-gpus0")
    monkeypatch.chdir(tmp_path)
    command = ["--config", "config.yaml", "evaluate", "tiny", MODEL, "--seed", "1",
               "--framework", "pytorch"]
    monkeypatch.setattr(faults, "_arrivals", {})
    monkeypatch.setenv("MOSBENCH_FAULT", "dynamic-segment:5:SIGTERM")
    assert main(command) == PAUSED_EXIT_CODE
    assert "mosbench: paused: dynamic evaluation (valid) stopped after segment 5" in \
        capsys.readouterr().err
    monkeypatch.delenv("MOSBENCH_FAULT")
    assert main(command) == 0
    metrics = json.loads((tmp_path / f"results/evaluate/pytorch/tiny/{MODEL}/seed1-gpus0"
                          / "metrics.json").read_text())
    _same_scores(metrics, job["whole"])
