"""Shared fixtures: a tiny tokenised synthetic corpus and an isolated MLflow store."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml

from mosbench.code_hash import PACKAGE_ROOT, ROOT_ENV
from mosbench.config import validate_config
from mosbench.cpu_features import bfloat16_support
from mosbench.data.synthetic import generate_synthetic
from mosbench.data.tokenise import tokenise

# JAX in the test session, set before anything starts XLA and inherited by every job the
# tests start: XLA's CPU compiler at its quickest (a tiny model's training step compiles in
# about 1.5 s instead of 6 s, and runs about 2x slower, which these tests do not time), and
# one persistent compilation cache for the session's processes. Jobs outside the tests
# compile as XLA's defaults say, each job afresh: a compile is part of a framework's cost.
JAX_TEST_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{JAX_TEST_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
_JAX_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _JAX_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="mosbench-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TINY_CONFIG = TESTS / "config" / "tiny.yaml"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cpu_bfloat16: computes in bfloat16 on the CPU (matmul_precision: "
        "mixed_bfloat16); skipped where the CPU has no bfloat16 instructions")


def pytest_unconfigure(config):
    if _JAX_CACHE:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    # `make test` runs on two pytest-xdist workers (--dist loadgroup): the tests that read
    # the one tiny workflow run go to one worker, which then runs the workflow once.
    for item in items:
        if "tiny_workflow" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("tiny_workflow"))
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


# A tiny TensorFlow AWD-LSTM-MoS (vocabulary 50, three layers) for tests that train a few
# real steps through the engine's mask seams. Weight drop at the benchmark's rate 0.5, where
# x * (keep / (1 - r)) and TensorFlow's dropout, where(keep, x / (1 - r), 0), are the same bits.
TINY_TF_HP = dict(emsize=8, nhid=12, nhidlast=10, nlayers=3, n_experts=3, init_range=0.1,
                  alpha=2.0, beta=1.0, wdecay=0.0, clip=0.25, lr=1.0, small_batch_size=2,
                  dropouti=0.15, dropouth=0.25, dropout=0.35, dropoute=0.3, dropoutl=0.55,
                  wdrop=0.5)


def tiny_tensorflow_engine(seed, hp=None, batch=4):
    """A fresh TensorFlow engine of ``seed`` on :data:`TINY_TF_HP` (updated by ``hp``), its
    training prepared for ``batch`` rows (two chunks of ``small_batch_size``)."""
    from mosbench.engines import load_engine

    hp = {**TINY_TF_HP, **(hp or {})}
    engine = load_engine("tensorflow", seed=seed)
    engine.build("awd-lstm-mos", 50, hp)
    engine.prepare_training(hp, batch)
    return engine


SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def run_snakemake(workdir, *args, configfile=TINY_CONFIG, env=None, cwd=REPO):
    """The real `snakemake` on the repository's Snakefile, in ``workdir``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ROOT_ENV)}
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    return subprocess.run(cmd, env={**clean, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store):
    """`make mlflow-server` on a free loopback port; yields its URI, stops it on exit."""
    port = free_port()
    # -o: never reinstall .venv from inside a test
    cmd = ["make", "-o", ".venv/.installed", "mlflow-server", f"PORT={port}",
           f"MLFLOW_DIR={store}", "MLFLOW_WORKERS=1"]
    log = open(store.parent / "mlflow-server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (store.parent / "mlflow-server.log").read_text()
                assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make, mlflow and its workers: one group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory):
    """The one real run of the tiny workflow that the end-to-end and rerun tests share.

    Every stage through the real `snakemake`, logging to a real `make mlflow-server` on
    loopback (the cluster recipe's store), hashing a copy of the package
    (``MOSBENCH_CODE_ROOT``) that the rerun tests edit, never the sources. The server
    stays up for the session: tests/test_workflow.py reads the runs from it.
    """
    root = tmp_path_factory.mktemp("workflow")
    code = root / "mosbench"
    shutil.copytree(PACKAGE_ROOT, code, ignore=shutil.ignore_patterns("__pycache__"))
    work = root / "work"
    with mlflow_server(root / "tracking") as uri:
        # Jobs that start together race to create a missing experiment on a server
        # (mlflow_run.connect locks only for SQLite); create it first, as the README says.
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment("mosbench-test")
        mlflow.set_tracking_uri(None)
        env = {ROOT_ENV: str(code), "MLFLOW_TRACKING_URI": uri,
               "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",  # the tiny jobs last seconds
               "MOSBENCH_PROGRESS_STEPS": "10", "MOSBENCH_PROGRESS_S": "0"}  # lines in logs
        done = run_snakemake(work, "--cores", "2", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        yield SimpleNamespace(root=root, code=code, work=work, uri=uri,
                              output=done.stdout + done.stderr)
