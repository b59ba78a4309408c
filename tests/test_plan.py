"""`mosbench plan`: the jobs of a study and what they cost, before anything is submitted."""

import re

import yaml

from conftest import REPO
from mosbench.cli import main
from mosbench.io import write_json

GRID = REPO / "config" / "config.yaml"
TOTAL = re.compile(r"^total: (\d+) jobs, ceiling ([\d,]+) GPU-hours, expected ([\d,]+) "
                   r"GPU-hours, ([\d,]+) USD$")


def plan(capsys, configfile, *args):
    assert main(["plan", "--configfile", str(configfile), *args]) == 0
    return capsys.readouterr().out.splitlines()


def number(text):
    return float(text.replace(",", ""))


def test_the_paper_grid_costs_a_tenth_of_full_training_at_every_gpu_count(capsys, tmp_path):
    lines = plan(capsys, GRID, "--results", str(tmp_path / "none"))
    total = TOTAL.match(lines[-1])
    assert total, lines[-1]
    # 240 trainings and evaluations, 168 probes, 6 data pipelines (3 frameworks x 2 data
    # sets), 2 downloads, 2 tokenisations and the aggregate: the jobs of `snakemake --dry-run`
    # (tests/test_cluster.py)
    assert int(total[1]) == 240 + 240 + 168 + 6 + 2 + 2 + 1
    per_framework = {m[1]: number(m[2]) for line in lines
                     if (m := re.match(r"^(\w+): ceiling ([\d,]+) GPU-hours", line))}
    assert set(per_framework) == {"tensorflow", "pytorch", "jax"}
    # trainings: 60 runs x 48 h + 10 x 8 h + 10 x 12 h; 56 exclusive probes x 8 GPUs x 0.5 h;
    # 80 evaluations x 2 h; 2 data pipelines x 2 h (the profile's default)
    assert per_framework["tensorflow"] == 60 * 48 + 10 * 8 + 10 * 12 + 56 * 8 * 0.5 + 80 * 2 + 4
    assert all(ceiling < 4620 for ceiling in per_framework.values())
    assert number(total[2]) == sum(per_framework.values())
    rows = {line.split()[0]: line.split() for line in lines[2:9]}
    assert rows["train"][1:3] == ["240", "8-48"] and rows["probe"][1] == "168"
    assert number(rows["train"][4]) == 4 * number(rows["train"][3])  # retries: 3
    assert rows["train"][-2:] == ["published", "speeds"]
    assert any(line.startswith("warning: cluster.gpu_model is null") for line in lines)
    # MoS on WikiText-2 at its epoch caps outlasts 4 submissions of 48 h: said, not hidden
    assert any("wikitext2 awd-lstm-mos (pytorch, 1 GPUs): about 483 h" in line for line in lines)

    old = yaml.safe_load(GRID.read_text())
    old["run"]["train_gpus"] = old["run"]["gpus"]
    old["cluster"]["gpu_model"] = "h100"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    lines = plan(capsys, tmp_path / "old.yaml", "--results", str(tmp_path / "none"))
    old_total = TOTAL.match(lines[-1])
    assert number(old_total[2]) > 10 * number(total[2])
    assert not any("gpu_model" in line for line in lines)


def test_measured_epoch_times_replace_the_published_ones(capsys, tmp_path):
    config = yaml.safe_load(GRID.read_text())
    config["run"].update(frameworks=["pytorch"], datasets=["ptb"], models=["awd-lstm"],
                         seeds=[1, 2], gpus=[1, 2], probes={"enabled": False})
    config["cluster"]["exclusive"] = False
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text("retries: 1\ndefault-resources: {runtime: 60}\n")
    results = tmp_path / "results"
    args = ("--results", str(results), "--profile", str(profile))

    lines = plan(capsys, tmp_path / "study.yaml", *args)
    assert lines[0].startswith("Plan of") and "(retries: 1;" in lines[0]
    # 2 runs x 1,000 epochs x 65 s (published, one Quadro GP100)
    train = next(line.split() for line in lines if line.startswith("train "))
    assert number(train[5]) == round(2 * 1000 * 65 / 3600)
    assert number(train[4]) == 2 * number(train[3])  # one retry

    write_json(results / "train" / "pytorch" / "ptb" / "awd-lstm" / "seed9-gpus1" /
               "train.json", {"framework": "pytorch", "dataset": "ptb", "model": "awd-lstm",
                              "gpus": 1, "measurements": {"epoch_time_s": 36.0}})
    lines = plan(capsys, tmp_path / "study.yaml", *args)
    train = next(line.split() for line in lines if line.startswith("train "))
    assert number(train[5]) == 2 * 1000 * 36 / 3600 and train[-2:] == ["earlier", "runs"]
    assert TOTAL.match(lines[-1])
