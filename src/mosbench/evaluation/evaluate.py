"""The *evaluate* stage: valid/test perplexity of the best checkpoint, and speed.

Valid perplexity uses ``eval_batch_size`` and test perplexity
``test_batch_size`` (the reference uses 10 and 1). Results go to a metrics
file and into the training job's MLflow run.
"""

import time
from pathlib import Path

import tensorflow as tf

from mosbench.data.tokenise import load_split
from mosbench.engines.tensorflow.models import build_model
from mosbench.errors import MosbenchError
from mosbench.evaluation.dynamic_eval import dynamic_evaluation
from mosbench.evaluation.perplexity import (
    eval_throughput,
    evaluate_loss,
    make_eval_step,
    next_word_latency,
    perplexity,
)
from mosbench.evaluation.rank import logprob_rank
from mosbench.io import read_json, write_json
from mosbench.tracking.tracker import Tracker
from mosbench.training.devices import configure_devices, set_matmul_precision
from mosbench.training.train import SUMMARY, WEIGHTS
from mosbench.workload import head_dimension


def load_trained(train_dir, model_name, vocab_size, hparams):
    """Rebuild the model and load its best weights, with a clear error on a mismatch."""
    model = build_model(model_name, vocab_size, hparams)
    path = Path(train_dir) / WEIGHTS
    try:
        model.load_weights(path)
    except (ValueError, OSError) as exc:
        raise MosbenchError(
            f"{path}: cannot load these weights into {model_name} with the configured "
            f"hyperparameters ({exc})"
        ) from None
    return model


def _rank_bound(model_name, hparams, vocab_size, contexts):
    """The most the rank can be: d+2 for a softmax on d dimensions, else the matrix size."""
    full = min(vocab_size, contexts)
    dim = head_dimension(model_name, hparams)
    return full if dim is None else min(dim + 2, full)


def _dynamic_evaluation(model, data_dir, valid_ids, test_ids, options):
    """Valid and test perplexity under dynamic evaluation, when the preset asks for it."""
    if not options:
        return {}
    train_ids, _ = load_split(data_dir, "train")
    results = {}
    for split, ids in (("valid", valid_ids), ("test", test_ids)):
        loss = dynamic_evaluation(model, train_ids, ids, **options)
        results.update({f"dynamic_{split}_loss": loss, f"dynamic_{split}_ppl": perplexity(loss)})
    return results


def evaluate(data_dir, train_dir, out_path, *, model_name, hparams, experiment, gpus=0,
             threads=None):
    """Score the trained model; write and return the metrics."""
    device = configure_devices(min(gpus, 1), threads)  # evaluation uses one device
    set_matmul_precision(hparams.get("matmul_precision", "float32"))
    trained = read_json(Path(train_dir) / SUMMARY)
    valid_ids, meta = load_split(data_dir, "valid")
    test_ids, _ = load_split(data_dir, "test")
    with tf.device(device):
        model = load_trained(train_dir, model_name, meta["vocab_size"], hparams)
        step = make_eval_step(model)
        valid_loss = evaluate_loss(model, valid_ids, hparams["eval_batch_size"],
                                   hparams["bptt"], step)
        batched_tokens_per_s = eval_throughput(model, valid_ids, hparams["eval_batch_size"],
                                               hparams["bptt"], step)
        start = time.perf_counter()
        test_loss = evaluate_loss(model, test_ids, hparams["test_batch_size"], hparams["bptt"])
        test_time = time.perf_counter() - start
        latency_median, latency_p95 = next_word_latency(model, test_ids)
        rank, contexts = logprob_rank(model, test_ids, hparams["rank_contexts"],
                                      hparams["eval_batch_size"], hparams["bptt"])
        dynamic = _dynamic_evaluation(model, data_dir, valid_ids, test_ids,
                                      hparams.get("dynamic_eval"))

    metrics = {key: trained[key] for key in ("dataset", "model", "seed", "gpus", "run_id")}
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
    })
    write_json(out_path, metrics)

    with Tracker(Path(out_path).parent, experiment).resume_run(trained["run_id"]) as tracker:
        tracker.log_metrics({
            "best/valid_ppl": metrics["best_valid_ppl"], "test/ppl": metrics["test_ppl"],
            "test/loss": test_loss, "speed/eval_tokens_per_s": batched_tokens_per_s,
            "speed/test_tokens_per_s": metrics["test_tokens_per_s"],
            "latency/median_ms": latency_median, "latency/p95_ms": latency_p95,
            "rank/logprob": rank, "rank/contexts": contexts,
        })
        tracker.log_metrics({f"dynamic_eval/{k.removeprefix('dynamic_')}": v
                             for k, v in dynamic.items()})
        if metrics["optimal_ppl"] is not None:
            tracker.log_metrics({"data/optimal_ppl": metrics["optimal_ppl"]})
        tracker.log_artifact(out_path)
    return metrics
