"""Bad input, in one table: a clear message, a non-zero exit, no output that looks complete.

Every case goes through the real `mosbench` command (its ``main``, in this
process, or the installed script), the real `snakemake --dry-run`, or the
real library function, and checks three things: the exit status is non-zero
(or :class:`MosbenchError` is raised), the message names the input (file,
key or value) and what was expected, and nothing is left behind that a later
stage could take for a finished output.

Covered elsewhere and counted here, since they need a real training run (a
NaN loss is not bad input but an outcome of the experiment: the job ends
marked "diverged", tests/test_divergence.py):

* a checkpoint of other settings met by `train`: train.py discards it
  (``checkpoint.same_job``) and starts afresh; `evaluate` refusing weights of
  another preset: tests/test_training.py::test_checkpoint_of_another_model_is_refused.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from mosbench.cli import main
from mosbench.config import check_gpus, validate_config
from mosbench.data.batching import batchify
from mosbench.data.synthetic import generate_synthetic
from mosbench.data.tokenise import META_KEY, load_split
from mosbench.engines import FRAMEWORKS, load_engine
from mosbench.errors import MosbenchError

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
MOSBENCH = Path(sys.executable).with_name("mosbench")
SPLITS = ("train", "valid", "test")


def tiny():
    return yaml.safe_load(TINY_CONFIG.read_text())


def run_cli(tmp_path, monkeypatch, capsys, argv, config=None):
    """``mosbench [--config FILE] ARGV`` in ``tmp_path``; returns (exit status, stderr)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config if config is not None else tiny()))
    capsys.readouterr()
    try:
        status = main(["--config", str(path), *argv])
    except SystemExit as exc:  # argparse rejects bad arguments itself, with status 2
        status = exc.code
    return status, capsys.readouterr().err


def assert_one_clear_line(status, err, *expected):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(("mosbench: error: ", "mosbench train: error: ")), err
    if lines[-1].startswith("mosbench: error: "):
        assert len(lines) == 1, err  # one line, no traceback
    for part in expected:
        assert part in lines[-1], (part, err)


def files_under(folder):
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


# --- 1. the config: checked before anything runs, so nothing at all is written ---------

def _set(path, value):
    def edit(config):
        *parents, last = path
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return edit


def _drop(path):
    def edit(config):
        *parents, last = path
        node = config
        for key in parents:
            node = node[key]
        del node[last]
    return edit


CONFIG_CASES = {
    "unknown model": (_set(["run", "models"], ["transformer"]),
                      ["config key 'run.models[0]'", "'transformer' is not one of ['lstm',"]),
    "unknown framework": (_set(["run", "frameworks"], ["tensorflow", "mxnet"]),
                          ["config key 'run.frameworks[1]'",
                           "'mxnet' is not one of ['tensorflow', 'pytorch', 'jax']"]),
    "unknown dataset": (_set(["run", "datasets"], ["ptb"]),
                        ["config key 'run.datasets[0]'", "'ptb' is not a dataset",
                         "allowed: ['tiny']"]),
    "negative seed": (_set(["run", "seeds"], [-1]),
                      ["config key 'run.seeds[0]'", "-1 is less than the minimum of 0"]),
    "non-integer seed": (_set(["run", "seeds"], [1.5]),
                         ["config key 'run.seeds[0]'", "1.5 is not of type 'integer'"]),
    "missing required key": (_drop(["run", "seeds"]),
                             ["config key 'run'", "'seeds' is a required property"]),
    "wrong type": (_set(["threads"], "two"),
                   ["config key 'threads'", "'two' is not of type 'integer'"]),
    "gpus above the partition": (
        lambda c: (c["run"].update(gpus=[0, 4]), c.setdefault("cluster", {}).update(max_gpus=2)),
        ["config key 'run.gpus[1]'", "4 GPUs is more than cluster.max_gpus = 2",
         "expected at most 2"]),
    "max_gpus of a wrong type": (_set(["cluster", "max_gpus"], "eight"),
                                 ["config key 'cluster.max_gpus'",
                                  "'eight' is not of type 'integer', 'null'"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_stops_the_command(case, tmp_path, monkeypatch, capsys):
    edit, expected = CONFIG_CASES[case]
    config = tiny()
    edit(config)
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["download", "tiny"], config)
    assert_one_clear_line(status, err, str(tmp_path / "config.yaml"), *expected)
    assert not (tmp_path / "results").exists()


def test_gpus_within_the_partition_pass_and_null_means_unknown():
    config = tiny()
    config["run"]["gpus"] = [0, 2]
    config["cluster"] = {"max_gpus": 2}
    assert validate_config(config)["cluster"]["max_gpus"] == 2
    assert validate_config(tiny())["cluster"]["max_gpus"] is None  # the default: not checked
    check_gpus(validate_config(tiny()), 64)
    with pytest.raises(MosbenchError, match=r"--gpus: 3 GPUs is more than cluster.max_gpus = 2"):
        check_gpus(config, 3)


def test_snakemake_refuses_gpus_above_the_partition_before_planning(tmp_path):
    config = tiny()
    config["run"]["gpus"] = [0, 8]
    config["cluster"] = {"max_gpus": 4}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(bad),
                           "--cores", "1", "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "config key 'run.gpus[1]': 8 GPUs is more than cluster.max_gpus = 4" in out, out
    assert not (tmp_path / "results").exists()


# --- 2. the command line's own arguments ---------------------------------------------

ARGUMENT_CASES = {
    "unknown model": (["train", "tiny", "gru", "--seed", "1"],
                      ["unknown model 'gru'", "presets.tiny.gru",
                       "allowed models: ['lstm', 'awd-lstm', 'awd-lstm-moc', 'awd-lstm-mos']"]),
    "model without a preset": (["evaluate", "tiny", "awd-lstm", "--seed", "1"],
                               ["no preset presets.tiny.awd-lstm",
                                "models with a preset for tiny: ['awd-lstm-mos', 'lstm']"]),
    "unknown dataset (train)": (["train", "nowhere", "lstm", "--seed", "1"],
                                ["unknown dataset 'nowhere'", "datasets with presets: ['tiny']"]),
    "unknown dataset (tokenise)": (["tokenise", "nowhere"],
                                   ["unknown dataset 'nowhere'", "allowed: ['tiny']"]),
    "unknown source": (["download", "nowhere"], ["unknown source 'nowhere'", "allowed: ['tiny']"]),
    "evaluate before train": (["evaluate", "tiny", "lstm", "--seed", "1"],
                              ["results/train/tensorflow/tiny/lstm/seed1-gpus0/train.json is "
                               "missing", "run the train stage for it first"]),
    "unknown framework": (["train", "tiny", "lstm", "--seed", "1", "--framework", "mxnet"],
                          ["argument --framework", "invalid choice: 'mxnet'",
                           "'tensorflow', 'pytorch', 'jax'"]),
    "negative seed": (["train", "tiny", "lstm", "--seed", "-3"],
                      ["argument --seed", "expected a non-negative integer, got -3"]),
    "non-integer seed": (["train", "tiny", "lstm", "--seed", "1.5"],
                         ["argument --seed", "expected a non-negative integer, got '1.5'"]),
}


@pytest.mark.parametrize("case", ARGUMENT_CASES)
def test_bad_argument_stops_the_command(case, tmp_path, monkeypatch, capsys):
    argv, expected = ARGUMENT_CASES[case]
    status, err = run_cli(tmp_path, monkeypatch, capsys, argv)
    assert_one_clear_line(status, err, *expected)
    assert not (tmp_path / "results").exists()


def test_installed_command_rejects_a_non_integer_seed(tmp_path):
    done = subprocess.run([str(MOSBENCH), "--config", str(TINY_CONFIG), "evaluate", "tiny",
                           "lstm", "--seed", "one"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "argument --seed: expected a non-negative integer, got 'one'" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_more_gpus_than_the_machine_has_fails_before_training(tmp_path, monkeypatch, capsys,
                                                              mlflow_store):
    """A real `mosbench train` call: on this CPU machine gpus=1 is one too many."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU")) + 1  # 1 on a CPU machine
    status, err = run_cli(tmp_path, monkeypatch, capsys,
                          ["train", "tiny", "lstm", "--seed", "1", "--gpus", str(gpus)])
    assert_one_clear_line(status, err, f"gpus={gpus} was asked for",
                          f"TensorFlow sees {gpus - 1} GPU(s)", "CUDA",
                          "tensorflow-cuda", "gpus: [0] runs the job on the CPU")
    assert files_under(tmp_path / "results") == []  # no train.json, no weights, no checkpoint
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started


# --- 3. download: bad archives (real archives, read through `mosbench download`) -------

MEMBERS = {split: f"corpus/{split}.txt" for split in SPLITS}
TEXT = {f"corpus/{split}.txt": f" the {split} text \n".encode() * 20 for split in SPLITS}


def write_tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def archive_config(url, archive_sha=None, member_sha=None):
    config = tiny()
    config["sources"]["corpus"] = {
        "kind": "archive", "url": str(url), "sha256": archive_sha,
        "members": {split: {"path": path, "sha256": (member_sha or {}).get(split)}
                    for split, path in MEMBERS.items()}}
    return config


def garbage(tmp):
    path = tmp / "corpus.tgz"
    path.write_bytes(b"<html>captive portal</html>\n")
    return archive_config(path), ["archive results/download/corpus/corpus.tgz is not a tar or "
                                  "zip archive", "fetched again"]


def truncated(tmp):
    whole = write_tgz(tmp / "whole.tgz", TEXT).read_bytes()
    path = tmp / "corpus.tgz"
    path.write_bytes(whole[: len(whole) // 2])
    return archive_config(path), ["corpus.tgz is truncated or corrupt", "fetched again"]


def missing_file(tmp):
    path = tmp / "nowhere" / "corpus.tgz"
    return archive_config(path.as_uri()), [f"could not read {path.as_uri()}",
                                           "copy it to", "sources.corpus.url"]


def archive_checksum(tmp):
    path = write_tgz(tmp / "corpus.tgz", TEXT)
    return archive_config(path, archive_sha="0" * 64), [
        f"has sha256 {_sha(path.read_bytes())}; expected {'0' * 64}", "sources.corpus.sha256"]


def member_checksum(tmp):
    path = write_tgz(tmp / "corpus.tgz", TEXT)
    return archive_config(path, member_sha={"valid": "f" * 64}), [
        "member 'corpus/valid.txt'", f"expected {'f' * 64}",
        "sources.corpus.members.valid.sha256", "the cached archive was deleted"]


def escaping_member(tmp):
    path = write_tgz(tmp / "corpus.tgz", {**TEXT, "corpus/../../evil.txt": b"pwned\n"})
    return archive_config(path), ["member 'corpus/../../evil.txt'", "absolute or escaping path",
                                  "expected only relative paths", "cached archive was deleted"]


def invalid_utf8_member(tmp):
    path = write_tgz(tmp / "corpus.tgz", {**TEXT, "corpus/test.txt": b"ok\n\xff\xfe bad\n"})
    return archive_config(path), ["member 'corpus/test.txt'", "not valid UTF-8",
                                  "offset 3", "expected UTF-8 text"]


@pytest.mark.parametrize("make", [garbage, truncated, missing_file, archive_checksum,
                                  member_checksum, escaping_member, invalid_utf8_member],
                         ids=lambda f: f.__name__)
def test_bad_archive_leaves_no_corpus(make, tmp_path, monkeypatch, capsys):
    config, expected = make(tmp_path)
    # A previous run's corpus: a failed rerun must not leave it looking current.
    raw = tmp_path / "results" / "raw" / "corpus"
    raw.mkdir(parents=True)
    for name in ("train.txt", "valid.txt", "test.txt", "source.json"):
        (raw / name).write_text("{}" if name.endswith("json") else "old text\n")
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["download", "corpus"], config)
    assert_one_clear_line(status, err, *expected)
    assert files_under(raw) == []  # no split file, no source.json, no partial member
    cache = tmp_path / "results" / "download" / "corpus"
    assert files_under(cache) == []  # no bad or partial archive kept for the next run
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "results/evil.txt").exists()


def test_verified_archive_is_kept_when_the_config_s_member_checksum_is_wrong(
        tmp_path, monkeypatch, capsys):
    """The archive matches sources.<name>.sha256, so the config is wrong, not the download."""
    path = write_tgz(tmp_path / "corpus.tgz", TEXT)
    config = archive_config(path, archive_sha=_sha(path.read_bytes()),
                            member_sha={"train": "a" * 64})
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["download", "corpus"], config)
    assert_one_clear_line(status, err, "member 'corpus/train.txt'", f"expected {'a' * 64}",
                          "sources.corpus.members.train.sha256")
    assert "deleted" not in err
    assert files_under(tmp_path / "results" / "raw") == []
    assert files_under(tmp_path / "results" / "download" / "corpus") == ["corpus.tgz"]


# --- 4. tokenise: bad corpora -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    """The tiny synthetic corpus as `mosbench download tiny` writes it (generated once)."""
    raw = tmp_path_factory.mktemp("raw") / "tiny"
    generate_synthetic("tiny", validate_config(tiny())["sources"]["tiny"], raw)
    return raw


@pytest.fixture
def tokenised(tiny_raw, tmp_path, monkeypatch, capsys):
    """A working folder with the tiny corpus downloaded and tokenised once (a previous run)."""
    raw = tmp_path / "results" / "raw" / "tiny"
    shutil.copytree(tiny_raw, raw)
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["tokenise", "tiny"])
    assert status == 0, err
    data = tmp_path / "results" / "data" / "tiny"
    assert files_under(data) == ["test.parquet", "train.parquet", "valid.parquet",
                                 "vocab.parquet"]
    return raw, data


CORPUS_CASES = {
    "empty split": (lambda raw: (raw / "valid.txt").write_text("\n  \n\n"),
                    ["valid.txt: the valid split has no words", "expected a non-empty text"]),
    "invalid UTF-8": (lambda raw: (raw / "train.txt").write_bytes(b"w0001 w0002\nw0003 \xc3\x28\n"),
                      ["train.txt: invalid UTF-8 at byte 18", "corpora must be UTF-8 text"]),
    "corpus not downloaded": (lambda raw: (raw / "source.json").unlink(),
                              ["source.json is missing", "run the download stage first"]),
    "split file missing": (lambda raw: (raw / "test.txt").unlink(),
                           ["test.txt: cannot read it", "expected the corpus text"]),
}


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_bad_corpus_leaves_no_parquet(case, tokenised, tmp_path, monkeypatch, capsys):
    raw, data = tokenised
    damage, expected = CORPUS_CASES[case]
    damage(raw)
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["tokenise", "tiny"])
    assert_one_clear_line(status, err, "results/raw/tiny", *expected)
    assert files_under(data) == []  # neither new nor the previous run's Parquet files


def _rewrite_metadata(path, **changes):
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps({**meta, **changes})}),
                   path)


def test_parquet_of_an_older_format_is_refused(tokenised, tmp_path, monkeypatch, capsys):
    _, data = tokenised
    for name in ("train.parquet", "vocab.parquet"):
        _rewrite_metadata(data / name, format_version=0)
    with pytest.raises(MosbenchError) as err:
        load_split(data, "train")
    message = str(err.value)
    assert str(data / "train.parquet") in message
    assert "written in format 0, this mosbench reads format 1" in message
    assert "re-run the tokenise stage (mosbench tokenise <dataset>)" in message
    # The command that reads it (`params` reads the vocabulary's metadata) stops the same way.
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["params", "tiny", "lstm"])
    assert_one_clear_line(status, err, "vocab.parquet", "format 0", "re-run the tokenise stage")


def test_missing_parquet_says_to_tokenise_first(tmp_path):
    with pytest.raises(MosbenchError, match=r"valid.parquet is missing; run the tokenise stage"):
        load_split(tmp_path / "data", "valid")


def test_split_too_short_for_the_batch():
    with pytest.raises(MosbenchError, match=r"^7 tokens are too few for batch size 4: "
                                            r"expected at least 8"):
        batchify(np.arange(7, dtype=np.int32), 4)


# --- 5. a checkpoint of another model (training/checkpoint.py, through its API) --------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_checkpoint_of_a_different_model_is_refused(tiny_config, tmp_path, framework):
    from mosbench.training import checkpoint

    def built(name, **changes):
        hparams = dict(tiny_config["presets"]["tiny"][name], **changes)
        engine = load_engine(framework)
        engine.build(name, 40, hparams)
        engine.prepare_training(hparams, hparams["batch_size"])
        return engine

    saved = built("lstm")
    fingerprint = {"model": "lstm", "hparams": tiny_config["presets"]["tiny"]["lstm"]}
    checkpoint.save(tmp_path, saved, {"epoch": 1, "fingerprint": fingerprint})

    for engine in (built("awd-lstm-mos"), built("lstm", emsize=24, nhid=24)):
        before = engine.checkpoint_arrays()
        with pytest.raises(MosbenchError) as err:
            checkpoint.load(tmp_path, engine)
        assert str(tmp_path) in str(err.value)
        assert f"a different model or preset than this {framework} job's" in str(err.value)
        # refused before touching anything: the model keeps its own weights
        after = engine.checkpoint_arrays()
        assert all(np.array_equal(value, after[name]) for name, value in before.items())
    # train.py asks same_job first and discards a checkpoint of other settings
    assert checkpoint.same_job(tmp_path, fingerprint)
    assert not checkpoint.same_job(tmp_path, {**fingerprint, "model": "awd-lstm-mos"})
    checkpoint.remove(tmp_path)
    assert not checkpoint.exists(tmp_path) and files_under(tmp_path) == []
    # the same model loads (so the refusals above are about the model, not the files)
    checkpoint.save(tmp_path, saved, {"epoch": 1})
    state, _ = checkpoint.load(tmp_path, saved)
    assert state["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncated", "unreadable"])
def test_an_unreadable_checkpoint_is_kept_and_named(damage, tokenised, tmp_path, monkeypatch,
                                                    capsys, mlflow_store):
    """A checkpoint.json that cannot be read (a node crash, EIO on a network file system)
    proves nothing about its settings: the job stops in one line and deletes nothing."""
    run = tmp_path / "results" / "train" / "tensorflow" / "tiny" / "lstm" / "seed1-gpus0"
    run.mkdir(parents=True)
    state = run / "checkpoint.json"
    if damage == "truncated":
        state.write_text('{"format_version": 2, "arrays": "checkpoint-3.np')
    else:  # a directory where the file should be: reading it fails with an OSError
        state.mkdir()
    (run / "checkpoint-3.npz").write_bytes(b"three epochs of work")
    (run / "best-2.weights.npz").write_bytes(b"the best weights so far")
    before = files_under(run)
    status, err = run_cli(tmp_path, monkeypatch, capsys, ["train", "tiny", "lstm", "--seed", "1"])
    assert_one_clear_line(status, err, f"{state.relative_to(tmp_path)}: unreadable (",
                          "the checkpoint and its arrays are kept, nothing was deleted")
    assert files_under(run) == before  # nothing deleted, nothing trained
    assert (run / "checkpoint-3.npz").read_bytes() == b"three epochs of work"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_truncated_weights_file_is_one_clear_error(tiny_config, tmp_path, framework):
    from mosbench.evaluation.evaluate import load_trained
    from mosbench.training.train import WEIGHTS

    hparams = tiny_config["presets"]["tiny"]["lstm"]
    engine = load_engine(framework)
    engine.build("lstm", 40, hparams)
    np.savez(tmp_path / WEIGHTS, **engine.weights())
    whole = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(whole[: len(whole) // 2])  # a copy cut short
    with pytest.raises(MosbenchError, match=r"model\.weights\.npz: not a whole weights file "
                                            r"\(.*\); run its train job again"):
        load_trained(tmp_path, "lstm", 40, hparams, framework=framework)
