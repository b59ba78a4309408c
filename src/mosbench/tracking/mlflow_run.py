"""MLflow in one place: where runs go, how they are named, what they carry.

The tracking URI comes from ``MLFLOW_TRACKING_URI`` and otherwise is the
embedded SQLite store ``results/mlflow.db`` with artefacts beside it in
``results/mlartifacts``. It is never a Snakemake param, so moving to a
tracking server reruns nothing. Jobs make their calls through
:class:`mosbench.tracking.tracker.Tracker`, which keeps what the store cannot
take yet.

Credentials never go where a URI is written or printed: :func:`safe_uri` and
:func:`redact` are applied to everything that is, and :func:`store_uri` hands
a server's ``user:password@`` to MLflow through its credential variables, so
that MLflow's own messages (which quote the request URL) cannot show it.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mosbench.measurement.provenance import as_tags, git_state
from mosbench.tracking import shared_store

DEFAULT_STORE = Path("results") / "mlflow.db"
# The experiment's kind as MLflow 3 records it: model training, not GenAI ("genai_development").
# MLflow's UIs that read the tag open such an experiment on its runs; 3.17's follows its
# sidebar switch instead (README: Tracking).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# numbers of metrics.json not logged as its metrics: params, and training's figure
# (evaluate re-scores the same weights; the run keeps one value per name)
NOT_EVALUATE_METRICS = ("seed", "gpus", "best_valid_loss")


def tracking_uri():
    """``MLFLOW_TRACKING_URI`` if set, else the local SQLite store under results/."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{DEFAULT_STORE.resolve()}"


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")  # to the netloc's last @


def safe_uri(uri):
    """``uri`` fit to write or print: ``user:password@`` and the query's values masked.

    ``http://alice:pw@host:5000/?token=t`` -> ``http://***@host:5000/?token=***``.
    A query value may be a token and a name alone says too little to tell, so every
    value is masked.
    """
    head, mark, query = str(uri).partition("?")
    return _USERINFO.sub(r"\1***@", head) + mark + re.sub(r"=[^&#]*", "=***", query)


def redact(text):
    """``text`` (a message, an exception's) with every URL in it made :func:`safe_uri`."""
    return _URL.sub(lambda match: safe_uri(match.group()), str(text))


def store_uri(uri):
    """``uri`` as MLflow is to get it: a server's ``user:password@`` moved to the environment.

    MLflow takes a server's credentials from ``MLFLOW_TRACKING_USERNAME`` and
    ``MLFLOW_TRACKING_PASSWORD`` (set here, for this process and its children);
    left in the URI they would be in the message of every failed request. A
    database URL (``postgresql://user:pw@...``) keeps them: its driver reads them
    there and masks them in its messages.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return uri.replace(parts.netloc, parts.netloc.rpartition("@")[2], 1)


def _artifact_location(uri):
    """For a local SQLite store keep artefacts next to the database, not in the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides where artefacts go


def git_commit():
    """The commit of the code that ran, marked ``-dirty`` with uncommitted changes."""
    commit, dirty = git_state()
    return "unknown" if commit is None else commit + ("-dirty" if dirty else "")


def flatten(params, prefix=""):
    """Nested dict -> ``{"a.b": value}``, the shape MLflow params take."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def connect(experiment):
    """Point MLflow at the tracking store and select ``experiment``, creating it if needed."""
    import mlflow

    uri = store_uri(tracking_uri())
    mlflow.set_tracking_uri(uri)
    experiment_id(open_store(uri), experiment, uri)
    mlflow.set_experiment(experiment)
    return mlflow


def open_store(uri):
    """An ``MlflowClient`` on ``uri``.

    Opening a new SQLite store creates its tables (MLflow's schema
    migrations): jobs do that one at a time, and the one that did it notes the
    database file's inode in the lock file. A store so noted is opened without
    waiting: opening a complete store only reads it, and it costs each job a
    second or two (MLflow checks the schema version), which would otherwise
    queue jobs that start together. An SQLite store on a network file system
    is warned about, once (:mod:`mosbench.tracking.shared_store`).
    """
    from mlflow import MlflowClient

    shared_store.warn_if_on_network(uri)
    if _complete(uri):
        return MlflowClient(uri)
    with store_lock(uri) as lock:
        client = MlflowClient(uri)
        if lock is not None:
            lock.truncate(0)
            lock.write(str(_sqlite_path(uri).stat().st_ino))
            lock.flush()
    return client


def experiment_id(client, experiment, uri):
    """The id of ``experiment`` in ``client``'s store, creating it if needed."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return _of_kind(client, found)
    with store_lock(uri):  # jobs that start together: one creates it, the others find it
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return _of_kind(client, found)
        try:
            return client.create_experiment(experiment,
                                            artifact_location=_artifact_location(uri),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as exc:
            # On a tracking server another job may have created it just now.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return _of_kind(client, client.get_experiment_by_name(experiment))


def _of_kind(client, experiment):
    """The experiment's id, after marking it a model-training experiment if it is not marked.

    An experiment created before mosbench set the kind gets it here, once; one
    a user marked otherwise keeps the user's choice.
    """
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _sqlite_path(uri):
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _complete(uri):
    """Whether ``uri`` is a server, or an SQLite store that a job has fully created."""
    db = _sqlite_path(uri)
    if db is None:
        return True
    try:
        return db.with_name(db.name + ".lock").read_text() == str(db.stat().st_ino)
    except (FileNotFoundError, ValueError):
        return False


@contextlib.contextmanager
def store_lock(uri):
    """Serialise creating a local SQLite store and its experiments between jobs.

    Two jobs that start together would otherwise both run MLflow's schema
    migrations on a new database, and one of them fails. Yields the lock file
    (None for a tracking server, which serialises for us).
    """
    db = _sqlite_path(uri)
    if db is None:
        yield None
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_tags(dataset, model, seed, gpus, framework, provenance):
    """The run's identity and what it ran on (``provenance``: see measurement.provenance)."""
    tags = {"dataset": dataset, "model": model, "seed": str(seed), "gpus": str(gpus),
            "framework": framework}
    tags.update(as_tags(provenance))
    return tags


def run_name(dataset, model, seed, gpus, framework):
    return f"{framework}-{dataset}-{model}-seed{seed}-gpus{gpus}"


def train_params(dataset, model, seed, gpus, framework, *, n_params, vocab_size, train_tokens,
                 hparams, engine_options=None):
    """A training run's params: the job, the model's size, the data, the training preset and
    the engine's own settings (``engine.<key>``, config key ``engines.<framework>``)."""
    return flatten({"framework": framework, "dataset": dataset, "model": model, "seed": seed,
                    "gpus": gpus, "n_params": n_params, "vocab_size": vocab_size,
                    "train_tokens": train_tokens, **hparams,
                    **({"engine": engine_options} if engine_options else {})})


# Metric names: an MLflow metric is named by where its value sits in the job's JSON file,
# so that the MLflow UI and train.json / metrics.json say the same thing:
#   history/<key>       a train.json epoch record's number, at step = the epoch
#   measurements/<key>  train.json's job figures
#   <key>               train.json's best_epoch, best_valid_loss, train_time_s, and every
#                       number of metrics.json but seed and gpus (params) and its re-scored
#                       best_valid_loss (the run holds training's: the same weights' loss)


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def epoch_metrics(record):
    """The MLflow metrics of one epoch record of train.json: ``history/<key>``."""
    return {f"history/{key}": value for key, value in record.items()
            if key != "epoch" and _is_number(value)}


def train_metrics(summary):
    """The MLflow metrics of train.json, besides its epochs (see :func:`epoch_metrics`)."""
    metrics = {key: summary[key] for key in ("best_epoch", "best_valid_loss", "train_time_s")}
    metrics.update((f"measurements/{key}", value)
                   for key, value in summary["measurements"].items() if _is_number(value))
    return metrics


def evaluate_metrics(metrics):
    """The MLflow metrics of metrics.json: its numbers, under their keys (see above)."""
    return {key: value for key, value in metrics.items()
            if key not in NOT_EVALUATE_METRICS and _is_number(value)}


def dataset_input(path, name, context, tokens):
    """A tokenised Parquet split as an MLflow dataset input (``Tracker.log_inputs``).

    ``name`` is ``<dataset>/<split>``; the digest is the first 16 hex digits
    of the file's SHA-256, so a run names the exact data version it used;
    ``context`` (training, validation, test) is what the run used it for.
    """
    from mlflow.types import ColSpec, DataType, Schema

    path = Path(path).resolve()
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    schema = Schema([ColSpec(DataType.integer, "id")])
    return {"name": name, "digest": sha.hexdigest()[:16], "source_type": "local",
            "source": json.dumps({"uri": str(path)}),
            "schema": json.dumps({"mlflow_colspec": schema.to_dict()}),
            "profile": json.dumps({"num_tokens": int(tokens)}), "context": context}


def training_inputs(data_dir, dataset, tokens):
    """A training run's dataset inputs: its train and validation splits (``tokens``: per split)."""
    return [dataset_input(Path(data_dir) / f"{split}.parquet", f"{dataset}/{split}", context,
                          tokens[split])
            for split, context in (("train", "training"), ("valid", "validation"))]


def aggregate_experiment(experiment):
    """Where the aggregate's runs go: an experiment of their own beside the training runs'."""
    return f"{experiment}-aggregate"
