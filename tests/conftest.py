"""Shared fixtures: a tiny tokenised synthetic corpus and an isolated MLflow store."""

from pathlib import Path

import mlflow
import pytest
import yaml

from mosbench.config import validate_config
from mosbench.cpu_features import bfloat16_support
from mosbench.data.synthetic import generate_synthetic
from mosbench.data.tokenise import tokenise

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TINY_CONFIG = TESTS / "config" / "tiny.yaml"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cpu_bfloat16: computes in bfloat16 on the CPU (matmul_precision: "
        "mixed_bfloat16); skipped where the CPU has no bfloat16 instructions")


def pytest_collection_modifyitems(config, items):
    # Such a CPU crashes inside the framework (oneDNN's LSTM) and a job refuses it
    # (mosbench.cpu_features): skip with the probe's reason rather than fail.
    marked = [item for item in items if item.get_closest_marker("cpu_bfloat16")]
    if not marked:
        return
    support = bfloat16_support()
    if support.supported is False:
        skip = pytest.mark.skip(reason=f"mixed_bfloat16 needs bfloat16 on this CPU, and "
                                       f"{support.detail}")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture
def tiny_config():
    """The tiny test config, validated and with defaults filled in."""
    return validate_config(yaml.safe_load(TINY_CONFIG.read_text()))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tokenised synthetic corpus (shared, read-only) from tests/config/tiny.yaml."""
    config = validate_config(yaml.safe_load(TINY_CONFIG.read_text()))
    root = tmp_path_factory.mktemp("tiny")
    generate_synthetic("tiny", config["sources"]["tiny"], root / "raw")
    tokenise(root / "raw", root / "data")
    return root / "data"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store for one test, through MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # the test's own queries too, whatever an earlier test set
    yield uri
    mlflow.set_tracking_uri(None)
