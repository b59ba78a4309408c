"""The *train* stage: the reference training procedure, resumable, as one loop.

Reads top to bottom: devices and seeds, data, model and optimiser, resume or
start, then epochs of variable-length truncated BPTT (hidden state carried
across windows, reset at each epoch start, gradients accumulated over
``small_batch_size`` chunks, clipped by global norm, SGD with weight decay),
validation, and the schedule: NT-ASGD (the AWD models) or dividing the
learning rate when validation stalls (the plain LSTM). An optional finetune
phase restarts from the best weights with averaging from the start (MoS).

Every epoch end writes a checkpoint (:mod:`mosbench.training.checkpoint`);
SIGTERM or the wall-time budget writes one mid-epoch and stops with
:class:`TrainingPaused`, and the next run of the same job resumes from it
into the same MLflow run. Outputs: ``model.weights.h5`` (best by validation,
averaged weights once NT-ASGD has switched) and ``train.json``, both written
last.

Around the loop the job measures what the study compares
(:mod:`mosbench.measurement`): data loading and the input pipeline, time to
the first step, step times, epoch time and its cost, and the hardware
(device and host memory, GPU utilisation and power; absent, with the reason,
where there is no GPU).
"""

import math
import shutil
import signal
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from mosbench import faults
from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split
from mosbench.engines.tensorflow.models import build_model
from mosbench.engines.tensorflow.models.activation_regularisation import (
    activation_penalty,
    temporal_activation_penalty,
)
from mosbench.errors import MosbenchError, TrainingPaused
from mosbench.evaluation.perplexity import evaluate_loss, make_eval_step, perplexity
from mosbench.io import atomic_path, write_json
from mosbench.measurement.cost import cost
from mosbench.measurement.data_pipeline import measure_data_pipeline
from mosbench.measurement.hardware import HardwareMonitor, hardware_metrics
from mosbench.measurement.timing import StepTimer
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import Tracker
from mosbench.training import checkpoint
from mosbench.training.bptt import epoch_windows, restore_rng, rng_state
from mosbench.training.devices import configure_devices, set_matmul_precision
from mosbench.training.nt_asgd import IterateAverage, nonmono_triggered
from mosbench.training.replicas import replica_rows

WEIGHTS = "model.weights.h5"
SUMMARY = "train.json"
def make_train_step(model, optimizer, batch_size, hparams, averager=None, strategy=None):
    """A compiled step on one window: returns the mean NLL and the state to carry on.

    Inputs, targets and states are global (the whole batch); with N replicas
    each takes a contiguous share of the rows (:func:`replica_rows`: shares
    differ by at most one row when N does not divide the batch, so the
    published batch sizes run on any GPU count). The minimised loss adds AR and TAR to the
    NLL; each replica processes its rows in ``small_batch_size`` chunks whose
    gradients are summed (each weighted by its share of the global batch, as
    the reference), the replicas' gradients are all-reduced, and only then
    clipped by their global norm, so N devices make exactly the update one
    device makes on the same global batch (Keras' ``clipnorm`` would clip
    each replica's part before the sum). With ``averager`` the step also folds
    the new weights into the NT-ASGD average.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    shares = replica_rows(batch_size, replicas)
    small = hparams["small_batch_size"] or batch_size
    alpha, beta = hparams.get("alpha", 0.0), hparams.get("beta", 0.0)
    variables = model.trainable_variables

    def replica_step(inputs, targets, states):
        context = tf.distribute.get_replica_context()
        # Each replica is traced on its own, so its index is known while tracing.
        first, last = shares[tf.get_static_value(context.replica_id_in_sync_group)]
        grads, total_nll, chunk_states = None, 0.0, []
        for start in range(first, last, small):
            end = min(start + small, last)
            rows = slice(start, end)
            with tf.GradientTape() as tape:
                sliced = [(h[rows], c[rows]) for h, c in states]
                token_nlls, new_states, (raw, dropped) = model.nll(
                    inputs[rows], targets[rows], sliced, training=True)
                nll = tf.reduce_mean(token_nlls)
                loss = nll
                if alpha:
                    loss += activation_penalty(dropped, alpha)
                if beta:
                    loss += temporal_activation_penalty(raw, beta)
                loss *= (end - start) / batch_size
            chunk_grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
            # The first chunk's gradients as they are: no zero tensors to add them to.
            grads = chunk_grads if grads is None else [
                g + c for g, c in zip(grads, chunk_grads, strict=True)]
            total_nll += nll * (end - start) / batch_size
            chunk_states.append(new_states)
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)  # the global gradient
        # Clip the norm of all gradients together, as torch.nn.utils.clip_grad_norm_.
        grads, _ = tf.clip_by_global_norm(grads, hparams["clip"])
        # Keras sums the replicas' gradients again inside apply(): give it each one's share.
        optimizer.apply([g / replicas for g in grads], variables)
        if averager is not None:
            averager.update()
        local_states = [tuple(tf.concat([s[layer][i] for s in chunk_states], 0)
                              for i in range(2)) for layer in range(len(states))]
        return total_nll, local_states

    states_spec = [tuple(tf.TensorSpec(s.shape, tf.float32) for s in layer)
                   for layer in model.initial_state(batch_size)]
    window = tf.TensorSpec((batch_size, None), tf.int32)  # any window length: one trace

    @tf.function(input_signature=[window, window, states_spec, tf.TensorSpec((), tf.float32)])
    def step(inputs, targets, states, lr):
        optimizer.learning_rate.assign(lr)
        nll, states = strategy.run(replica_step, args=(inputs, targets, states))
        # The replicas' rows back into one batch, in order (shares may differ in size).
        parts = strategy.experimental_local_results(states)
        states = [tuple(tf.concat([part[layer][i] for part in parts], 0) for i in range(2))
                  for layer in range(len(parts[0]))]
        return strategy.reduce(tf.distribute.ReduceOp.SUM, nll, axis=None), states

    return step


def make_strategy(gpus, devices=None):
    """Data parallelism over ``devices`` (or ``gpus`` GPUs); one device otherwise."""
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    if gpus >= 1:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(gpus)])
    return tf.distribute.get_strategy()


class StopSignal:
    """Remembers a SIGTERM (SLURM's warning before a time limit or preemption)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def fresh_state(hparams, seed):
    return {"phase": "train", "epoch": 0, "phase_epoch": 0, "position": 0,
            "lr": hparams["lr"], "averaging": False, "val_losses": [],
            "best_loss": math.inf, "best_epoch": 0, "history": [], "run_id": None,
            "rng": rng_state(np.random.default_rng(seed)), "partial": [0.0, 0, 0.0],
            "train_time_s": 0.0}


def train(data_dir, out_dir, *, dataset, model_name, seed, gpus, hparams, experiment,
          threads=None, config_snapshot=None, wall_time_s=None, devices=None, raw_dir=None,
          prices=None):
    """Train one (dataset, model, seed, gpus) job; return the summary written to train.json.

    ``raw_dir`` (the corpus' text files) lets the job time preprocessing from
    text; ``prices`` (config key ``cost``) prices its epochs.
    """
    out_dir = Path(out_dir)
    device = configure_devices(gpus, threads)
    set_matmul_precision(hparams.get("matmul_precision", "float32"))
    if hparams.get("deterministic"):
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    started = time.monotonic()

    # --- data ---
    train_ids, meta = load_split(data_dir, "train")
    valid_ids, _ = load_split(data_dir, "valid")
    batch_size = hparams["batch_size"]
    streams = batchify(train_ids, batch_size)

    # --- model, optimiser, averaging (mirrored over the devices) ---
    strategy = make_strategy(gpus, devices)
    with tf.device(device), strategy.scope():
        model = build_model(model_name, meta["vocab_size"], hparams)
        # Keras' decoupled decay equals PyTorch's coupled weight_decay for plain SGD.
        optimizer = keras.optimizers.SGD(learning_rate=hparams["lr"],
                                         weight_decay=hparams.get("wdecay") or None)
        optimizer.build(model.trainable_variables)
        averager = IterateAverage(model.trainable_variables)
    sgd_step = make_train_step(model, optimizer, batch_size, hparams, strategy=strategy)
    asgd_step = make_train_step(model, optimizer, batch_size, hparams, averager, strategy)
    eval_step = make_eval_step(model)  # evaluation runs on one device
    n_params = int(model.count_params())

    # --- resume or start ---
    hidden = None
    fingerprint = {"dataset": dataset, "model": model_name, "seed": seed, "gpus": gpus,
                   "vocab_size": meta["vocab_size"], "hparams": hparams}
    if checkpoint.exists(out_dir) and not checkpoint.same_job(out_dir, fingerprint):
        print(f"{out_dir}: the checkpoint there is of other settings; starting afresh",
              flush=True)
        checkpoint.remove(out_dir)
    if checkpoint.exists(out_dir):
        state, averages, hidden = checkpoint.load(out_dir, model, optimizer)
        if averages:
            averager.restore(averages, state["average_count"])
        print(f"resuming at epoch {state['epoch'] + 1}, window position {state['position']}",
              flush=True)
    else:
        state = fresh_state(hparams, seed)
        state["fingerprint"] = fingerprint
    rng = restore_rng(state["rng"])
    if "data" not in state:  # measured once per job, not again on resume
        began = time.monotonic()
        state["data"], state["data_absent"] = _measure_data(raw_dir, data_dir, hparams, out_dir)
        state["data_measure_s"] = time.monotonic() - began  # not part of a job's start-up

    # --- tracking ---
    tracker = Tracker(out_dir, experiment, system_metrics=True)  # keeps what MLflow can't take
    if state["run_id"] is None:
        state["run_id"] = tracker.create_run(
            mlflow_run.run_name(dataset, model_name, seed, gpus),
            tags=mlflow_run.run_tags(dataset, model_name, seed, gpus),
            params=mlflow_run.flatten({
                "dataset": dataset, "model": model_name, "seed": seed, "gpus": gpus,
                "n_params": n_params, "vocab_size": meta["vocab_size"],
                "train_tokens": meta["tokens"]["train"], **hparams}),
            dicts=None if config_snapshot is None else {"config.yaml": config_snapshot})
    else:
        tracker.resume_run(state["run_id"])
    tracker.log_epochs(state["history"])

    def save(position, hidden_states=None):
        averages, count = averager.state() if state["averaging"] else (None, 0)
        state.update(position=position, rng=rng_state(rng), average_count=count)
        checkpoint.save(out_dir, model, optimizer, state, averages, hidden_states)

    def validate():
        with tf.device(device):
            if state["averaging"]:
                with averager.swapped_in():
                    return evaluate_loss(model, valid_ids, hparams["eval_batch_size"],
                                         hparams["bptt"], eval_step), averager
            return evaluate_loss(model, valid_ids, hparams["eval_batch_size"],
                                 hparams["bptt"], eval_step), None

    stop, timer = StopSignal(), StepTimer()
    monitor = HardwareMonitor(gpus=gpus).__enter__()  # left in the `finally` below
    try:
        while state["phase"] != "done":
            # --- one epoch (or the rest of an interrupted one) ---
            t0 = time.monotonic()
            loss_sum, tokens, epoch_time = state["partial"]
            states = ([tuple(tf.constant(h) for h in hidden[i:i + 2])
                       for i in range(0, len(hidden), 2)] if hidden
                      else model.initial_state(batch_size))  # reset at each epoch start
            hidden = None
            step, step_name = ((asgd_step, "asgd") if state["averaging"]
                               else (sgd_step, "sgd"))
            for start, length, scale in epoch_windows(
                    rng, streams.shape[1], hparams["bptt"], hparams["variable_bptt"],
                    hparams.get("max_seq_len_delta"), start=state["position"]):
                window = streams[:, start:start + length + 1]
                step_start = time.perf_counter()
                with tf.device(device):
                    nll, states = step(tf.constant(window[:, :-1]), tf.constant(window[:, 1:]),
                                       states, tf.constant(state["lr"] * scale, tf.float32))
                nll = float(nll)  # also waits for the step to finish
                timer.record(step_name, time.perf_counter() - step_start)
                faults.point("train-step")
                if "first_step_s" not in state:  # the job's first step: tracing, compiling
                    state["first_step_s"] = time.perf_counter() - step_start
                    state["time_to_first_step_s"] = (time.monotonic() - started
                                                     - state["data_measure_s"])
                if not math.isfinite(nll):
                    raise MosbenchError(f"training diverged: the loss became {nll} at epoch "
                                        f"{state['epoch'] + 1}; lower lr or clip")
                loss_sum += nll * length * batch_size
                tokens += length * batch_size
                # Checked after the step, before the next window's length is drawn, so the
                # saved RNG state redraws exactly the windows that are left.
                if stop.requested or _out_of_time(wall_time_s, started):
                    state["partial"] = [loss_sum, tokens, epoch_time + time.monotonic() - t0]
                    save(start + length, [x.numpy() for layer in states for x in layer])
                    raise TrainingPaused(f"stopped in epoch {state['epoch'] + 1} at window "
                                         f"position {start + length}; run the job again to "
                                         "resume")
            epoch_time += time.monotonic() - t0
            state["train_time_s"] += epoch_time

            # --- validate, keep the best, apply the schedule ---
            valid_loss, _ = validate()
            state["epoch"] += 1
            state["phase_epoch"] += 1
            record = {"epoch": state["epoch"], "phase": state["phase"],
                      "train_loss": loss_sum / tokens, "valid_loss": valid_loss,
                      "valid_ppl": perplexity(valid_loss), "epoch_time_s": epoch_time,
                      "tokens_per_s": tokens / epoch_time, "lr": state["lr"],
                      "averaging": state["averaging"], **timer.epoch_summary()}
            if prices:
                record["cost_per_epoch"] = cost(epoch_time, gpus, prices)
            state["history"].append(record)
            faults.point("epoch-end")
            print(f"epoch {record['epoch']:3d} {state['phase']:8s} | train ppl "
                  f"{perplexity(record['train_loss']):9.2f} | valid ppl {record['valid_ppl']:9.2f}"
                  f" | {epoch_time:6.1f} s | lr {state['lr']:g}"
                  f"{' | averaged' if state['averaging'] else ''}", flush=True)
            if valid_loss < state["best_loss"]:
                state["best_loss"], state["best_epoch"] = valid_loss, state["epoch"]
                state["best_file"] = _save_best(model, averager if state["averaging"] else None,
                                                out_dir, state["epoch"])
                state["keep"] = [state["best_file"]]  # not a checkpoint's to delete
            _schedule(state, valid_loss, hparams, averager, model, out_dir)
            state["partial"] = [0.0, 0, 0.0]
            save(0)
            tracker.log_epochs(state["history"])
    except TrainingPaused:
        tracker.set_tags({"mosbench.state": "paused"})  # KILLED, and resumed by the next job
        tracker.end_run("KILLED")
        raise
    except BaseException:
        tracker.end_run("FAILED")
        raise
    finally:
        stop.restore()
        monitor.__exit__(None, None, None)

    summary = {"dataset": dataset, "model": model_name, "seed": seed, "gpus": gpus,
               "run_id": tracker.run_id, "n_params": n_params,
               "vocab_size": meta["vocab_size"], "history": state["history"],
               "best_epoch": state["best_epoch"], "best_valid_loss": state["best_loss"],
               "train_time_s": state["train_time_s"]}
    summary["measurements"], summary["absent"] = _job_measurements(state, monitor, prices, gpus)
    tracker.log_metrics({"best/valid_loss": state["best_loss"], "best/epoch": state["best_epoch"]})
    tracker.log_metrics({f"measure/{k}": v for k, v in summary["measurements"].items()
                         if v is not None})
    tracker.set_tags({f"absent.{k}": reason for k, reason in summary["absent"].items()})
    with atomic_path(out_dir / WEIGHTS, suffix=".weights.h5") as tmp:
        shutil.copyfile(out_dir / state["best_file"], tmp)
    write_json(out_dir / SUMMARY, summary)
    faults.point("finished")
    tracker.log_artifact(out_dir / SUMMARY)
    tracker.set_tags({"mosbench.state": "finished"})
    tracker.end_run("FINISHED")  # waits a while for calls the store could not take yet
    checkpoint.remove(out_dir)  # done: a forced rerun must train afresh, not resume
    return summary


DATA_FIGURES = ("data_preprocess_s", "data_parquet_load_s", "data_stream_tokens_per_s",
                "data_cache_memory_tokens_per_s", "data_cache_file_tokens_per_s")


def _measure_data(raw_dir, data_dir, hparams, out_dir):
    """Data loading and input-pipeline figures, and why any is absent."""
    if raw_dir is None:
        return {}, {name: "the job was not given the raw text (raw_dir)" for name in DATA_FIGURES}
    try:
        return measure_data_pipeline(raw_dir, data_dir, batch_size=hparams["batch_size"],
                                     bptt=hparams["bptt"], scratch_dir=out_dir), {}
    except MosbenchError as exc:  # a measurement, not the training's input: train anyway
        print(f"data measurements skipped: {exc}", flush=True)
        return {}, {name: f"not measured: {exc}" for name in DATA_FIGURES}


def _job_measurements(state, monitor, prices, gpus):
    """The job's figures for train.json and MLflow, and why any is absent.

    Per-epoch figures are averaged over epochs (step-time percentiles: their
    median over epochs); epoch time and tokens/s leave out the compiled steps'
    first calls, which trace and compile (``first_step_s`` has the first one).
    ``time_to_first_step_s`` runs from the job's start to the end of its first
    step, without the data measurements. Hardware figures are those of the launch that
    finished the job (the same model and batch as any earlier launch).
    """
    history = state["history"]

    def over_epochs(key, reduce):
        values = [h[key] for h in history if h.get(key) is not None]
        return float(reduce(values)) if values else None

    steady_time = sum(h["epoch_time_s"] - h.get("first_calls_s", 0.0) for h in history)
    tokens = sum(h["tokens_per_s"] * h["epoch_time_s"] for h in history)
    figures = {
        # without the steps' first calls (tracing, compiling): reported as first_step_s
        "epoch_time_s": steady_time / len(history) if history else None,
        "tokens_per_s": tokens / steady_time if steady_time > 0 else None,
        "step_time_median_s": over_epochs("step_time_median_s", np.median),
        "step_time_p95_s": over_epochs("step_time_p95_s", np.median),
        "first_step_s": state.get("first_step_s"),
        "time_to_first_step_s": state.get("time_to_first_step_s"),
        "cost_per_epoch": over_epochs("cost_per_epoch", np.mean),
        **state["data"],
    }
    absent = dict(state["data_absent"])
    if not prices:
        absent["cost_per_epoch"] = "no prices configured (config key cost)"
    hardware, hardware_absent = hardware_metrics(monitor, gpus)
    figures.update(hardware)
    absent.update(hardware_absent)
    for name, value in figures.items():
        if value is None:
            absent.setdefault(name, "not measured in this job")
    return figures, absent


def _out_of_time(wall_time_s, started):
    """Whether this job has used its wall-time budget (None: no budget)."""
    return bool(wall_time_s) and time.monotonic() - started > wall_time_s


def _save_best(model, averager, out_dir, epoch):
    """Save the best weights so far (averaged ones while NT-ASGD averages); return the name.

    One file per epoch, named in the checkpoint: a job killed after this but
    before the epoch's checkpoint resumes with the best weights the checkpoint
    knows. The job's output, model.weights.h5, is a copy made at the end:
    Snakemake deletes the outputs of a job that failed or paused.
    """
    name = f"best-{epoch}.weights.h5"
    with atomic_path(out_dir / name, suffix=".weights.h5") as tmp:
        if averager is None:
            model.save_weights(tmp)
        else:
            with averager.swapped_in():
                model.save_weights(tmp)
        faults.point("best-weights")  # written, not yet renamed
    return name


def _schedule(state, valid_loss, hparams, averager, model, out_dir):
    """After an epoch: anneal, switch to averaging, move to finetune, or finish."""
    previous = state["val_losses"]
    phase_over = state["phase_epoch"] >= (hparams["epochs"] if state["phase"] == "train"
                                          else hparams["finetune_epochs"])
    if hparams["schedule"] == "plateau-decay":
        if previous and valid_loss >= min(previous):
            state["lr"] /= hparams["lr_decay"]
    elif state["phase"] == "train" and not state["averaging"]:
        if nonmono_triggered(previous, valid_loss, hparams["nonmono"]):
            print("switching to averaged SGD", flush=True)
            state["averaging"] = True
            averager.restore([v.numpy() for v in model.trainable_variables], 0)
    elif state["phase"] == "finetune" and nonmono_triggered(previous, valid_loss,
                                                            hparams["nonmono"]):
        phase_over = True  # the finetune script's stopping rule
    previous.append(valid_loss)
    if phase_over:
        _next_phase(state, hparams, averager, model, out_dir)


def _next_phase(state, hparams, averager, model, out_dir):
    """Finetune (MoS): restart from the best weights, averaging from the first step."""
    if state["phase"] == "train" and hparams.get("finetune_epochs"):
        model.load_weights(out_dir / state["best_file"])
        averager.restore([v.numpy() for v in model.trainable_variables], 0)
        state.update(phase="finetune", phase_epoch=0, averaging=True, val_losses=[],
                     lr=hparams["finetune_lr"] or hparams["lr"])
        print("finetuning from the best weights", flush=True)
    else:
        state["phase"] = "done"
