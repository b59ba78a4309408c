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
into the same MLflow run (into a new one tagged ``mosbench.replaces_run``,
with the earlier epochs, if the store no longer holds it); a checkpoint of
other settings, train code or data is discarded, and the job starts afresh.
Outputs: ``model.weights.npz`` (best by validation,
averaged weights once NT-ASGD has switched) and ``train.json``, both written
last. A training or validation loss that becomes NaN or infinite ends the job
too, successfully (a retry would diverge again), with train.json's
``outcome`` "diverged" and the reason (:mod:`mosbench.outcomes`), the best
weights so far (else the current ones), and the MLflow run FAILED.

One trainer at a time per job folder: :func:`train` holds the folder's lock
(:mod:`mosbench.training.job_lock`) from before anything there is read until
it returns or raises; a second trainer stops before it touches the folder.

Around the loop the job measures what the study compares
(:mod:`mosbench.measurement`): time to the first step, step times, epoch
time and its cost, the validation passes' time, the share of the steps spent
waiting for their input (the data read first from a cold page cache where the
OS allows), and the hardware (device and host memory, GPU utilisation and
power; absent, with the reason, where there is no GPU); the data pipeline
has a stage of its own. It records what it ran on
(:mod:`mosbench.measurement.provenance`, in train.json and as MLflow tags) and
reports its progress as it goes (:mod:`mosbench.progress`).
"""

import functools
import hashlib
import math
import shutil
import signal
import time
from pathlib import Path

import numpy as np

from mosbench import code_hash as code_hashes
from mosbench import faults
from mosbench.data.batching import batchify
from mosbench.data.tokenise import load_split
from mosbench.engines import load_engine
from mosbench.errors import TrainingPaused
from mosbench.evaluation.perplexity import evaluate_loss, perplexity
from mosbench.io import atomic_path, write_json
from mosbench.measurement import page_cache
from mosbench.measurement.cost import cost
from mosbench.measurement.hardware import HardwareMonitor, hardware_metrics
from mosbench.measurement.provenance import as_tags, provenance
from mosbench.measurement.timing import InputWait, StepTimer
from mosbench.outcomes import DIVERGED, FINISHED
from mosbench.progress import Progress
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import REPLACES_TAG, Tracker
from mosbench.training import checkpoint
from mosbench.training.bptt import epoch_windows, restore_rng, rng_state
from mosbench.training.job_lock import JobLock
from mosbench.training.nt_asgd import nonmono_triggered

WEIGHTS = "model.weights.npz"
SUMMARY = "train.json"


class StopSignal:
    """Remembers a SIGTERM (SLURM's warning before a time limit or preemption)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


class Diverged(Exception):  # noqa: N818 (an outcome, not a failure)
    """A loss became NaN or infinite; carries :func:`_divergence`'s record."""


def _divergence(state, loss, value, step=None):
    """Where and how a job diverged: train.json's ``diverged_at``, with a ``reason`` line.

    ``loss`` is "training" (a step's loss; ``step`` counts the epoch's steps)
    or "validation" (the epoch's validation loss, after its last step).
    """
    epoch = state["epoch"] + 1
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    return {"loss": loss, "value": str(value), "epoch": epoch, "step": step,
            "phase": state["phase"], "lr": state["lr"],
            "reason": f"the {loss} loss became {value} at {where} ({state['phase']} phase, "
                      f"lr {state['lr']:g}); lower lr or clip"}


def fresh_state(hparams, seed):
    return {"phase": "train", "epoch": 0, "phase_epoch": 0, "position": 0,
            "lr": hparams["lr"], "averaging": False, "val_losses": [],
            "best_loss": math.inf, "best_epoch": 0, "history": [], "run_id": None,
            "rng": rng_state(np.random.default_rng(seed)), "partial": [0.0, 0, 0.0],
            "train_time_s": 0.0}


def _one_trainer_per_folder(train_job):
    """Run ``train_job`` holding its folder's lock: taken first, released however it ends.

    A wrapper, not a ``finally`` in the job, because every exit path must
    release it: errors before the loop (a checkpoint refused), the loop's
    pause or failure, and the end of a finished job.
    """
    @functools.wraps(train_job)
    def locked(data_dir, out_dir, **settings):
        with JobLock(out_dir):
            return train_job(data_dir, out_dir, **settings)
    return locked


@_one_trainer_per_folder
def train(data_dir, out_dir, *, dataset, model_name, seed, gpus, hparams, experiment,
          framework="tensorflow", threads=None, config_snapshot=None, wall_time_s=None,
          devices=None, prices=None, code_hash=None):
    """Train one (framework, dataset, model, seed, gpus) job; return the summary (train.json).

    ``code_hash`` is the hash of the train code the job runs (the rule's
    ``params.code``; None computes it, as the rule does): a checkpoint written
    by other code, or from other data, is not resumed. ``prices`` (config key
    ``cost``) prices its epochs; ``devices`` replaces
    the GPUs (the tests' logical CPU devices). The data pipeline (streaming vs
    caching) is measured by its own stage, once per data set and device
    (:func:`mosbench.measurement.data_pipeline.data_pipeline_record`).
    """
    out_dir = Path(out_dir)
    started = time.monotonic()
    engine = load_engine(framework, gpus=gpus, threads=threads, devices=devices, seed=seed,
                         precision=hparams.get("matmul_precision", "float32"),
                         deterministic=hparams.get("deterministic", False))

    # --- data: the first read timed, from a cold page cache where the OS allows it ---
    input_load = page_cache.drop([Path(data_dir) / f"{s}.parquet" for s in ("train", "valid")])
    load_start = time.perf_counter()
    train_ids, meta = load_split(data_dir, "train")
    valid_ids, _ = load_split(data_dir, "valid")
    input_load["input_load_s"] = time.perf_counter() - load_start
    batch_size = hparams["batch_size"]
    streams = batchify(train_ids, batch_size)

    # --- model, optimiser, averaging, compiled steps ---
    engine.build(model_name, meta["vocab_size"], hparams)
    engine.prepare_training(hparams, batch_size)

    # --- resume or start ---
    hidden = None
    # What a checkpoint must share to be resumed: the settings, and the code and data the
    # rule reruns the job for (a fix or new data trains afresh, not on from the old run).
    fingerprint = {"framework": framework, "dataset": dataset, "model": model_name,
                   "seed": seed, "gpus": gpus, "vocab_size": meta["vocab_size"],
                   "hparams": hparams,
                   "code": code_hash or code_hashes.code_hash("train", framework),
                   "data": _data_digest(train_ids, valid_ids)}
    if checkpoint.exists(out_dir) and not checkpoint.same_job(out_dir, fingerprint):
        print(f"{out_dir}: the checkpoint there is of other settings; starting afresh",
              flush=True)
        checkpoint.remove(out_dir)
    if checkpoint.exists(out_dir):
        state, hidden = checkpoint.load(out_dir, engine)
        print(f"resuming at epoch {state['epoch'] + 1}, window position {state['position']}",
              flush=True)
    else:
        state = fresh_state(hparams, seed)
        state["fingerprint"] = fingerprint
    rng = restore_rng(state["rng"])

    # --- what it runs on (this launch's; a resumed job may have moved) ---
    ran_on = provenance(engine.versions(), gpus)
    _note_launch(state, ran_on)

    # --- tracking ---
    tracker = Tracker(out_dir, experiment, system_metrics=True)  # keeps what MLflow can't take
    replaces = {}  # a paused run deleted meanwhile (or another store): a new run says so
    if state["run_id"] is not None and (gone := tracker.gone(state["run_id"])):
        print(f"the MLflow run {state['run_id']} of this job {gone}; logging to a new run "
              f"(tag {REPLACES_TAG}) with the {len(state['history'])} epoch(s) so far",
              flush=True)
        replaces, state["run_id"] = {REPLACES_TAG: state["run_id"]}, None
    if state["run_id"] is None:
        state["run_id"] = tracker.create_run(
            mlflow_run.run_name(dataset, model_name, seed, gpus, framework),
            tags={**mlflow_run.run_tags(dataset, model_name, seed, gpus, framework, ran_on),
                  **replaces},
            params=mlflow_run.train_params(
                dataset, model_name, seed, gpus, framework, n_params=engine.n_params,
                vocab_size=meta["vocab_size"], train_tokens=meta["tokens"]["train"],
                hparams=hparams),
            dicts=None if config_snapshot is None else {"config.yaml": config_snapshot})
        tracker.log_inputs(mlflow_run.training_inputs(data_dir, dataset, meta["tokens"]))
    else:
        tracker.resume_run(state["run_id"])
        tracker.set_tags(as_tags(ran_on))
    tracker.log_epochs(state["history"])

    def save(position, hidden_states=None):
        state.update(position=position, rng=rng_state(rng))
        checkpoint.save(out_dir, engine, state, hidden_states)

    def validate():
        what = f"validate epoch {state['epoch'] + 1}"
        if state["averaging"]:
            with engine.averaged():
                return evaluate_loss(engine, valid_ids, hparams["eval_batch_size"],
                                     hparams["bptt"], what)
        return evaluate_loss(engine, valid_ids, hparams["eval_batch_size"], hparams["bptt"], what)

    # epochs of the whole budget (NT-ASGD or the finetune's stopping rule may end it sooner)
    budget = hparams["epochs"] + (hparams.get("finetune_epochs") or 0)
    epoch_steps = math.ceil((streams.shape[1] - 1) / hparams["bptt"])  # mean window ~ bptt

    stop, timer = StopSignal(), StepTimer()
    input_wait = InputWait(engine, state.setdefault("input_wait", [0.0, 0.0]))
    monitor = HardwareMonitor(gpus=gpus).__enter__()  # left in the `finally` below
    try:
        while state["phase"] != "done":
            # --- one epoch (or the rest of an interrupted one) ---
            t0 = time.monotonic()
            loss_sum, tokens, epoch_time = state["partial"]
            states = (engine.states_from_arrays(hidden) if hidden
                      else engine.initial_state(batch_size))  # reset at each epoch start
            hidden = None
            step_name = "asgd" if state["averaging"] else "sgd"
            left_after = budget - state["epoch"] - 1
            progress = Progress(f"train epoch {state['epoch'] + 1}/{budget}", epoch_steps,
                                unit="step", approximate=bool(hparams["variable_bptt"]),
                                more_label=f"run ({budget} epochs)", elapsed_before=epoch_time)
            step = round(state["position"] / hparams["bptt"])  # where a resumed epoch is
            for start, length, scale in epoch_windows(
                    rng, streams.shape[1], hparams["bptt"], hparams["variable_bptt"],
                    hparams.get("max_seq_len_delta"), start=state["position"]):
                cut = time.perf_counter()
                window = streams[:, start:start + length + 1]
                step_start = time.perf_counter()
                nll, states = engine.train_step(window[:, :-1], window[:, 1:], states,
                                                state["lr"] * scale, state["averaging"])
                timer.record(step_name, time.perf_counter() - step_start)
                input_wait.step(step_name, step_start - cut, time.perf_counter() - cut)
                faults.point("train-step")
                if "first_step_s" not in state:  # the job's first step: tracing, compiling
                    state["first_step_s"] = time.perf_counter() - step_start
                    state["time_to_first_step_s"] = time.monotonic() - started
                if not math.isfinite(nll):
                    progress.close()
                    raise Diverged(_divergence(state, "training", nll, step + 1))
                loss_sum += nll * length * batch_size
                tokens += length * batch_size
                step += 1
                progress.update(step, tokens=tokens,
                                fraction=(start + length) / (streams.shape[1] - 1),
                                fields=[("loss", f"{loss_sum / tokens:.3f}")],
                                more=left_after)
                # Checked after the step, before the next window's length is drawn, so the
                # saved RNG state redraws exactly the windows that are left.
                if stop.requested or _out_of_time(wall_time_s, started):
                    progress.close()
                    state["partial"] = [loss_sum, tokens, epoch_time + time.monotonic() - t0]
                    save(start + length, engine.state_arrays(states))
                    raise TrainingPaused(f"stopped in epoch {state['epoch'] + 1} at window "
                                         f"position {start + length}; run the job again to "
                                         "resume")
            epoch_time += time.monotonic() - t0
            progress.close()
            state["train_time_s"] += epoch_time

            # --- validate, keep the best, apply the schedule ---
            valid_start = time.monotonic()
            valid_loss = validate()
            valid_time = time.monotonic() - valid_start
            if not math.isfinite(valid_loss):  # nothing to keep from this epoch: stop here
                raise Diverged(_divergence(state, "validation", valid_loss))
            state["epoch"] += 1
            state["phase_epoch"] += 1
            record = {"epoch": state["epoch"], "phase": state["phase"],
                      "train_loss": loss_sum / tokens, "valid_loss": valid_loss,
                      "valid_ppl": perplexity(valid_loss), "epoch_time_s": epoch_time,
                      "valid_time_s": valid_time,
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
                state["best_file"] = _save_best(engine, state["averaging"], out_dir,
                                                state["epoch"], state.get("generation", 0))
                state["keep"] = [state["best_file"]]  # not a checkpoint's to delete
            _schedule(state, valid_loss, hparams, engine, out_dir)
            state["partial"] = [0.0, 0, 0.0]
            save(0)
            tracker.log_epochs(state["history"])
    except Diverged as diverged:  # an outcome, not a fault: ends below, outputs marked
        state["diverged"] = diverged.args[0]
        print(f"training diverged: {state['diverged']['reason']}; the job ends with its "
              "outputs marked diverged (not retried: it would diverge again)", flush=True)
    except TrainingPaused:
        engine.close()  # data-parallel workers (PyTorch), before the tracker waits
        tracker.set_tags({"mosbench.state": "paused"})  # KILLED, and resumed by the next job
        tracker.end_run("KILLED")
        raise
    except BaseException:
        engine.close()
        tracker.end_run("FAILED")
        raise
    finally:
        stop.restore()
        monitor.__exit__(None, None, None)

    diverged = state.get("diverged")
    validated = "best_file" in state  # some epoch validated finitely (always, if finished)
    summary = {"framework": framework, "dataset": dataset, "model": model_name, "seed": seed,
               "gpus": gpus, "run_id": tracker.run_id, "n_params": engine.n_params,
               "vocab_size": meta["vocab_size"], "history": state["history"],
               "outcome": DIVERGED if diverged else FINISHED,
               "best_epoch": state["best_epoch"],
               "best_valid_loss": state["best_loss"] if validated else None,
               "train_time_s": state["train_time_s"], "provenance": ran_on}
    if diverged:
        summary["reason"] = diverged["reason"]
        summary["diverged_at"] = {k: v for k, v in diverged.items() if k != "reason"}
    if len(state["launches"]) > 1:  # a resumed job that moved: say so, keep the others
        summary["provenance_earlier"] = state["launches"][:-1]
    summary["measurements"], summary["absent"] = _job_measurements(
        state, monitor, prices, gpus, engine, input_wait, input_load)
    summary["input_load_page_cache"] = input_load["page_cache"]  # cold or not, and why
    # no best weights (diverged before any finite validation): the current ones, so that the
    # job's output exists; train.json says what they are
    current = None if validated else engine.weights()
    engine.close()
    tracker.log_metrics({k: v for k, v in mlflow_run.train_metrics(summary).items()
                         if v is not None})
    tracker.set_tags({f"absent.{k}": reason for k, reason in summary["absent"].items()})
    # durable: on disk before the checkpoint is removed below, so a crash cannot lose both
    with atomic_path(out_dir / WEIGHTS, suffix=".npz", durable=True) as tmp:
        if validated:
            shutil.copyfile(out_dir / state["best_file"], tmp)
        else:
            np.savez(tmp, **current)
    write_json(out_dir / SUMMARY, summary, durable=True)
    faults.point("finished")
    tracker.log_artifact(out_dir / SUMMARY)
    tracker.log_artifact(out_dir / WEIGHTS)
    if diverged:  # FAILED in the UI, with the reason; the job itself succeeds
        tracker.set_tags({"mosbench.state": DIVERGED, "mosbench.reason": diverged["reason"]})
        tracker.end_run("FAILED")
    else:
        tracker.set_tags({"mosbench.state": "finished"})
        tracker.end_run("FINISHED")  # waits a while for calls the store could not take yet
    # done, diverged too (it would diverge again): a forced rerun trains afresh, not resumes
    checkpoint.remove(out_dir)
    return summary


def _job_measurements(state, monitor, prices, gpus, engine, input_wait, input_load):
    """The job's figures for train.json and MLflow, and why any is absent.

    Per-epoch figures are averaged over epochs (step-time percentiles: their
    median over epochs); epoch time and tokens/s leave out the compiled steps'
    first calls, which trace and compile (``first_step_s`` has the first one).
    ``time_to_first_step_s`` runs from the job's start to the end of its first
    step. Hardware figures are those of the launch that finished the job (the
    same model and batch as any earlier launch). ``input_wait_fraction``: the
    share of the steps' time spent on their input (:class:`InputWait`), with
    ``input_wait_s`` its seconds, over every launch; ``input_load_s``: this
    launch's read of the train and valid Parquet files, with
    ``input_load_cached_pct`` of their pages cached when it started
    (:func:`mosbench.measurement.page_cache.drop`; 0: from a cold cache).
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
    }
    absent = {}
    if not prices:
        absent["cost_per_epoch"] = "no prices configured (config key cost)"
    hardware, hardware_absent = hardware_metrics(monitor)
    figures.update(hardware)
    absent.update(hardware_absent)
    figures["allocator_peak_mb"], reason = engine.allocator_peak_mb()
    if reason:
        absent["allocator_peak_mb"] = reason
    waited, reasons = input_wait.figures()
    figures.update(waited)
    absent.update(reasons)
    figures["input_load_s"] = input_load["input_load_s"]
    figures["input_load_cached_pct"] = input_load["cached_pct"]
    if input_load["cached_pct"] is None:
        absent["input_load_cached_pct"] = input_load["page_cache"]
    for name, value in figures.items():
        if value is None:
            absent.setdefault(name, "not measured in this job")
    return figures, absent


def _note_launch(state, ran_on):
    """Keep each distinct provenance of the job's launches; say so when a resume moved it.

    Host names and the tree's state aside, a job resumed on other hardware or
    software has timings of two kinds: train.json keeps the earlier kinds.
    """
    launches = state.setdefault("launches", [])
    ignored = ("hostname", "git_dirty")
    if launches and any(launches[-1].get(k) != v for k, v in ran_on.items() if k not in ignored):
        changed = sorted(k for k, v in ran_on.items()
                         if k not in ignored and launches[-1].get(k) != v)
        print(f"this launch runs on other hardware or software than the last one "
              f"({', '.join(changed)}); train.json keeps both (provenance_earlier)", flush=True)
        launches.append(ran_on)
    elif not launches:
        launches.append(ran_on)
    else:
        launches[-1] = ran_on


def _data_digest(*splits):
    """sha256 of the token ids the job trains and validates on.

    The ids themselves, not the metadata's source checksums: a tokeniser fix
    changes the ids of the same text. About a second per 100M tokens, once a launch.
    """
    digest = hashlib.sha256()
    for ids in splits:  # length-prefixed: tokens moved from one split to the next count
        digest.update(len(ids).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(ids, dtype=np.int32))
    return digest.hexdigest()


def _out_of_time(wall_time_s, started):
    """Whether this job has used its wall-time budget (None: no budget)."""
    return bool(wall_time_s) and time.monotonic() - started > wall_time_s


def _save_best(engine, averaged, out_dir, epoch, generation):
    """Save the best weights so far (averaged ones while NT-ASGD averages); return the name.

    One file per epoch, named in the checkpoint: a job killed after this but
    before the epoch's checkpoint resumes with the best weights the checkpoint
    knows. The job's output, model.weights.npz, is a copy made at the end:
    Snakemake deletes the outputs of a job that failed or paused. On disk
    before the checkpoint that names it; a full disk stops the job with
    ``generation``, the checkpoint in place, kept.
    """
    name = f"best-{epoch}.weights.npz"
    with (checkpoint.stop_on_full_disk(out_dir, name, generation),
          atomic_path(out_dir / name, suffix=".npz", durable=True) as tmp):
        if averaged:
            with engine.averaged():
                np.savez(tmp, **engine.weights())
        else:
            np.savez(tmp, **engine.weights())
        faults.point("best-weights")  # written, not yet renamed
    return name


def _schedule(state, valid_loss, hparams, engine, out_dir):
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
            engine.start_average()
    elif state["phase"] == "finetune" and nonmono_triggered(previous, valid_loss,
                                                            hparams["nonmono"]):
        phase_over = True  # the finetune script's stopping rule
    previous.append(valid_loss)
    if phase_over:
        _next_phase(state, hparams, engine, out_dir)


def _next_phase(state, hparams, engine, out_dir):
    """Finetune (MoS): restart from the best weights, averaging from the first step."""
    if state["phase"] == "train" and hparams.get("finetune_epochs"):
        with np.load(out_dir / state["best_file"]) as best:
            engine.load_weights(dict(best))
        engine.start_average()
        state.update(phase="finetune", phase_epoch=0, averaging=True, val_losses=[],
                     lr=hparams["finetune_lr"] or hparams["lr"])
        print("finetuning from the best weights", flush=True)
    else:
        state["phase"] = "done"
