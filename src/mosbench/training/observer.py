"""A training job's MLflow run: every tracking call of :func:`mosbench.training.train.train`.

The loop tells :class:`TrackingObserver` what happened (started, an epoch
ended, paused, failed, its result, finished) and the observer makes the
calls, through a :class:`~mosbench.tracking.tracker.Tracker` that keeps what
the store cannot take yet. A resumed job logs into the run it started; if the
store no longer holds that run (deleted meanwhile, or another store), into a
new one tagged ``mosbench.replaces_run`` that gets the earlier epochs too.
"""

from mosbench.measurement.provenance import as_tags
from mosbench.outcomes import DIVERGED
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import REPLACES_TAG, Tracker


class TrackingObserver:
    """The MLflow run of one (framework, dataset, model, seed, gpus) training job."""

    def __init__(self, out_dir, experiment, *, framework, dataset, model_name, seed, gpus):
        self.tracker = Tracker(out_dir, experiment, system_metrics=True)
        self.job = (dataset, model_name, seed, gpus, framework)

    @property
    def run_id(self):
        return self.tracker.run_id

    def on_start(self, state, ran_on, *, n_params, meta, hparams, data_dir,
                 config_snapshot=None, engine_options=None):
        """Open the job's run (a new one, or the paused one again): sets ``state.run_id``."""
        tracker = self.tracker
        replaces = {}  # a paused run deleted meanwhile (or another store): a new run says so
        if state.run_id is not None and (gone := tracker.gone(state.run_id)):
            print(f"the MLflow run {state.run_id} of this job {gone}; logging to a new run "
                  f"(tag {REPLACES_TAG}) with the {len(state.history)} epoch(s) so far",
                  flush=True)
            replaces, state.run_id = {REPLACES_TAG: state.run_id}, None
        if state.run_id is None:
            state.run_id = tracker.create_run(
                mlflow_run.run_name(*self.job),
                tags={**mlflow_run.run_tags(*self.job, ran_on), **replaces},
                params=mlflow_run.train_params(
                    *self.job, n_params=n_params, vocab_size=meta["vocab_size"],
                    train_tokens=meta["tokens"]["train"], hparams=hparams,
                    engine_options=engine_options),
                dicts=None if config_snapshot is None else {"config.yaml": config_snapshot})
            dataset = self.job[0]
            tracker.log_inputs(mlflow_run.training_inputs(data_dir, dataset, meta["tokens"]))
        else:
            tracker.resume_run(state.run_id)
            tracker.set_tags(as_tags(ran_on))
        tracker.log_epochs(state.history)

    def on_epoch(self, state):
        """An epoch's record is in ``state.history`` (and its checkpoint on disk)."""
        self.tracker.log_epochs(state.history)

    def on_pause(self):
        """Stopped with a checkpoint: KILLED, and resumed by the job's next run."""
        self.tracker.set_tags({"mosbench.state": "paused"})
        self.tracker.end_run("KILLED")

    def on_failure(self):
        self.tracker.end_run("FAILED")

    def on_result(self, summary):
        """The job's figures (train.json's), before its outputs are written."""
        self.tracker.log_metrics({k: v for k, v in mlflow_run.train_metrics(summary).items()
                                  if v is not None})
        self.tracker.set_tags({f"absent.{k}": reason for k, reason in summary["absent"].items()})

    def on_finish(self, outputs, diverged=None):
        """The outputs on disk: logged as artefacts, the run ended (FAILED if ``diverged``,
        with the reason; the job itself succeeds). Waits a while for calls the store could
        not take yet."""
        for path in outputs:
            self.tracker.log_artifact(path)
        if diverged:
            self.tracker.set_tags({"mosbench.state": DIVERGED,
                                   "mosbench.reason": diverged["reason"]})
            self.tracker.end_run("FAILED")
        else:
            self.tracker.set_tags({"mosbench.state": "finished"})
            self.tracker.end_run("FINISHED")
