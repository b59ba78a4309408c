"""The *train* stage: the reference training procedure, resumable, as one loop.

Reads top to bottom: devices and seeds, data, model and optimiser, resume or
start, then epochs of variable-length truncated BPTT (hidden state carried
across windows, reset at each epoch start, gradients accumulated over
``small_batch_size`` chunks, clipped by global norm, SGD with weight decay),
validation, and the schedule: NT-ASGD (the AWD models) or dividing the
learning rate when validation stalls (the plain LSTM). An optional finetune
phase restarts from the best weights with averaging from the start (MoS).

:func:`train` is that outline; the loop's state is a
:class:`~mosbench.training.state.LoopState` (what a checkpoint saves), an
epoch is :func:`_train_epoch` (its steps: :func:`_step`) and
:func:`_end_epoch` (validate, keep the best, schedule, checkpoint), and every
MLflow call is made by a :class:`~mosbench.training.observer.TrackingObserver`
that the loop tells what happened.

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
(:mod:`mosbench.measurement`): time to the first step, the programs the
engine compiled and their seconds, step times, epoch
time and its cost, the validation passes' time, the share of the steps spent
waiting for their input (the data read first from a cold page cache where the
OS allows), and the hardware (device and host memory, GPU utilisation and
power; absent, with the reason, where there is no GPU); the data pipeline
has a stage of its own. It records what it ran on
(:mod:`mosbench.measurement.provenance`, in train.json and as MLflow tags) and
reports its progress as it goes (:mod:`mosbench.progress`).
"""

import dataclasses
import functools
import hashlib
import math
import shutil
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
from mosbench.measurement.provenance import provenance
from mosbench.measurement.timing import CompileTotals, InputWait, StepTimer
from mosbench.outcomes import DIVERGED, FINISHED
from mosbench.paths import SUMMARY, WEIGHTS
from mosbench.progress import Progress
from mosbench.stopping import StopSignal, out_of_time
from mosbench.training import checkpoint
from mosbench.training.bptt import epoch_windows, restore_rng, rng_state
from mosbench.training.job_lock import JobLock
from mosbench.training.nt_asgd import nonmono_triggered
from mosbench.training.observer import TrackingObserver
from mosbench.training.state import LoopState, fresh_state  # noqa: F401 (train.fresh_state)


class Diverged(Exception):  # noqa: N818 (an outcome, not a failure)
    """A loss became NaN or infinite; carries :func:`_divergence`'s record."""


def _divergence(state, loss, value, step=None):
    """Where and how a job diverged: train.json's ``diverged_at``, with a ``reason`` line.

    ``loss`` is "training" (a step's loss; ``step`` counts the epoch's steps)
    or "validation" (the epoch's validation loss, after its last step).
    """
    epoch = state.epoch + 1
    where = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
    return {"loss": loss, "value": str(value), "epoch": epoch, "step": step,
            "phase": state.phase, "lr": state.lr,
            "reason": f"the {loss} loss became {value} at {where} ({state.phase} phase, "
                      f"lr {state.lr:g}); lower lr or clip"}


@dataclasses.dataclass
class _Job:
    """What one launch of a job trains with; fixed for the launch (the state is not)."""

    out_dir: Path
    engine: object
    hparams: dict
    streams: np.ndarray  # (batch_size, steps): the train split's token streams
    valid_ids: np.ndarray
    started: float  # time.monotonic() at the launch's start
    wall_time_s: float | None
    timer: StepTimer
    input_wait: InputWait
    compiles: CompileTotals

    @property
    def budget(self):
        """Epochs of the whole budget (NT-ASGD or the finetune's stopping rule may end it
        sooner)."""
        return self.hparams["epochs"] + (self.hparams.get("finetune_epochs") or 0)


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
          framework, threads=None, config_snapshot=None, wall_time_s=None,
          devices=None, prices=None, code_hash=None, engine_options=None):
    """Train one (framework, dataset, model, seed, gpus) job; return the summary (train.json).

    ``code_hash`` is the hash of the train code the job runs (the rule's
    ``params.code``; None computes it, as the rule does): a checkpoint written
    by other code, or from other data, is not resumed. ``prices`` (config key
    ``cost``) prices its epochs; ``devices`` replaces
    the GPUs (the tests' logical CPU devices); ``engine_options`` are the framework's own
    settings (config key ``engines.<framework>``). The data pipeline (streaming vs
    caching) is measured by its own stage, once per data set and device
    (:func:`mosbench.measurement.data_pipeline.data_pipeline_record`).
    """
    out_dir = Path(out_dir)
    started = time.monotonic()
    engine_options = dict(engine_options or {})
    engine = load_engine(framework, engine_options, gpus=gpus, threads=threads,
                         devices=devices, seed=seed,
                         precision=hparams.get("matmul_precision", "float32"),
                         deterministic=hparams.get("deterministic", False))
    train_ids, valid_ids, meta, input_load = _read_data(data_dir)
    streams = batchify(train_ids, hparams["batch_size"])

    # --- model, optimiser, averaging, compiled steps ---
    engine.build(model_name, meta["vocab_size"], hparams)
    engine.prepare_training(hparams, hparams["batch_size"])

    # --- resume or start; what it runs on (this launch's: a resumed job may have moved) ---
    # What a checkpoint must share to be resumed: the settings, and the code and data the
    # rule reruns the job for (a fix or new data trains afresh, not on from the old run).
    fingerprint = {"framework": framework, "dataset": dataset, "model": model_name,
                   "seed": seed, "gpus": gpus, "vocab_size": meta["vocab_size"],
                   "hparams": hparams, "engine_options": engine_options,
                   "code": code_hash or code_hashes.code_hash("train", framework),
                   "data": _data_digest(train_ids, valid_ids)}
    state, hidden = _resume_or_start(out_dir, engine, fingerprint, hparams, seed)
    rng = restore_rng(state.rng)
    ran_on = provenance(engine.versions(), gpus)
    _note_launch(state, ran_on)

    tracking = TrackingObserver(out_dir, experiment, framework=framework, dataset=dataset,
                                model_name=model_name, seed=seed, gpus=gpus)
    tracking.on_start(state, ran_on, n_params=engine.n_params, meta=meta, hparams=hparams,
                      data_dir=data_dir, config_snapshot=config_snapshot,
                      engine_options=engine_options)

    stop, diverged = StopSignal(), None
    job = _Job(out_dir, engine, hparams, streams, valid_ids, started, wall_time_s,
               StepTimer(), InputWait(engine, state.input_wait),
               CompileTotals(engine, state.compiles))
    monitor = HardwareMonitor(gpus=gpus).__enter__()  # left in the `finally` below
    try:
        while state.phase != "done":
            loss_sum, tokens, epoch_time = _train_epoch(job, state, rng, hidden, stop)
            hidden = None  # carried into a resumed epoch only; reset at each epoch start
            _end_epoch(job, state, rng, loss_sum, tokens, epoch_time, prices, gpus)
            tracking.on_epoch(state)
    except Diverged as exc:  # an outcome, not a fault: ends below, outputs marked
        diverged = exc.args[0]
        print(f"training diverged: {diverged['reason']}; the job ends with its "
              "outputs marked diverged (not retried: it would diverge again)", flush=True)
    except TrainingPaused:
        engine.close()  # data-parallel workers (PyTorch), before the tracker waits
        tracking.on_pause()
        raise
    except BaseException:
        engine.close()
        tracking.on_failure()
        raise
    finally:
        stop.restore()
        monitor.__exit__(None, None, None)

    summary = {"framework": framework, "dataset": dataset, "model": model_name, "seed": seed,
               "gpus": gpus, "run_id": tracking.run_id, "n_params": engine.n_params,
               "vocab_size": meta["vocab_size"], "engine_options": engine_options}
    summary.update(_outcome(state, diverged, ran_on))
    summary["measurements"], summary["absent"] = _job_measurements(
        state, monitor, prices, gpus, engine, job.input_wait, job.compiles, input_load)
    summary["input_load_page_cache"] = input_load["page_cache"]  # cold or not, and why
    # no best weights (diverged before any finite validation): the current ones, so that the
    # job's output exists; train.json says what they are
    current = None if state.best_file else engine.weights()
    engine.close()
    tracking.on_result(summary)
    _write_outputs(out_dir, state.best_file, current, summary)
    faults.point("finished")
    tracking.on_finish([out_dir / SUMMARY, out_dir / WEIGHTS], diverged)
    # done, diverged too (it would diverge again): a forced rerun trains afresh, not resumes
    checkpoint.remove(out_dir)
    return summary


def _read_data(data_dir):
    """``(train ids, valid ids, metadata, input_load)``: the first read timed, from a cold
    page cache where the OS allows it (``input_load``: :func:`page_cache.drop`'s record
    with ``input_load_s``)."""
    input_load = page_cache.drop([Path(data_dir) / f"{s}.parquet" for s in ("train", "valid")])
    load_start = time.perf_counter()
    train_ids, meta = load_split(data_dir, "train")
    valid_ids, _ = load_split(data_dir, "valid")
    input_load["input_load_s"] = time.perf_counter() - load_start
    return train_ids, valid_ids, meta, input_load


def _resume_or_start(out_dir, engine, fingerprint, hparams, seed):
    """``(state, hidden states)``: the checkpoint's if it is of this job, else a fresh start
    (a checkpoint of other settings, code or data deleted first)."""
    if checkpoint.exists(out_dir) and not checkpoint.same_job(out_dir, fingerprint):
        print(f"{out_dir}: the checkpoint there is of other settings; starting afresh",
              flush=True)
        checkpoint.remove(out_dir)
    if checkpoint.exists(out_dir):
        saved, hidden = checkpoint.load(out_dir, engine)
        state = LoopState.from_dict(saved)
        print(f"resuming at epoch {state.epoch + 1}, window position {state.position}",
              flush=True)
        return state, hidden
    return LoopState.start(hparams, seed, fingerprint), None


def _save(job, state, rng, position, hidden_states=None):
    """A checkpoint of the job at window ``position`` of the current epoch."""
    state.position, state.rng = position, rng_state(rng)
    job.compiles.update()  # this launch's so far, for a resume to add to
    saved = state.as_dict()
    checkpoint.save(job.out_dir, job.engine, saved, hidden_states)
    state.generation = saved["generation"]


def _train_epoch(job, state, rng, hidden, stop):
    """One epoch's steps, or the rest of an interrupted one: ``(loss sum, tokens, seconds)``.

    A non-finite loss raises :class:`Diverged`. SIGTERM or the wall-time budget
    saves a checkpoint mid-epoch, with the ``hidden`` states to carry on with,
    and raises :class:`TrainingPaused`.
    """
    engine, hparams, batch_size = job.engine, job.hparams, job.hparams["batch_size"]
    t0 = time.monotonic()
    loss_sum, tokens, epoch_time = state.partial
    states = (engine.states_from_arrays(hidden) if hidden
              else engine.initial_state(batch_size))  # reset at each epoch start
    step_name = "asgd" if state.averaging else "sgd"
    progress, left_after = _epoch_progress(job, state, epoch_time), job.budget - state.epoch - 1
    step = round(state.position / hparams["bptt"])  # where a resumed epoch is
    for start, length, scale in epoch_windows(
            rng, job.streams.shape[1], hparams["bptt"], hparams["variable_bptt"],
            hparams.get("max_seq_len_delta"), start=state.position):
        nll, states = _step(job, state, step_name, start, length, scale, states)
        if not math.isfinite(nll):
            progress.close()
            raise Diverged(_divergence(state, "training", nll, step + 1))
        loss_sum += nll * length * batch_size
        tokens += length * batch_size
        step += 1
        progress.update(step, tokens=tokens,
                        fraction=(start + length) / (job.streams.shape[1] - 1),
                        fields=[("loss", f"{loss_sum / tokens:.3f}")], more=left_after)
        # Checked after the step, before the next window's length is drawn, so the
        # saved RNG state redraws exactly the windows that are left.
        if stop.requested or out_of_time(job.wall_time_s, job.started):
            progress.close()
            state.partial = [loss_sum, tokens, epoch_time + time.monotonic() - t0]
            _save(job, state, rng, start + length, engine.state_arrays(states))
            raise TrainingPaused(f"stopped in epoch {state.epoch + 1} at window "
                                 f"position {start + length}; run the job again to resume")
    epoch_time += time.monotonic() - t0
    progress.close()
    return loss_sum, tokens, epoch_time


def _epoch_progress(job, state, elapsed_before):
    """The progress line of the epoch (``elapsed_before``: an interrupted epoch's seconds)."""
    epoch_steps = math.ceil((job.streams.shape[1] - 1) / job.hparams["bptt"])  # mean ~ bptt
    return Progress(f"train epoch {state.epoch + 1}/{job.budget}", epoch_steps, unit="step",
                    approximate=bool(job.hparams["variable_bptt"]),
                    more_label=f"run ({job.budget} epochs)", elapsed_before=elapsed_before)


def _step(job, state, step_name, start, length, scale, states):
    """One training step on the window at ``start``, timed: ``(loss, states)``.

    The step's input is the window's cut here and the engine's making of its
    tensors (:class:`InputWait`); the job's first step also gives
    ``first_step_s`` (tracing, compiling) and ``time_to_first_step_s``.
    """
    cut = time.perf_counter()
    window = job.streams[:, start:start + length + 1]
    step_start = time.perf_counter()
    nll, states = job.engine.train_step(window[:, :-1], window[:, 1:], states,
                                        state.lr * scale, state.averaging)
    job.timer.record(step_name, time.perf_counter() - step_start)
    job.input_wait.step(step_name, step_start - cut, time.perf_counter() - cut)
    faults.point("train-step")
    if state.first_step_s is None:  # the job's first step: tracing, compiling
        state.first_step_s = time.perf_counter() - step_start
        state.time_to_first_step_s = time.monotonic() - job.started
    return nll, states


def _end_epoch(job, state, rng, loss_sum, tokens, epoch_time, prices, gpus):
    """Validate, record the epoch, keep the best weights, apply the schedule, checkpoint.

    A validation loss that is not finite raises :class:`Diverged`: nothing to keep.
    """
    state.train_time_s += epoch_time
    valid_start = time.monotonic()
    valid_loss = _validate(job, state)
    valid_time = time.monotonic() - valid_start
    if not math.isfinite(valid_loss):
        raise Diverged(_divergence(state, "validation", valid_loss))
    state.epoch += 1
    state.phase_epoch += 1
    record = {"epoch": state.epoch, "phase": state.phase,
              "train_loss": loss_sum / tokens, "valid_loss": valid_loss,
              "valid_ppl": perplexity(valid_loss), "epoch_time_s": epoch_time,
              "valid_time_s": valid_time, "tokens_per_s": tokens / epoch_time, "lr": state.lr,
              "averaging": state.averaging, **job.timer.epoch_summary()}
    if prices:
        record["cost_per_epoch"] = cost(epoch_time, gpus, prices)
    state.history.append(record)
    faults.point("epoch-end")
    print(f"epoch {record['epoch']:3d} {state.phase:8s} | train ppl "
          f"{perplexity(record['train_loss']):9.2f} | valid ppl {record['valid_ppl']:9.2f}"
          f" | {epoch_time:6.1f} s | lr {state.lr:g}"
          f"{' | averaged' if state.averaging else ''}", flush=True)
    if valid_loss < state.best_loss:
        state.best_loss, state.best_epoch = valid_loss, state.epoch
        state.best_file = _save_best(job.engine, state.averaging, job.out_dir, state.epoch,
                                     state.generation or 0)
        state.keep = [state.best_file]  # not a checkpoint's to delete
    _schedule(state, valid_loss, job.hparams, job.engine, job.out_dir)
    state.partial = [0.0, 0, 0.0]
    _save(job, state, rng, 0)


def _validate(job, state):
    """The validation loss (of the averaged weights while NT-ASGD averages)."""
    what = f"validate epoch {state.epoch + 1}"
    batch_size, bptt = job.hparams["eval_batch_size"], job.hparams["bptt"]
    if state.averaging:
        with job.engine.averaged():
            return evaluate_loss(job.engine, job.valid_ids, batch_size, bptt, what)
    return evaluate_loss(job.engine, job.valid_ids, batch_size, bptt, what)


def _outcome(state, diverged, ran_on):
    """train.json's history, outcome, best epoch and provenance; where it diverged."""
    validated = state.best_file is not None  # some epoch validated finitely (always, if done)
    outcome = {"history": state.history, "outcome": DIVERGED if diverged else FINISHED,
               "best_epoch": state.best_epoch,
               "best_valid_loss": state.best_loss if validated else None,
               "train_time_s": state.train_time_s, "provenance": ran_on}
    if diverged:
        outcome["reason"] = diverged["reason"]
        outcome["diverged_at"] = {k: v for k, v in diverged.items() if k != "reason"}
    if len(state.launches) > 1:  # a resumed job that moved: say so, keep the others
        outcome["provenance_earlier"] = state.launches[:-1]
    return outcome


def _write_outputs(out_dir, best_file, current, summary):
    """model.weights.npz (a copy of ``best_file``, else the ``current`` weights), then
    train.json. Durable: on disk before the checkpoint is removed, so a crash cannot lose
    both."""
    with atomic_path(out_dir / WEIGHTS, suffix=".npz", durable=True) as tmp:
        if best_file:
            shutil.copyfile(out_dir / best_file, tmp)
        else:
            np.savez(tmp, **current)
    write_json(out_dir / SUMMARY, summary, durable=True)


def _job_measurements(state, monitor, prices, gpus, engine, input_wait, compiles, input_load):
    """The job's figures for train.json and MLflow, and why any is absent.

    Per-epoch figures are averaged over epochs (step-time percentiles: their
    median over epochs); epoch time and tokens/s leave out the compiled steps'
    first calls, which trace and compile (``first_step_s`` has the first one).
    ``time_to_first_step_s`` runs from the job's start to the end of its first
    step; ``compiles`` and ``compile_s`` are the programs the engine compiled and
    their seconds, summed over the job's launches (:class:`CompileTotals`; absent,
    with the engine's reason, where it does not count them). Hardware figures
    are those of the launch that finished the job (the same model and batch as
    any earlier launch). ``input_wait_fraction``: the share of the steps' time
    spent on their input (:class:`InputWait`), with ``input_wait_s`` its
    seconds, over every launch; ``input_load_s``: this launch's read of the
    train and valid Parquet files, with ``input_load_cached_pct`` of their
    pages cached when it started
    (:func:`mosbench.measurement.page_cache.drop`; 0: from a cold cache).
    """
    history = state.history
    compiled, compiles_absent = compiles.figures()

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
        "first_step_s": state.first_step_s,
        "time_to_first_step_s": state.time_to_first_step_s,
        **compiled,
        "cost_per_epoch": over_epochs("cost_per_epoch", np.mean),
    }
    absent = dict(compiles_absent)
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
    launches = state.launches
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
    previous = state.val_losses
    phase_over = state.phase_epoch >= (hparams["epochs"] if state.phase == "train"
                                       else hparams["finetune_epochs"])
    if hparams["schedule"] == "plateau-decay":
        if previous and valid_loss >= min(previous):
            state.lr /= hparams["lr_decay"]
    elif state.phase == "train" and not state.averaging:
        if nonmono_triggered(previous, valid_loss, hparams["nonmono"]):
            print("switching to averaged SGD", flush=True)
            state.averaging = True
            engine.start_average()
    elif state.phase == "finetune" and nonmono_triggered(previous, valid_loss,
                                                         hparams["nonmono"]):
        phase_over = True  # the finetune script's stopping rule
    previous.append(valid_loss)
    if phase_over:
        _next_phase(state, hparams, engine, out_dir)


def _next_phase(state, hparams, engine, out_dir):
    """Finetune (MoS): restart from the best weights, averaging from the first step."""
    if state.phase == "train" and hparams.get("finetune_epochs"):
        with np.load(out_dir / state.best_file) as best:
            engine.load_weights(dict(best))
        engine.start_average()
        state.phase, state.phase_epoch, state.averaging, state.val_losses = (
            "finetune", 0, True, [])
        state.lr = hparams["finetune_lr"] or hparams["lr"]
        print("finetuning from the best weights", flush=True)
    else:
        state.phase = "done"
