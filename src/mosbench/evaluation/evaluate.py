"""The *evaluate* stage: valid/test perplexity of the best checkpoint, and speed.

Valid perplexity uses ``eval_batch_size`` and test perplexity
``test_batch_size`` (the reference uses 10 and 1). Results go to a metrics
file and into the training job's MLflow run, under the same names
(:func:`mosbench.tracking.mlflow_run.evaluate_metrics`), with what evaluate
ran on (tags ``evaluate.<key>``) and the test split as a dataset input.
A diverged run (train.json's ``outcome``) is not scored: its metrics file
holds the outcome and the reason only.
If the store no longer holds that run (deleted in the UI, another store),
they go to a new run made from train.json and tagged ``mosbench.replaces_run``;
the metrics file's ``run_id`` names it.
"""

import time
import zipfile
from pathlib import Path

import numpy as np

from mosbench.data.tokenise import load_split
from mosbench.engines import load_engine
from mosbench.errors import MosbenchError
from mosbench.evaluation.dynamic_eval import dynamic_evaluation
from mosbench.evaluation.perplexity import (
    eval_throughput,
    evaluate_loss,
    next_word_latency,
    perplexity,
)
from mosbench.evaluation.rank import logprob_rank
from mosbench.io import read_json, write_json
from mosbench.measurement.provenance import as_tags, provenance
from mosbench.outcomes import FINISHED, outcome_of
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import REPLACES_TAG, Tracker
from mosbench.training.train import SUMMARY, WEIGHTS
from mosbench.workload import head_dimension, training_hparams


def load_trained(train_dir, model_name, vocab_size, hparams, framework="tensorflow", gpus=0,
                 threads=None):
    """An engine holding the job's best weights, with a clear error on a mismatch.

    Evaluation runs on one device: ``gpus`` above one still places it on one.
    """
    engine = load_engine(framework, gpus=min(gpus, 1), threads=threads,
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


def _dynamic_evaluation(engine, data_dir, valid_ids, test_ids, options):
    """Valid and test perplexity under dynamic evaluation, when the preset asks for it."""
    if not options:
        return {}
    train_ids, _ = load_split(data_dir, "train")
    results = {}
    for split, ids in (("valid", valid_ids), ("test", test_ids)):
        loss = dynamic_evaluation(engine, train_ids, ids, **options, what=split)
        results.update({f"dynamic_{split}_loss": loss, f"dynamic_{split}_ppl": perplexity(loss)})
    return results


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


def evaluate(data_dir, train_dir, out_path, *, model_name, hparams, experiment, gpus=0,
             threads=None, framework="tensorflow"):
    """Score the trained model; write and return the metrics.

    A run that did not finish (diverged) has nothing to score: its metrics.json
    says so, with train.json's reason, and nothing is logged.
    """
    trained = read_json(Path(train_dir) / SUMMARY)
    if outcome_of(trained) != FINISHED:
        metrics = {key: trained.get(key) for key in ("framework", "dataset", "model", "seed",
                                                     "gpus", "run_id", "outcome", "reason")}
        write_json(out_path, metrics)
        print(f"not evaluated: training {metrics['outcome']}: {metrics['reason']}", flush=True)
        return metrics
    valid_ids, meta = load_split(data_dir, "valid")
    test_ids, _ = load_split(data_dir, "test")
    engine = load_trained(train_dir, model_name, meta["vocab_size"], hparams, framework, gpus,
                          threads)
    bptt = hparams["bptt"]
    valid_loss = evaluate_loss(engine, valid_ids, hparams["eval_batch_size"], bptt,
                               "evaluate valid")
    batched_tokens_per_s = eval_throughput(engine, valid_ids, hparams["eval_batch_size"], bptt,
                                           "evaluate valid (timed)")
    start = time.perf_counter()
    test_loss = evaluate_loss(engine, test_ids, hparams["test_batch_size"], bptt,
                              "evaluate test")
    test_time = time.perf_counter() - start
    latency_median, latency_p95 = next_word_latency(engine, test_ids)
    rank, contexts = logprob_rank(engine, test_ids, hparams["rank_contexts"],
                                  hparams["eval_batch_size"], bptt)
    dynamic = _dynamic_evaluation(engine, data_dir, valid_ids, test_ids,
                                  hparams.get("dynamic_eval"))

    metrics = {key: trained[key]
               for key in ("framework", "dataset", "model", "seed", "gpus", "run_id")}
    metrics.update({
        # the best checkpoint's (the weights train.json names best): re-scored here
        "best_valid_loss": valid_loss, "best_valid_ppl": perplexity(valid_loss),
        "test_loss": test_loss, "test_ppl": perplexity(test_loss),
        "eval_tokens_per_s": batched_tokens_per_s,  # batch eval_batch_size, warm
        "test_tokens_per_s": len(test_ids) / test_time,  # batch test_batch_size (reference: 1)
        "latency_ms_median": latency_median, "latency_ms_p95": latency_p95,
        "optimal_ppl": meta.get("optimal_ppl"),
        "logprob_rank": rank, "rank_contexts": contexts,
        "rank_bound": _rank_bound(model_name, hparams, meta["vocab_size"], contexts),
        "source_logprob_rank": meta["source"].get("logprob_rank"),
        **dynamic,
        # what evaluate ran on (its speed figures are this machine's; training's is train.json's)
        "provenance": provenance(engine.versions(), min(gpus, 1)),
    })
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
    return metrics
