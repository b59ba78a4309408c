"""The `mosbench` command runs every stage outside Snakemake, with clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_CONFIG
from mosbench import paths
from mosbench.cli import main
from mosbench.engines import FRAMEWORKS


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_stage_from_the_command_line(framework, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = shutil.copy(TINY_CONFIG, tmp_path / "tiny.yaml")
    run = dict(framework=framework, dataset="tiny", model="lstm", seed=1, gpus=0)
    chosen = [] if framework == "tensorflow" else ["--framework", framework]  # the default
    for argv in (["download", "tiny"], ["tokenise", "tiny"],
                 ["train", "tiny", "lstm", "--seed", "1", *chosen],
                 ["evaluate", "tiny", "lstm", "--seed", "1", "--gpus", "0", *chosen],
                 ["aggregate"]):
        assert main(["--config", str(config), *argv]) == 0, argv
    assert "best achievable perplexity of tiny" in capsys.readouterr().out
    assert main(["--config", str(config), "params", "tiny", "lstm", *chosen]) == 0
    summary = json.loads((Path(paths.TRAIN.format(**run)) / "train.json").read_text())
    assert summary["framework"] == framework
    assert capsys.readouterr().out.splitlines()[-1] == str(summary["n_params"])
    assert main(["--config", str(config), "rank", "tiny", "lstm", "--seed", "1",
                 "--contexts", "60", *chosen]) == 0
    rank = int(capsys.readouterr().out.split(":")[-1])
    assert 2 <= rank <= 16 + 2  # a 16-dimensional softmax
    assert (Path(paths.TRAIN.format(**run)) / "model.weights.npz").exists()
    assert Path(paths.TRAIN.format(**run)).parts[:3] == ("results", "train", framework)
    assert (Path(paths.EVALUATE.format(**run)) / "metrics.json").exists()
    assert (Path(paths.AGGREGATE) / "summary.md").exists()
    assert (tmp_path / "results" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "nowhere", "lstm", "--seed", "1"], "no preset presets.nowhere.lstm"),
        (["download", "nowhere"], "unknown source 'nowhere'; allowed: ['tiny']"),
        (["tokenise", "nowhere"], "unknown dataset 'nowhere'; allowed: ['tiny']"),
        (["train", "tiny", "gru", "--seed", "1"], "no preset presets.tiny.gru"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(["--config", str(TINY_CONFIG), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mosbench: error: ") and message in err


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_params_of_the_reference_presets_without_data(framework, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing tokenised here: vocabulary sizes come from the config
    assert main(["--config", str(REPO / "config" / "config.yaml"), "params", "ptb",
                 "awd-lstm-mos", "--framework", framework]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "21500620"  # the reference's count, in either framework
    assert f"in {framework}" in out[0]


def test_installed_command_rejects_a_negative_seed():
    mosbench = Path(sys.executable).with_name("mosbench")
    done = subprocess.run([str(mosbench), "--config", str(TINY_CONFIG), "train", "tiny", "lstm",
                           "--seed", "-3"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "expected a non-negative integer" in done.stderr
