"""How training runs are named and tagged in MLflow: the framework first, every version."""

from mosbench.tracking import mlflow_run


def test_a_run_is_named_by_framework_then_dataset_model_seed_gpus():
    assert mlflow_run.run_name("ptb", "awd-lstm-mos", 3, 8, "pytorch") == (
        "pytorch-ptb-awd-lstm-mos-seed3-gpus8")
    assert mlflow_run.run_name(dataset="tiny", model="lstm", seed=1, gpus=0,
                               framework="tensorflow") == "tensorflow-tiny-lstm-seed1-gpus0"


def test_tags_carry_the_identity_and_every_known_version():
    versions = {"framework": "pytorch", "framework_version": "2.13.0+cpu", "cuda_version": None,
                "cudnn_version": None}
    tags = mlflow_run.run_tags("tiny", "lstm", 1, 0, "pytorch", versions)
    assert {k: tags[k] for k in ("dataset", "model", "seed", "gpus", "framework",
                                 "framework_version")} == {
        "dataset": "tiny", "model": "lstm", "seed": "1", "gpus": "0", "framework": "pytorch",
        "framework_version": "2.13.0+cpu"}
    assert "cuda_version" not in tags and "cudnn_version" not in tags  # unknown: no tag
    assert tags["git_commit"]
    assert all(isinstance(value, str) for value in tags.values())  # MLflow tags are strings

    gpu = mlflow_run.run_tags("ptb", "lstm", 1, 2, "tensorflow",
                              {"framework": "tensorflow", "framework_version": "2.21.0",
                               "keras_version": "3.15.1", "cuda_version": "12.5.1"})
    assert (gpu["framework"], gpu["keras_version"], gpu["cuda_version"]) == (
        "tensorflow", "3.15.1", "12.5.1")
