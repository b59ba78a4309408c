"""Every MLflow call of a job, kept on disk while the tracking store cannot take it.

*train*, *evaluate* and *aggregate* make all their MLflow calls through a
:class:`Tracker` with explicit run ids (``MlflowClient``), never through
MLflow's global active run. A call goes straight to the store when nothing is
waiting; when the store cannot be reached (connection refused or reset, timeout, a 5xx or
429 answer, SQLite's ``database is locked``), the call is appended to the
job folder's spool (:mod:`mosbench.tracking.spool`) and so is every call
after it, in order, until a delivery succeeds. Delivery is tried again at the
next call (at most every few seconds, backing off to a minute), and at the
end of the job for up to ``MOSBENCH_TRACKING_WAIT_S`` seconds: by default 60
when the store took calls of this job before (an outage that may end soon),
none when it never answered (it is away or the URI is wrong: waiting would
only stall the workflow), and none when the job pauses or fails. What is
still kept then stays in the spool, one line says so, and
``mosbench replay-tracking FOLDER --tracking-uri URI`` delivers it later.

A spool is data, not instructions: replay sends to the store it is given
(never to the one a spool names: that is recorded with its credentials masked,
as a hint), and uploads artefacts only from inside the spool's job folder.

Each call is delivered once:

* a delivered call is marked so in the spool (fsync'd) and never sent again;
* a call that may have reached the store without the job knowing (the answer
  was lost, or the job died between sending and marking) is checked before it
  is sent again: metric values carry their own timestamps and steps, and a
  value the run already holds (same key, step, timestamp and value; for the
  per-epoch metrics, same key and step) is not logged twice. Params, tags,
  artefacts and status changes are idempotent;
* a run created late is found again by its ``mosbench.run_token`` tag rather
  than created twice. Until it exists the job refers to it as
  ``pending:<token>`` (in its checkpoint and ``train.json``); that reference
  resolves to the real run id wherever it is used later.

A run that a job would resume may be gone: deleted in the MLflow UI (a
paused run shows as KILLED), removed for good, or in another store than the
job now logs to. :meth:`Tracker.gone` asks the store; only its answer counts,
never an outage. The job then logs to a new run tagged
``mosbench.replaces_run`` with the old id, rather than fail on every retry.

While the store is down MLflow's own HTTP retries (7, with exponential
backoff) would stall the job for minutes per call, and a retry after a
timeout can log a value twice; so, unless the user has set them, the tracker
sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=15``
and retries through the spool, checked. Before delivering kept calls it asks
a server's ``/health`` with a 3 s timeout, so a server that hangs costs each
try 3 s, not 15. MLflow's system-metrics monitor stops by itself when it
cannot reach the store; the tracker starts it again once the store answers,
so only the samples of the outage itself are missing.
"""

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

from mosbench.errors import MosbenchError
from mosbench.tracking import mlflow_run
from mosbench.tracking.spool import SPOOL, Spool

PENDING = "pending:"
TOKEN_TAG = "mosbench.run_token"
# on a run that stands in for one the store no longer holds: the old run's id
REPLACES_TAG = "mosbench.replaces_run"
EPOCH_KEY = "history/valid_ppl"  # one per epoch: which epochs a run holds
WAIT_ENV = "MOSBENCH_TRACKING_WAIT_S"
DEFAULT_WAIT_S = 60.0
# MLflow's own retries would stall a job for minutes per call while the server is away,
# and a retry after a timeout may log a metric twice; the spool retries instead.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
FIRST_RETRY_S, LAST_RETRY_S = 2.0, 60.0  # between tries while the store fails
PROBE_S = 3.0  # how long a kept call waits for a tracking server to answer at all


class RunNotCreated(Exception):  # noqa: N818 (a state: delivery waits for it)
    """A ``pending:`` run that the store does not hold yet."""


def is_transient(exc):
    """Whether ``exc`` means "the store could not take it now", not "the store refused it"."""
    import requests
    from mlflow.exceptions import RestException

    permanent = (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                 requests.exceptions.InvalidSchema)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RunNotCreated | ConnectionError | TimeoutError):
            return True
        if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            return exc.response.status_code in (408, 429) or exc.response.status_code >= 500
        if isinstance(exc, requests.exceptions.RequestException):
            return not isinstance(exc, permanent)  # refused, reset, timed out, retries spent
        if "database is locked" in str(exc) or "database is busy" in str(exc):
            return True
        if isinstance(exc, RestException) and (exc.get_http_status_code() >= 500
                                               or exc.get_http_status_code() == 429):
            return True  # the server answered, but is failing or overloaded
        exc = exc.__cause__ or exc.__context__
    return False


def _log_inputs(client, run_id, datasets, tries=5):
    """``client.log_inputs``, again when another job inserted the same data set first.

    MLflow's store looks a data set up, then inserts it: jobs of one data set
    starting together race, and the losers get a unique-constraint error for
    a data set that now exists (the next try finds and links it). A line says
    when that happened, so a job's log shows the race was met and handled.
    """
    for attempt in range(tries):
        try:
            logged = client.log_inputs(run_id, datasets=datasets)
        except Exception as exc:
            text = str(exc).lower()  # SQLite, PostgreSQL and MySQL word it differently
            lost_race = "datasets" in text and ("unique constraint" in text
                                                or "duplicate" in text)
            if attempt == tries - 1 or not lost_race:
                raise
            time.sleep(0.1 * (attempt + 1))
            continue
        if attempt:
            names = ", ".join(sorted({d.dataset.name for d in datasets}))
            _say(f"another job inserted data set {names} at the same moment; linked that "
                 f"record (try {attempt + 1} of {tries})")
        return logged


def _now_ms():
    return int(time.time() * 1000)


def _say(message):
    print(f"mosbench: tracking: {message}", file=sys.stderr, flush=True)


def _reason(exc):
    """A short reason for a failed call, for a one-line message (credentials masked)."""
    text = mlflow_run.redact(exc)
    for cause in ("Connection refused", "timed out", "database is locked", "not in the store yet"):
        if cause in text:
            return cause
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _same_value(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


class Tracker:
    """The MLflow run of one job: create or resume it, log to it, end it; see the module doc.

    ``folder`` is the job's output folder (the spool goes there); ``uri``
    defaults to :func:`mlflow_run.tracking_uri` (a server's credentials in it go to
    MLflow's environment variables: :func:`mlflow_run.store_uri`).
    """

    def __init__(self, folder, experiment=None, *, uri=None, system_metrics=False, spool=None):
        for name, value in FAIL_FAST.items():
            os.environ.setdefault(name, value)
        self.folder = Path(folder)
        self.experiment = experiment
        self.uri = mlflow_run.store_uri(uri or mlflow_run.tracking_uri())
        self.spool = Spool(spool or self.folder / SPOOL)
        self.system_metrics = system_metrics
        self.run_id = None  # the MLflow run id, or "pending:<token>" until the run exists
        self.last_error = None
        self.skipped = 0  # metric values not sent again because the run already held them
        self.rejected = 0  # kept calls the store refused for good
        self.outside = 0  # kept artefact uploads refused: a file outside the job folder
        self._client = None
        self._runs = {}  # token -> run id, for runs created or found
        self._epochs = None  # epochs the run holds or that are on their way
        self._monitor = None
        self._ended = False
        self._retry_at, self._retry_s = 0.0, FIRST_RETRY_S
        self._answered = False  # whether the store took a call of this tracker
        self._seen = {}  # (run id, key) -> metric values the run holds, during one delivery

    # --- what the stages call ---

    def create_run(self, run_name, tags, params=None, dicts=None):
        """A new run named ``run_name``; returns its id (``pending:...`` until it exists)."""
        from mlflow.tracking.context.registry import resolve_tags

        token = uuid.uuid4().hex
        self.run_id = PENDING + token
        tags = {key: str(value) for key, value in resolve_tags(tags).items()}
        self._submit({"op": "create_run", "token": token, "run_name": run_name,
                      "tags": {**tags, TOKEN_TAG: token}, "start_time": _now_ms()})
        if params:
            self.log_params(params)
        for name, data in (dicts or {}).items():
            self.log_dict(data, name)
        self._epochs = set()
        self._start_monitor()
        return self.run_id

    def resume_run(self, run_id):
        """Continue the run ``run_id`` (status RUNNING again); returns the tracker."""
        self.run_id = run_id
        self._submit({"op": "resume_run"})
        self._start_monitor()
        return self

    def gone(self, run_id):
        """Why the store no longer holds the run ``run_id`` ("was deleted", ...), else None.

        Only the store's own answer counts: one that cannot be reached now (an
        outage) or a ``pending:`` run not found (its creation may still wait in
        a spool) is None, and the job resumes the run as before. A run deleted
        in the MLflow UI (lifecycle "deleted", which MLflow refuses to log to)
        or removed for good, or a job pointed at another store, gives a reason.
        """
        from mlflow.entities import ViewType
        from mlflow.exceptions import MlflowException

        try:
            self._probe()
            client = self._mlflow()
            if run_id.startswith(PENDING):
                experiment = self.experiment and client.get_experiment_by_name(self.experiment)
                runs = experiment and client.search_runs(
                    [experiment.experiment_id],
                    f"tags.`{TOKEN_TAG}` = '{run_id.removeprefix(PENDING)}'",
                    run_view_type=ViewType.ALL, max_results=1)
                if not runs:
                    return None
                run = runs[0]
            else:
                run = client.get_run(run_id)
        except Exception as exc:
            if is_transient(exc):
                return None
            if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return "is not in the tracking store (removed for good, or another store)"
            raise
        if run.info.lifecycle_stage == "deleted":
            return "was deleted in the tracking store"
        return None

    def log_params(self, params):
        self._submit({"op": "log_batch", "params": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags):
        if tags:
            self._submit({"op": "log_batch", "tags": {k: str(v) for k, v in tags.items()}})

    def log_metrics(self, metrics, step=0):
        self._log_metrics(metrics, step)

    def log_dict(self, data, name):
        self._submit({"op": "log_dict", "data": json.loads(json.dumps(data, default=str)),
                      "name": name})

    def log_artifact(self, path):
        self._submit({"op": "log_artifact", "path": str(Path(path).resolve())})

    def log_inputs(self, datasets):
        """Dataset inputs of the run: dicts from :func:`mlflow_run.dataset_input`."""
        self._submit({"op": "log_inputs", "datasets": list(datasets)})

    def log_epochs(self, history):
        """Log the epochs of ``history`` (train.json records) that the run does not hold yet.

        After a resume, epochs logged (or kept) before the interruption are not
        logged again, and epochs checkpointed but not yet logged are not lost.
        """
        asked = True
        if self._epochs is None:
            self._epochs, asked = self._held_epochs()
        for record in history:
            if record["epoch"] not in self._epochs:
                # without the store's answer, delivery checks each epoch against the run
                self._log_metrics(mlflow_run.epoch_metrics(record), record["epoch"],
                                  once_per_step=True, checked=not asked)
                self._epochs.add(record["epoch"])

    def end_run(self, status="FINISHED", wait_s=None):
        """End the run with ``status``; wait up to ``wait_s`` for kept calls to go.

        ``wait_s`` defaults to ``MOSBENCH_TRACKING_WAIT_S`` for a finished run
        (unset: 60 s if the store took any call of this job, none if it never
        answered) and to none otherwise. Returns whether nothing is left kept.
        """
        self._stop_monitor()
        self._ended = True
        self._submit({"op": "end_run", "status": status, "end_time": _now_ms()})
        if wait_s is None:
            wait_s = self._default_wait() if status == "FINISHED" else 0
        return self.drain(wait_s)

    def _default_wait(self):
        if WAIT_ENV in os.environ:
            return float(os.environ[WAIT_ENV])
        return DEFAULT_WAIT_S if self._answered else 0.0

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        self.end_run("FINISHED" if kind is None else "FAILED")

    # --- delivery ---

    def flush(self, force=False):
        """Deliver the kept calls; returns whether none is left.

        Unless ``force``, a store that failed recently is not tried again yet.
        """
        if not self.spool.pending:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        self._seen = {}
        try:
            self._probe()
            count = self.spool.deliver(self._deliver)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._note(exc)
            return False
        if self.last_error is not None:
            _say(f"the tracking store answers again: delivered {count} kept call(s)")
        self.last_error, self._retry_s, self._answered = None, FIRST_RETRY_S, True
        self._settle()
        self._start_monitor()
        return True

    def drain(self, wait_s=0.0):
        """Try to deliver the kept calls until none is left or ``wait_s`` has passed."""
        began = time.monotonic()
        deadline = began + wait_s
        while not self.flush(force=True):
            left = deadline - time.monotonic()
            if left <= 0:
                _say(f"{self.spool.pending} MLflow call(s) not delivered (waited "
                     f"{time.monotonic() - began:.0f} s), kept in {self.spool.path}; send them "
                     f"with: mosbench replay-tracking {self.spool.path.parent} --tracking-uri "
                     "URI (or with MLFLOW_TRACKING_URI set)")
                return False
            time.sleep(min(2.0, left))
        return True

    def _submit(self, record, checked=False):
        """Send one call now, or keep it if calls are waiting or the store does not answer.

        ``checked``: send it through the spool, so delivery first checks what the
        run already holds.
        """
        # the store, masked: a hint for whoever replays the spool, never where replay sends
        record = {"uri": mlflow_run.safe_uri(self.uri), "experiment": self.experiment, **record}
        if record["op"] != "create_run":
            record = {"run": self.run_id, **record}
        if checked or (self.spool.pending and not self.flush()):
            self._keep(record)
            return
        try:
            self._send(record, {})
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._note(exc)
            self._keep(record)
            return
        self._answered = True
        self._settle()
        self._start_monitor()  # if it stopped on a failure of its own

    def _keep(self, record):
        self.spool.append(record)
        self.flush()

    def _note(self, exc):
        """The store failed: say so once per outage, and wait a while before the next try."""
        first = self.last_error is None
        self.last_error = exc
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(2 * self._retry_s, LAST_RETRY_S)
        if first:
            _say(f"the tracking store at {mlflow_run.safe_uri(self.uri)} cannot take calls now "
                 f"({_reason(exc)}); "
                 f"keeping them in {self.spool.path} and retrying")

    def _deliver(self, record, runs):
        """Send one kept call, checking first what the run already holds.

        A spool is only data (anyone who could write the results folder could
        have edited it): an artefact it names is uploaded only from inside the
        spool's own job folder, symbolic links resolved; the call naming
        another file is refused for good.
        """
        if record["op"] == "log_artifact":
            folder = self.spool.path.parent.resolve()
            path = (folder / str(record.get("path", ""))).resolve()
            if not path.is_relative_to(folder):
                self.outside += 1
                _say(f"{self.spool.path}: a kept call would upload {path}, which is outside "
                     f"the job folder {folder}; refused, not uploaded")
                return {"rejected": f"{path}: outside the job folder"}
            record = {**record, "path": str(path)}  # upload what was checked, not a link
        try:
            return self._send(record, runs, checked=True)
        except Exception as exc:
            if is_transient(exc):
                raise
            self.rejected += 1
            reason = mlflow_run.redact(exc)
            _say(f"the tracking store refused a kept call ({record['op']}): {reason}; dropped")
            return {"rejected": reason[:500]}

    def _send(self, record, runs, checked=False):
        """Make the MLflow call ``record`` describes; returns what marks it delivered."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._mlflow()
        op = record["op"]
        if op == "create_run":
            run_id = self._create(client, record)
            self._runs[record["token"]] = run_id
            return {"run_id": run_id}
        run_id = self._resolve(client, record["run"], runs, record.get("experiment"))
        if op == "resume_run":
            client.update_run(run_id, "RUNNING")
        elif op == "log_batch":
            metrics = record.get("metrics", [])
            if checked:
                metrics = self._unseen(client, run_id, metrics, record.get("once_per_step"))
            if metrics or record.get("params") or record.get("tags"):
                client.log_batch(
                    run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in metrics],
                    params=[Param(k, v) for k, v in record.get("params", {}).items()],
                    tags=[RunTag(k, v) for k, v in record.get("tags", {}).items()],
                    synchronous=True)
            for key, value, ts, step in metrics:
                self._seen.get((run_id, key), []).append((step, ts, value))
        elif op == "log_dict":
            client.log_dict(run_id, record["data"], record["name"])
        elif op == "log_artifact":
            client.log_artifact(run_id, record["path"])
        elif op == "log_inputs":  # the store keeps one input per dataset: idempotent
            _log_inputs(client, run_id, [_dataset_input(d) for d in record["datasets"]])
        elif op == "end_run":
            client.set_terminated(run_id, record["status"], record["end_time"])
        else:
            raise MosbenchError(f"unknown kept call {op!r}")
        return {}

    def _unseen(self, client, run_id, metrics, once_per_step):
        """The metric values of ``metrics`` that the run does not hold yet."""
        left = []
        for key, value, ts, step in metrics:
            if (run_id, key) not in self._seen:
                self._seen[run_id, key] = [(m.step, m.timestamp, m.value)
                                           for m in client.get_metric_history(run_id, key)]
            held = self._seen[run_id, key]
            if any(s == step and (once_per_step or (t == ts and _same_value(v, value)))
                   for s, t, v in held):
                self.skipped += 1
            else:
                left.append([key, value, ts, step])
        return left

    def _create(self, client, record):
        """Create the run, unless an earlier try did (found by its token tag)."""
        experiment_id = mlflow_run.experiment_id(client, record["experiment"], self.uri)
        found = self._find(client, record["token"], experiment_id)
        if found is not None:
            return found
        run = client.create_run(experiment_id, start_time=record["start_time"],
                                tags=record["tags"], run_name=record["run_name"])
        return run.info.run_id

    def _resolve(self, client, ref, runs, experiment):
        """The run id behind ``ref``: itself, or the run created for a ``pending:`` token."""
        if not ref.startswith(PENDING):
            return ref
        token = ref.removeprefix(PENDING)
        if token in runs:
            self._runs[token] = runs[token]
        if token not in self._runs:
            found = None
            if experiment and (exp := client.get_experiment_by_name(experiment)) is not None:
                found = self._find(client, token, exp.experiment_id)
            if found is None:
                raise RunNotCreated(f"the run {ref} is not in the store yet: replay the training "
                                    "job's folder first")
            self._runs[token] = found
        return self._runs[token]

    @staticmethod
    def _find(client, token, experiment_id):
        runs = client.search_runs([experiment_id], f"tags.`{TOKEN_TAG}` = '{token}'",
                                  max_results=1)
        return runs[0].info.run_id if runs else None

    def _settle(self):
        """Replace a ``pending:`` run id by the real one once it is known."""
        if self.run_id and self.run_id.startswith(PENDING):
            self.run_id = self._runs.get(self.run_id.removeprefix(PENDING), self.run_id)

    def _held_epochs(self):
        """Epochs the run holds or that wait in the spool; and whether the store was asked."""
        refs = {self.run_id} | {PENDING + t for t, run in self._runs.items() if run == self.run_id}
        epochs = {m[3] for r in self.spool.read()[2]
                  if r["op"] == "log_batch" and r.get("run") in refs and r.get("once_per_step")
                  for m in r["metrics"] if m[0] == EPOCH_KEY}
        if self.run_id.startswith(PENDING):
            return epochs, False
        try:
            history = self._mlflow().get_metric_history(self.run_id, EPOCH_KEY)
        except Exception as exc:
            if not is_transient(exc):
                raise
            return epochs, False  # unknown: send what we have through the check
        return epochs | {m.step for m in history}, True

    def _log_metrics(self, metrics, step, once_per_step=False, checked=False):
        ts = _now_ms()
        record = {"op": "log_batch",
                  "metrics": [[k, float(v), ts, int(step)] for k, v in metrics.items()]}
        if once_per_step:
            record["once_per_step"] = True
        if record["metrics"]:
            self._submit(record, checked=checked)

    def _probe(self):
        """Raise at once if a tracking server does not answer at all.

        A server that accepts connections but never answers would otherwise
        hold each try for MLflow's timeout times its retries.
        """
        if self.uri.startswith(("http://", "https://")):
            import requests

            try:
                requests.get(self.uri.rstrip("/") + "/health", timeout=PROBE_S)
            except requests.exceptions.SSLError:
                pass  # it answers; MLflow's client has the settings to verify it

    def _mlflow(self):
        if self._client is None:
            self._client = mlflow_run.open_store(self.uri)
        return self._client

    # --- MLflow's system metrics ---

    def _start_monitor(self):
        """MLflow's system-metrics sampler on the run, (re)started once the store answers."""
        if (not self.system_metrics or self._ended or self.spool.pending
                or self.run_id is None or self.run_id.startswith(PENDING)):
            return
        thread = getattr(self._monitor, "_process", None)
        if thread is not None and thread.is_alive():
            return
        self._stop_monitor()
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=True,
                                                 tracking_uri=self.uri)
            self._monitor.start()
        except Exception as exc:  # system metrics are a nicety: never stop the job for them
            _say(f"system metrics not started: {mlflow_run.redact(exc)}")
            self._monitor = None

    def _stop_monitor(self):
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None


def _dataset_input(fields):
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = Dataset(fields["name"], fields["digest"], fields["source_type"], fields["source"],
                      fields.get("schema"), fields.get("profile"))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, fields["context"])])


def kept_spools(path):
    """The spool files ``path`` names: itself (a spool file), a job folder's, or, for a
    folder without one of its own (``results``, say), every spool below it."""
    path = Path(path)
    if not path.exists():
        raise MosbenchError(f"{path}: no such folder or spool file")
    if not path.is_dir():
        return [path]
    if (path / SPOOL).exists():
        return [path / SPOOL]
    return sorted(path.rglob(SPOOL))


def replay(paths, uri=None):
    """Deliver the calls kept in each of ``paths`` (see :func:`kept_spools`) to ``uri``.

    ``uri`` defaults to ``MLFLOW_TRACKING_URI``; without either it raises
    MosbenchError, naming the store the spools recorded as a hint only: a spool
    could have been edited, so where its calls go is never read from it (nor
    which files it uploads: see :meth:`Tracker._deliver`). Folders may come in
    any order: a folder whose run another one creates waits for it. Raises
    MosbenchError if anything is left undelivered.
    """
    found = []
    for given in map(Path, paths):
        spools = kept_spools(given)
        if not spools:
            print(f"{given}: nothing kept")
        found += [(given if spool in (given, given / SPOOL) else spool.parent, spool)
                  for spool in spools]
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        recorded = sorted({mlflow_run.safe_uri(r["uri"]) for _, spool in found
                           for r in Spool(spool).read()[2] if isinstance(r.get("uri"), str)})
        hint = f" (the jobs logged to {', '.join(recorded)})" if recorded else ""
        raise MosbenchError("replay-tracking: no tracking store to deliver to; name it with "
                            f"--tracking-uri URI or MLFLOW_TRACKING_URI{hint}")
    trackers = [(path, Tracker(spool.parent, uri=uri, spool=spool)) for path, spool in found]
    progress = True
    while progress:
        progress = False
        for _, tracker in trackers:
            before = tracker.spool.pending
            if before and (tracker.flush(force=True) or tracker.spool.pending < before):
                progress = True
    left = []
    for path, tracker in trackers:
        if tracker.spool.pending:
            left.append(f"{path}: {tracker.spool.pending} call(s) still kept "
                        f"({mlflow_run.redact(tracker.last_error)})")
        else:
            outside = (f", {tracker.outside} call(s) naming a file outside the job folder "
                       "refused" if tracker.outside else "")
            print(f"{path}: delivered to {mlflow_run.safe_uri(tracker.uri)}; {tracker.skipped} "
                  f"metric value(s) already there, {tracker.rejected} call(s) refused by the "
                  f"store{outside}")
    if left:
        raise MosbenchError("; ".join(left))


def log_aggregate(experiment, files, folder):
    """A run named "aggregate" holding the aggregate's tables and plots as artefacts.

    It goes to :func:`mlflow_run.aggregate_experiment` (``<experiment>-aggregate``),
    so the training runs' experiment holds training runs only. Each aggregation
    makes a new run, so earlier reports stay browsable. The calls go through a
    :class:`Tracker` whose spool is in ``folder``: with the store away the
    aggregate still succeeds, and
    ``mosbench replay-tracking FOLDER`` delivers the run later. Returns whether
    everything was delivered.
    """
    tracker = Tracker(folder, mlflow_run.aggregate_experiment(experiment))
    tracker.create_run("aggregate", tags={"mosbench.stage": "aggregate",
                                          "git_commit": mlflow_run.git_commit()})
    for path in files:
        tracker.log_artifact(path)
    return tracker.end_run("FINISHED")
