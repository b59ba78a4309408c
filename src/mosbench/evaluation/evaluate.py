"""The *evaluate* stage: valid/test perplexity of the best checkpoint, and speed.

Valid perplexity uses ``eval_batch_size`` and test perplexity
``test_batch_size`` (the reference uses 10 and 1). Results go to a metrics
file and into the training job's MLflow run, under the same names
(:func:`mosbench.tracking.mlflow_run.evaluate_metrics`), with what evaluate
ran on (tags ``evaluate.<key>``) and the test split as a dataset input.
If the store no longer holds that run (deleted in the UI, another store),
they go to a new run made from train.json and tagged ``mosbench.replaces_run``;
the metrics file's ``run_id`` names it.
A diverged run (train.json's ``outcome``) is not scored: its metrics file
holds the outcome and the reason only.

Resumable: each stage (the scores and timings, the rank, dynamic
evaluation's gradient statistics, its valid and its test pass) is saved in
the output folder when it ends (:mod:`mosbench.evaluation.resume`). On
SIGTERM or once ``wall_time_s`` is used, evaluate stops at the next stage or
dynamic-evaluation segment, saves where it is and raises
:class:`~mosbench.errors.EvaluationPaused`; the next run of the same job
skips the finished stages and goes on with the pass from its saved segment
and adapted weights, to the metrics of an uninterrupted run. The speed
figures are measured once, in one stage, by the launch whose provenance
metrics.json records. The progress files go once the metrics are logged.

What the evaluation costs is timed apart from what the benchmark measures:
``result_eval_s`` sums the passes the result needs (the static valid and test
passes, and with dynamic evaluation its gradient statistics and its two
passes, each over every launch that ran it), the cost of a result
(:mod:`mosbench.reporting.result_cost`); ``measurement_eval_s`` sums the
benchmark's own measurements (the timed valid pass, the latency loop, the
rank), which no user of the model would run. Loading the model and the data,
and the job's start-up, are in neither.
"""

import functools
import time
import zipfile
from pathlib import Path

import numpy as np

from mosbench.code_hash import PACKAGE_ROOT, code_hash
from mosbench.data.tokenise import load_split
from mosbench.engines import load_engine
from mosbench.errors import EvaluationPaused, MosbenchError
from mosbench.evaluation.dynamic_eval import (
    PASS_OPTIONS,
    STATISTICS_OPTIONS,
    adaptive_pass,
    gradient_statistics,
    options_for,
)
from mosbench.evaluation.perplexity import (
    eval_throughput,
    evaluate_loss,
    next_word_latency,
    perplexity,
)
from mosbench.evaluation.rank import logprob_rank
from mosbench.evaluation.resume import PROGRESS, SavedProgress, weights_digest
from mosbench.io import read_json, write_json
from mosbench.measurement.provenance import as_tags, provenance
from mosbench.outcomes import FINISHED, outcome_of
from mosbench.paths import SUMMARY, WEIGHTS
from mosbench.stopping import StopSignal
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import REPLACES_TAG, Tracker
from mosbench.workload import head_dimension, training_hparams

# The seconds of the passes a result needs (result_eval_s: the static valid and test
# passes, dynamic evaluation's statistics and passes), apart from the benchmark's own
# measurements (measurement_eval_s: the timed valid pass, the latency loop, the rank).
RESULT_EVALUATION = ("static_valid_s", "static_test_s", "dynamic_statistics_s",
                     "dynamic_valid_s", "dynamic_test_s")
MEASUREMENT_EVALUATION = ("measurement_s", "rank_s")


def _timed(function, *args):
    """(``function(*args)``, the seconds it took)."""
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def _evaluation_seconds(results):
    """metrics.json's ``result_eval_s`` and ``measurement_eval_s``, each None where a part
    is missing (progress saved by code that did not time it), and the static passes'."""
    dynamic = "dynamic_valid_loss" in results  # the preset has dynamic_eval

    def total(keys):
        return None if any(k not in results for k in keys) else sum(results[k] for k in keys)

    return {"result_eval_s": total([k for k in RESULT_EVALUATION
                                    if dynamic or not k.startswith("dynamic_")]),
            "measurement_eval_s": total(MEASUREMENT_EVALUATION),
            "static_valid_s": results.get("static_valid_s"),
            "static_test_s": results.get("static_test_s")}


def load_trained(train_dir, model_name, vocab_size, hparams, framework, gpus=0, threads=None,
                 engine_options=None):
    """An engine holding the job's best weights, with a clear error on a mismatch.

    Evaluation runs on one device: ``gpus`` above one still places it on one.
    """
    engine = load_engine(framework, engine_options, gpus=min(gpus, 1), threads=threads,
                         precision=hparams.get("matmul_precision", "float32"))
    engine.build(model_name, vocab_size, hparams)
    path = Path(train_dir) / WEIGHTS
    try:
        with np.load(path) as arrays:
            engine.load_weights(dict(arrays))
    except (zipfile.BadZipFile, EOFError) as exc:  # cut short: a full disk, a killed copy
        raise MosbenchError(f"{path}: not a whole weights file ({exc}); run its train job "
                            "again to write it") from None
    except (ValueError, OSError, MosbenchError) as exc:
        raise MosbenchError(
            f"{path}: cannot load these weights into {model_name} with the configured "
            f"hyperparameters ({exc})"
        ) from None
    return engine


def _rank_bound(model_name, hparams, vocab_size, contexts):
    """The most the rank can be: d+2 for a softmax on d dimensions, else the matrix size."""
    full = min(vocab_size, contexts)
    dim = head_dimension(model_name, hparams)
    return full if dim is None else min(dim + 2, full)


def _stages(engine, data_dir, hparams, valid_ids, test_ids, saved, should_stop):
    """``(name, run)`` of every stage in order; ``run()`` returns its results and arrays."""
    bptt = hparams["bptt"]

    def scores():  # every speed figure in one stage: one launch's, measured warm
        valid_loss, valid_time = _timed(evaluate_loss, engine, valid_ids,
                                        hparams["eval_batch_size"], bptt, "evaluate valid")
        batched_tokens_per_s, throughput_time = _timed(
            eval_throughput, engine, valid_ids, hparams["eval_batch_size"], bptt,
            "evaluate valid (timed)")
        test_loss, test_time = _timed(evaluate_loss, engine, test_ids,
                                      hparams["test_batch_size"], bptt, "evaluate test")
        (latency_median, latency_p95), latency_time = _timed(next_word_latency, engine,
                                                             test_ids)
        return {"best_valid_loss": valid_loss, "test_loss": test_loss,
                "eval_tokens_per_s": batched_tokens_per_s,
                "test_tokens_per_s": len(test_ids) / test_time,
                "latency_ms_median": latency_median, "latency_ms_p95": latency_p95,
                "static_valid_s": valid_time, "static_test_s": test_time,
                # the timed valid pass and the latency loop: the benchmark's own
                "measurement_s": throughput_time + latency_time}, None

    def rank():
        (rank, contexts), seconds = _timed(logprob_rank, engine, test_ids,
                                           hparams["rank_contexts"], hparams["eval_batch_size"],
                                           bptt)
        return {"logprob_rank": rank, "rank_contexts": contexts, "rank_s": seconds}, None

    stages = [("scores", scores), ("rank", rank)]
    options = hparams.get("dynamic_eval")
    if not options:
        return stages

    def statistics():  # once, for both passes
        start = time.perf_counter()
        train_ids, _ = load_split(data_dir, "train")
        found = gradient_statistics(engine, train_ids, **options_for(STATISTICS_OPTIONS, options))
        return {"dynamic_statistics_s": time.perf_counter() - start}, found

    def dynamic_pass(split, ids):
        stage = f"dynamic_{split}"
        start, before = time.perf_counter(), saved.paused_seconds(stage)
        loss, where = adaptive_pass(engine, ids, saved.statistics(),
                                    **options_for(PASS_OPTIONS, options), what=split,
                                    resume=saved.paused_pass(stage), stop=should_stop)
        seconds = before + time.perf_counter() - start  # over every launch of the pass
        if loss is None:
            saved.pause_pass(stage, where, seconds)
            raise EvaluationPaused(f"dynamic evaluation ({split}) stopped after segment "
                                   f"{len(where.losses)}, saved in {saved.folder / PROGRESS}; "
                                   "run the job again to resume")
        return {f"dynamic_{split}_loss": loss, f"dynamic_{split}_ppl": perplexity(loss),
                f"dynamic_{split}_s": seconds}, None

    return [*stages, ("dynamic_statistics", statistics),
            ("dynamic_valid", lambda: dynamic_pass("valid", valid_ids)),
            ("dynamic_test", lambda: dynamic_pass("test", test_ids))]


def _run_stages(stages, saved, should_stop):
    """Run and save the stages not finished yet; once ``should_stop()``, pause between two.

    A launch always finishes something first, so a budget used up by the
    start-up still moves the job on.
    """
    done = [name for name, _ in stages if name in saved.stages]
    if done:
        print(f"resuming evaluation: {', '.join(done)} done", flush=True)
    ran = False
    for name, run in stages:
        if name in saved.stages:
            continue
        if ran and should_stop():
            raise EvaluationPaused(f"stopped before {name}; the stages before it are saved in "
                                   f"{saved.folder / PROGRESS}; run the job again to resume")
        results, arrays = run()
        saved.finish(name, results, arrays)
        ran = True


def _fingerprint(trained, train_dir, framework, model_name, hparams):
    """What saved progress must be of: this trained run's weights, preset and evaluate code."""
    return {"run_id": trained["run_id"], "weights_sha256": weights_digest(train_dir / WEIGHTS),
            "framework": framework, "model": model_name, "hparams": hparams,
            "code": _running_code(framework)}


@functools.cache  # the code running does not change; hashing it parses every module
def _running_code(framework):
    return code_hash("evaluate", framework, root=PACKAGE_ROOT)


def _replace_training_run(tracker, trained, train_dir, data_dir, hparams, tokens):
    """A new run in place of the training run the store no longer holds; returns its id.

    Made from train.json as training made its own (name, tags, params, inputs,
    epochs, figures, train.json and the weights), with the old id as
    ``mosbench.replaces_run``: the evaluation lands in a run as complete as the
    lost one, and the job does not fail on every retry.
    """
    job = [trained[key] for key in ("dataset", "model", "seed", "gpus", "framework")]
    run_id = tracker.create_run(
        mlflow_run.run_name(*job),
        tags={**mlflow_run.run_tags(*job, trained["provenance"]),
              REPLACES_TAG: trained["run_id"], "mosbench.state": "finished"},
        params=mlflow_run.train_params(*job, n_params=trained["n_params"],
                                       vocab_size=trained["vocab_size"],
                                       train_tokens=tokens["train"],
                                       hparams=training_hparams(hparams)))
    tracker.log_inputs(mlflow_run.training_inputs(data_dir, trained["dataset"], tokens))
    tracker.log_epochs(trained["history"])
    tracker.log_metrics({key: value for key, value in mlflow_run.train_metrics(trained).items()
                         if value is not None})
    tracker.set_tags({f"absent.{key}": reason
                      for key, reason in trained.get("absent", {}).items()})
    tracker.log_artifact(Path(train_dir) / SUMMARY)
    tracker.log_artifact(Path(train_dir) / WEIGHTS)
    return run_id


def evaluate(data_dir, train_dir, out_path, *, model_name, hparams, experiment, framework,
             gpus=0, threads=None, wall_time_s=None, engine_options=None):
    """Score the trained model; write and return the metrics.

    A run that did not finish (diverged) has nothing to score: its metrics.json
    says so, with train.json's reason, and nothing is logged. SIGTERM, or
    ``wall_time_s`` seconds after the start (None: no budget), saves and
    raises EvaluationPaused; the next call resumes.
    """
    trained = read_json(Path(train_dir) / SUMMARY)
    if outcome_of(trained) != FINISHED:
        metrics = {key: trained.get(key) for key in ("framework", "dataset", "model", "seed",
                                                     "gpus", "run_id", "outcome", "reason")}
        write_json(out_path, metrics)
        print(f"not evaluated: training {metrics['outcome']}: {metrics['reason']}", flush=True)
        return metrics
    started = time.monotonic()
    stop = StopSignal()  # SLURM's warning before a time limit or preemption
    try:
        valid_ids, meta = load_split(data_dir, "valid")
        test_ids, _ = load_split(data_dir, "test")
        engine = load_trained(train_dir, model_name, meta["vocab_size"], hparams, framework,
                              gpus, threads, engine_options)
        saved = SavedProgress.open(Path(out_path).parent, _fingerprint(
            trained, Path(train_dir), framework, model_name, hparams))
        saved.start_launch(provenance(engine.versions(), min(gpus, 1)))

        def should_stop():
            return stop.requested or (bool(wall_time_s)
                                      and time.monotonic() - started > wall_time_s)

        _run_stages(_stages(engine, data_dir, hparams, valid_ids, test_ids, saved, should_stop),
                    saved, should_stop)
    finally:
        stop.restore()
    results = {key: value for stage in saved.stages.values() for key, value in stage.items()}

    metrics = {key: trained[key]
               for key in ("framework", "dataset", "model", "seed", "gpus", "run_id")}
    metrics.update({
        # the best checkpoint's (the weights train.json names best): re-scored here
        "best_valid_loss": results["best_valid_loss"],
        "best_valid_ppl": perplexity(results["best_valid_loss"]),
        "test_loss": results["test_loss"], "test_ppl": perplexity(results["test_loss"]),
        "eval_tokens_per_s": results["eval_tokens_per_s"],  # batch eval_batch_size, warm
        # batch test_batch_size (reference: 1)
        "test_tokens_per_s": results["test_tokens_per_s"],
        "latency_ms_median": results["latency_ms_median"],
        "latency_ms_p95": results["latency_ms_p95"],
        "optimal_ppl": meta.get("optimal_ppl"),
        "logprob_rank": results["logprob_rank"], "rank_contexts": results["rank_contexts"],
        "rank_bound": _rank_bound(model_name, hparams, meta["vocab_size"],
                                  results["rank_contexts"]),
        "source_logprob_rank": meta["source"].get("logprob_rank"),
        **{key: value for key, value in results.items() if key.startswith("dynamic_")},
        **_evaluation_seconds(results),
        # what evaluate ran on (its speed figures are that launch's; training's is train.json's)
        "provenance": saved.launch_of("scores"),
    })
    if len(saved.launches) > 1:  # resumed: every launch's, in order
        metrics["provenance_launches"] = saved.launches
    tracker = Tracker(Path(out_path).parent, experiment)
    if gone := tracker.gone(trained["run_id"]):
        print(f"the training run {trained['run_id']} {gone}; logging train.json and this "
              f"evaluation to a new run (tag {REPLACES_TAG})", flush=True)
        metrics["run_id"] = _replace_training_run(tracker, trained, train_dir, data_dir,
                                                  hparams, meta["tokens"])
    else:
        tracker.resume_run(trained["run_id"])
    with tracker:
        write_json(out_path, metrics)
        tracker.log_metrics(mlflow_run.evaluate_metrics(metrics))
        tracker.set_tags(as_tags(metrics["provenance"], prefix="evaluate."))
        tracker.log_inputs([mlflow_run.dataset_input(Path(data_dir) / "test.parquet",
                                                     f"{trained['dataset']}/test", "test",
                                                     meta["tokens"]["test"])])
        tracker.log_artifact(out_path)
    saved.remove()  # done: a forced rerun evaluates afresh
    return metrics
