"""The `mosbench` command runs every stage outside Snakemake, with clear errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY_CONFIG
from mosbench import paths
from mosbench.cli import build_parser, main
from mosbench.config import load_config, typed_overrides, validate_config
from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_stage_from_the_command_line(framework, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = shutil.copy(TINY_CONFIG, tmp_path / "tiny.yaml")
    run = dict(framework=framework, dataset="tiny", model="lstm", seed=1, gpus=0)
    first = load_config(config)["run"]["frameworks"][0]  # the default
    chosen = [] if framework == first else ["--framework", framework]
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


def test_every_positional_argument_has_help_and_names_its_choices(capsys):
    parser = build_parser(TINY_CONFIG)
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here only
    for name, command in commands.items():
        for action in command._actions:
            if not action.option_strings:  # a positional argument
                assert action.help, f"mosbench {name} {action.dest}"
    for argv, wanted in ((["train", "-h"], ["the data set: tiny",
                                            "the model: lstm, awd-lstm, awd-lstm-moc, "
                                            "awd-lstm-mos", "{tensorflow,pytorch,jax}"]),
                         (["download", "-h"], ["the corpus: tiny"])):
        with pytest.raises(SystemExit) as done:
            main(["--config", str(TINY_CONFIG), *argv])
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for words in wanted:
            assert words in text, (argv, words)


def test_help_works_with_an_unreadable_config(capsys):
    with pytest.raises(SystemExit):
        main(["--config", "nowhere.yaml", "tokenise", "-h"])
    assert "a name under `datasets` in the config file" in " ".join(
        capsys.readouterr().out.split())


def test_grid_overrides_from_snakemakes_command_line_keep_the_schemas_types():
    # what `snakemake --config 'run={seeds: [1, 2]}'` hands over: every nested scalar a string
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["run"].update(seeds=["3", "4"], gpus=["0"])
    config["presets"]["tiny"]["lstm"].update(lr="2.5", wdecay="1e-6", small_batch_size="null",
                                             variable_bptt="true")
    typed_overrides(config)
    assert (config["run"]["seeds"], config["run"]["gpus"]) == ([3, 4], [0])
    lstm = config["presets"]["tiny"]["lstm"]
    assert (lstm["lr"], lstm["wdecay"], lstm["small_batch_size"], lstm["variable_bptt"]) == (
        2.5, 1e-6, None, True)
    assert config["run"]["datasets"] == ["tiny"]  # strings where strings belong
    config["run"]["seeds"] = ["three"]
    with pytest.raises(MosbenchError, match=r"config key 'run.seeds\[0\]': 'three' is not"):
        validate_config(typed_overrides(config))


@pytest.mark.parametrize("override", ["run={seeds: [3, 4, 5], models: [lstm]}",
                                      'run={"seeds": [3, 4, 5], "models": ["lstm"]}'])
def test_snakemake_plans_the_grid_given_on_its_command_line(override, tmp_path):
    snakemake = Path(sys.executable).with_name("snakemake")
    done = subprocess.run([str(snakemake), "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(TINY_CONFIG),
                           "--config", override, "--dry-run", "--cores", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = {line.split()[0]: int(line.split()[1]) for line in done.stdout.splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit()}
    frameworks = yaml.safe_load(TINY_CONFIG.read_text())["run"]["frameworks"]
    assert planned["train"] == len(frameworks) * 3  # the file's frameworks x lstm x 3 seeds
    assert "train/tensorflow/tiny/lstm/seed5-gpus0" in done.stdout
    assert "awd-lstm-mos" not in done.stdout
