"""How training runs look in MLflow: names, provenance tags, metric names, data, the kind."""

import hashlib
import json

from mosbench.measurement.provenance import provenance
from mosbench.tracking import mlflow_run
from mosbench.tracking.tracker import Tracker


def test_a_run_is_named_by_framework_then_dataset_model_seed_gpus():
    assert mlflow_run.run_name("ptb", "awd-lstm-mos", 3, 8, "pytorch") == (
        "pytorch-ptb-awd-lstm-mos-seed3-gpus8")
    assert mlflow_run.run_name(dataset="tiny", model="lstm", seed=1, gpus=0,
                               framework="tensorflow") == "tensorflow-tiny-lstm-seed1-gpus0"


def test_tags_carry_the_identity_and_every_known_version():
    ran_on = provenance({"framework": "pytorch", "framework_version": "2.13.0+cpu",
                         "cuda_version": None, "cudnn_version": None}, gpus=0)
    tags = mlflow_run.run_tags("tiny", "lstm", 1, 0, "pytorch", ran_on)
    assert {k: tags[k] for k in ("dataset", "model", "seed", "gpus", "framework",
                                 "framework_version", "gpu_count")} == {
        "dataset": "tiny", "model": "lstm", "seed": "1", "gpus": "0", "framework": "pytorch",
        "framework_version": "2.13.0+cpu", "gpu_count": "0"}
    assert "cuda_version" not in tags and "cudnn_version" not in tags  # unknown: no tag
    assert len(tags["git_commit"]) == 40 and tags["git_dirty"] in ("true", "false")
    assert tags["cpu_model"] == ran_on["cpu_model"] and tags["hostname"] == ran_on["hostname"]
    assert all(isinstance(value, str) for value in tags.values())  # MLflow tags are strings

    gpu = mlflow_run.run_tags("ptb", "lstm", 1, 2, "tensorflow",
                              {"framework": "tensorflow", "framework_version": "2.21.0",
                               "libraries": "keras 3.15.1", "cuda_version": "12.5.1",
                               "gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 2})
    assert (gpu["framework"], gpu["libraries"], gpu["cuda_version"], gpu["gpu_model"]) == (
        "tensorflow", "keras 3.15.1", "12.5.1", "NVIDIA H100 80GB HBM3")


def test_metric_names_are_the_json_keys_where_the_values_sit():
    record = {"epoch": 3, "phase": "train", "train_loss": 4.1, "valid_loss": 4.3,
              "valid_ppl": 73.7, "epoch_time_s": 12.0, "tokens_per_s": 900.0, "lr": 30,
              "averaging": False, "step_time_median_s": None}
    assert mlflow_run.epoch_metrics(record) == {
        "history/train_loss": 4.1, "history/valid_loss": 4.3, "history/valid_ppl": 73.7,
        "history/epoch_time_s": 12.0, "history/tokens_per_s": 900.0, "history/lr": 30}
    summary = {"seed": 1, "gpus": 0, "n_params": 10, "best_epoch": 2, "best_valid_loss": 4.2,
               "train_time_s": 30.0, "history": [record],
               "measurements": {"epoch_time_s": 10.0, "gpu_util_mean_pct": None}}
    assert mlflow_run.train_metrics(summary) == {
        "best_epoch": 2, "best_valid_loss": 4.2, "train_time_s": 30.0,
        "measurements/epoch_time_s": 10.0}
    metrics = {"framework": "tensorflow", "seed": 1, "gpus": 0, "run_id": "abc",
               "best_valid_loss": 4.2, "test_ppl": 60.5, "logprob_rank": 18, "optimal_ppl": None,
               "provenance": {"gpu_count": 0}}
    assert mlflow_run.evaluate_metrics(metrics) == {"test_ppl": 60.5, "logprob_rank": 18}


def test_the_experiment_is_marked_a_model_training_experiment(mlflow_store):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    made = mlflow_run.experiment_id(client, "fresh", mlflow_store)
    assert client.get_experiment(made).tags[mlflow_run.EXPERIMENT_KIND_TAG] == (
        "custom_model_development")
    # an experiment made before the kind was set gets it; a user's own choice stays
    older = client.create_experiment("older")
    assert mlflow_run.experiment_id(client, "older", mlflow_store) == older
    assert client.get_experiment(older).tags[mlflow_run.EXPERIMENT_KIND_TAG] == (
        "custom_model_development")
    chosen = client.create_experiment("chosen",
                                      tags={mlflow_run.EXPERIMENT_KIND_TAG: "genai_development"})
    mlflow_run.experiment_id(client, "chosen", mlflow_store)
    assert client.get_experiment(chosen).tags[mlflow_run.EXPERIMENT_KIND_TAG] == (
        "genai_development")


def test_a_parquet_split_is_logged_once_as_a_dataset_input(tiny_data, mlflow_store, tmp_path):
    from mlflow import MlflowClient

    from mosbench.data.tokenise import read_metadata

    tokens = read_metadata(tiny_data / "train.parquet")["tokens"]["train"]
    fields = mlflow_run.dataset_input(tiny_data / "train.parquet", "tiny/train", "training",
                                      tokens)
    digest = hashlib.sha256((tiny_data / "train.parquet").read_bytes()).hexdigest()[:16]
    assert (fields["name"], fields["digest"]) == ("tiny/train", digest)
    tracker = Tracker(tmp_path, "datasets")
    run_id = tracker.create_run("run", tags={})
    tracker.log_inputs([fields])
    tracker.log_inputs([fields])  # a replay, or a resumed job: still one input
    tracker.end_run()
    inputs = MlflowClient(mlflow_store).get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("tiny/train", digest, "local")
    assert json.loads(dataset.source)["uri"] == str((tiny_data / "train.parquet").resolve())
    assert json.loads(dataset.profile) == {"num_tokens": tokens}
    assert {(t.key, t.value) for t in inputs[0].tags} == {("mlflow.data.context", "training")}
