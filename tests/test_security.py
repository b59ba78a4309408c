"""Nothing secret leaks into tracking or results, and the MLflow servers stay on loopback.

A tiny real training and evaluation run with credentials in the environment
(as a cluster job has them: sbatch passes the environment on); then every
MLflow param, tag, metric name and artefact, the store's database file, every
results file and everything the jobs printed is searched for the secrets.
"""

import re
from pathlib import Path

import mlflow
import pytest

from conftest import REPO
from mosbench.evaluation.evaluate import evaluate
from mosbench.training.train import train

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "sekret-aws-5d1f7c3e9b",
    "MLFLOW_TRACKING_PASSWORD": "sekret-mlflow-8a2e6b4c0d",
    "MLFLOW_TRACKING_TOKEN": "sekret-token-3c9a1e7f5b",
    "HF_TOKEN": "sekret-hf-7b3d9f1a2c",
}


def leaks(blob, where):
    """The secrets found in ``blob`` (text or bytes), as readable strings."""
    if isinstance(blob, bytes):
        blob = blob.decode("utf-8", errors="replace")
    return [f"{name} in {where}" for name, value in SECRETS.items() if value in blob]


def files_leaking(folder):
    folder = Path(folder)
    assert folder.is_dir() and any(p.is_file() for p in folder.rglob("*")), folder
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            found += leaks(path.read_bytes(), path)
    return found


def test_no_secret_reaches_mlflow_or_the_results(tiny_config, tiny_data, tmp_path, monkeypatch,
                                                 mlflow_store, capfd):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "mosbench-user")
    hparams = dict(tiny_config["presets"]["tiny"]["lstm"], epochs=1)
    train_dir, eval_dir = tmp_path / "train", tmp_path / "evaluate"
    summary = train(tiny_data, train_dir, dataset="tiny", model_name="lstm", seed=5, gpus=0,
                    framework="pytorch", hparams=hparams, experiment="security",
                    config_snapshot=tiny_config, prices=tiny_config["cost"])
    evaluate(tiny_data, train_dir, eval_dir / "metrics.json", model_name="lstm",
             hparams=hparams, experiment="security", framework="pytorch")

    found = []
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("security")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [summary["run_id"]]
    for run in runs:
        data = run.data
        assert data.params and data.tags and data.metrics  # there is something to search
        found += leaks(repr(sorted(data.params.items())), "params")
        found += leaks(repr(sorted(data.tags.items())), "tags")
        found += leaks(repr(sorted(data.metrics)), "metric names")
        found += leaks(repr(run.info), "run info")
    found += leaks(repr(experiment), "the experiment")

    # The artefacts (config.yaml, train.json, metrics.json) and the store itself.
    store = Path(mlflow_store.removeprefix("sqlite:///"))
    artefacts = tmp_path / "mlartifacts"
    assert any(artefacts.rglob("config.yaml")) and any(artefacts.rglob("metrics.json"))
    found += files_leaking(artefacts)
    database = store.read_bytes()
    assert b"tiny-lstm-seed5-gpus0" in database  # the search does see what runs hold
    found += leaks(database, store)
    # Results: train.json, the weights, metrics.json.
    found += files_leaking(train_dir) + files_leaking(eval_dir)
    # Everything the jobs printed (file-descriptor level, so TensorFlow's C++ logging too).
    out, err = capfd.readouterr()
    found += leaks(out + err, "the jobs' output")
    assert found == []


# --- the MLflow UI and tracking server bind to loopback unless asked otherwise ----------

def _makefile():
    return (REPO / "Makefile").read_text(encoding="utf-8")


def _variable(text, name):
    match = re.search(rf"^{name}\s*\?=[ \t]*(.*?)[ \t]*$", text, flags=re.MULTILINE)
    assert match, f"Makefile sets no default for {name}"
    return match.group(1)


def _recipe(text, target):
    """The recipe lines of ``target``, continuation lines joined."""
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n?)+)", text,
                      flags=re.MULTILINE)
    assert match, f"Makefile has no target {target}"
    return re.sub(r"\\\n\s*", " ", match.group(1))


def test_servers_bind_to_loopback_by_default():
    text = _makefile()
    assert _variable(text, "HOST") == "127.0.0.1"
    assert _variable(text, "ALLOWED_HOSTS") == ""  # MLflow's own Host-header check applies
    for target, command in (("ui", "mlflow ui"), ("mlflow-server", "mlflow server")):
        recipe = _recipe(text, target)
        assert command in recipe, recipe
        assert re.findall(r"--host\s+(\S+)", recipe) == ["$(HOST)"], recipe
        assert "0.0.0.0" not in recipe and "--disable-security-middleware" not in recipe
    # No recipe anywhere binds to every interface by itself.
    recipes = "\n".join(line for line in text.splitlines() if line.startswith("\t"))
    assert "0.0.0.0" not in recipes


@pytest.mark.parametrize("target", ["ui", "mlflow-server"])
def test_recipe_parser_sees_a_wildcard_bind(target):
    """The check above can fail: the same parsing flags a recipe bound to 0.0.0.0."""
    text = _makefile().replace("--host $(HOST)", "--host 0.0.0.0")
    assert re.findall(r"--host\s+(\S+)", _recipe(text, target)) == ["0.0.0.0"]
