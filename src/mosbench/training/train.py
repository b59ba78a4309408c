"""The *train* stage: truncated BPTT with SGD and global-norm clipping.

Reads top to bottom: load data, build the model, then per epoch run the
training windows (state carried across windows, reset at the epoch start),
validate, keep the best weights, divide the learning rate when validation
stalls, and log. Outputs: ``model.weights.h5`` (best by validation loss) and
``train.json`` (the per-epoch history), both written atomically.
"""

import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from mosbench.data.batching import batchify, windows
from mosbench.data.tokenise import load_split
from mosbench.errors import MosbenchError
from mosbench.evaluation.perplexity import evaluate_loss, make_eval_step, perplexity, token_nll
from mosbench.io import atomic_path, write_json
from mosbench.models import build_model
from mosbench.models.activation_regularisation import (
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.tracking import mlflow_run
from mosbench.training.devices import configure_devices

WEIGHTS = "model.weights.h5"
SUMMARY = "train.json"


def make_train_step(model, optimizer, clip, alpha=0.0, beta=0.0):
    """One SGD step on a window; returns the mean NLL and the state to carry on.

    The minimised loss adds AR (``alpha``) and TAR (``beta``) to the NLL; the
    returned and logged loss is the NLL alone, as in the reference.
    """

    @tf.function(reduce_retracing=True)
    def step(inputs, targets, states):
        with tf.GradientTape() as tape:
            log_probs, states, (raw, dropped) = model(inputs, states, training=True)
            nll = tf.reduce_mean(token_nll(log_probs, targets))
            loss = nll
            if alpha:
                loss += activation_penalty(dropped, alpha)
            if beta:
                loss += temporal_activation_penalty(raw, beta)
        grads = tape.gradient(loss, model.trainable_variables)
        # Clip the norm of all gradients together, as torch.nn.utils.clip_grad_norm_.
        grads, _ = tf.clip_by_global_norm(grads, clip)
        optimizer.apply(grads, model.trainable_variables)
        return nll, states

    return step


def run_epoch(model, step, streams, bptt):
    """Train over the batchified stream once; mean loss per token and tokens seen."""
    states = model.initial_state(streams.shape[0])  # reset at each epoch start
    total, tokens = 0.0, 0
    for inputs, targets in windows(streams, bptt):
        loss, states = step(tf.constant(inputs), tf.constant(targets), states)
        loss = float(loss)
        if not math.isfinite(loss):
            raise MosbenchError(f"training diverged: the loss became {loss}; lower lr or clip")
        total += loss * targets.size
        tokens += targets.size
    return total / tokens, tokens


def train(data_dir, out_dir, *, dataset, model_name, seed, gpus, hparams, experiment,
          threads=None, config_snapshot=None):
    """Train one (dataset, model, seed, gpus) job; return the summary written to train.json."""
    out_dir = Path(out_dir)
    device = configure_devices(gpus, threads)
    keras.utils.set_random_seed(seed)

    # --- data ---
    train_ids, meta = load_split(data_dir, "train")
    valid_ids, _ = load_split(data_dir, "valid")
    streams = batchify(train_ids, hparams["batch_size"])

    # --- model and optimiser ---
    with tf.device(device):
        model = build_model(model_name, meta["vocab_size"], hparams)
        lr = hparams["lr"]
        # Keras' decoupled decay equals PyTorch's coupled weight_decay for plain SGD.
        optimizer = keras.optimizers.SGD(learning_rate=lr,
                                         weight_decay=hparams.get("wdecay") or None)
        step = make_train_step(model, optimizer, hparams["clip"], hparams.get("alpha", 0.0),
                               hparams.get("beta", 0.0))
        eval_step = make_eval_step(model)
    n_params = int(model.count_params())

    # --- tracking ---
    mlflow = mlflow_run.connect(experiment)
    params = {"dataset": dataset, "model": model_name, "seed": seed, "gpus": gpus,
              "n_params": n_params, "vocab_size": meta["vocab_size"],
              "train_tokens": meta["tokens"]["train"], **hparams}
    with mlflow.start_run(run_name=mlflow_run.run_name(dataset, model_name, seed, gpus),
                          tags=mlflow_run.run_tags(dataset, model_name, seed, gpus)) as run:
        mlflow.log_params(mlflow_run.flatten(params))
        if config_snapshot is not None:
            mlflow.log_dict(config_snapshot, "config.yaml")

        # --- epochs ---
        history, best_loss, best_epoch = [], math.inf, 0
        started = time.perf_counter()
        for epoch in range(1, hparams["epochs"] + 1):
            t0 = time.perf_counter()
            with tf.device(device):
                train_loss, tokens = run_epoch(model, step, streams, hparams["bptt"])
                epoch_time = time.perf_counter() - t0
                valid_loss = evaluate_loss(model, valid_ids, hparams["eval_batch_size"],
                                           hparams["bptt"], eval_step)
            record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                      "valid_ppl": perplexity(valid_loss), "epoch_time_s": epoch_time,
                      "tokens_per_s": tokens / epoch_time, "lr": lr}
            history.append(record)
            mlflow.log_metrics({"train/loss": train_loss, "train/ppl": perplexity(train_loss),
                                "valid/loss": valid_loss, "valid/ppl": record["valid_ppl"],
                                "time/epoch_s": epoch_time, "speed/tokens_per_s":
                                record["tokens_per_s"], "train/lr": lr}, step=epoch)
            print(f"epoch {epoch:3d} | train ppl {perplexity(train_loss):9.2f} | valid ppl "
                  f"{record['valid_ppl']:9.2f} | {epoch_time:6.1f} s | lr {lr:g}", flush=True)
            if valid_loss < best_loss:
                best_loss, best_epoch = valid_loss, epoch
                with atomic_path(out_dir / WEIGHTS, suffix=".weights.h5") as tmp:
                    model.save_weights(tmp)
            else:  # anneal when validation stalls, as PyTorch's word_language_model
                lr /= hparams["lr_decay"]
                optimizer.learning_rate.assign(lr)

        summary = {"dataset": dataset, "model": model_name, "seed": seed, "gpus": gpus,
                   "run_id": run.info.run_id, "n_params": n_params,
                   "vocab_size": meta["vocab_size"], "history": history,
                   "best_epoch": best_epoch, "best_valid_loss": best_loss,
                   "train_time_s": time.perf_counter() - started}
        mlflow.log_metrics({"best/valid_loss": best_loss, "best/epoch": best_epoch})
        write_json(out_dir / SUMMARY, summary)
        mlflow.log_artifact(str(out_dir / SUMMARY))
    return summary
