import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from mosbench.errors import MosbenchError
from mosbench.io import write_json
from mosbench.reporting import ease_of_use
from mosbench.reporting.aggregate import aggregate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, dataset, model, seed, gpus, valid_ppl, test_ppl, curve, optimal=None,
             framework="tensorflow", **extra_metrics):
    """Write train.json and metrics.json for one run; ``curve`` is valid_ppl per epoch."""
    run_dir = root / f"{framework}-{dataset}-{model}-s{seed}-g{gpus}"
    run_id = f"{model}{seed}{gpus}" + ("" if framework == "tensorflow" else f"-{framework}")
    ident = {"framework": framework, "dataset": dataset, "model": model, "seed": seed,
             "gpus": gpus, "run_id": run_id}
    history = [
        {"epoch": i + 1, "train_loss": 5.0, "valid_loss": math.log(ppl), "valid_ppl": ppl,
         "epoch_time_s": 2.0 + i, "tokens_per_s": 1000.0 * (i + 1), "lr": 1.0}
        for i, ppl in enumerate(curve)
    ]
    train = {**ident, "n_params": 1000 if model == "lstm" else 2000, "history": history,
             "best_epoch": len(curve), "best_valid_loss": math.log(curve[-1]),
             "train_time_s": 10.0}
    metrics = {**ident, "best_valid_loss": math.log(valid_ppl), "best_valid_ppl": valid_ppl,
               "test_loss": math.log(test_ppl), "test_ppl": test_ppl,
               "latency_ms_median": 1.5, "latency_ms_p95": 2.0, "eval_tokens_per_s": 9000.0,
               "optimal_ppl": optimal, **extra_metrics}
    write_json(run_dir / "train.json", train)
    write_json(run_dir / "metrics.json", metrics)
    return run_dir / "train.json", run_dir / "metrics.json"


@pytest.fixture
def runs(tmp_path):
    return _runs(tmp_path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """aggregate() of :func:`_runs`, once for the tests that only read what it wrote:
    ``(paths, report folder)``."""
    runs = _runs(tmp_path_factory.mktemp("aggregated"))
    return aggregate(*runs), runs[2]


def _runs(tmp_path):
    """Four groups: 2 seeds, 3 seeds, a single seed, and a real data set without optimal_ppl."""
    specs = [
        ("synthetic", "lstm", 2, 0, 14.0, 15.0, [40.0, 20.0, 14.0], 8.0),
        ("synthetic", "lstm", 1, 0, 10.0, 11.0, [30.0, 16.0, 10.0], 8.0),
        ("synthetic", "mos", 3, 0, 11.0, 12.0, [25.0, 11.0], 8.0),
        ("synthetic", "mos", 1, 0, 9.0, 10.0, [25.0, 9.0], 8.0),
        ("synthetic", "mos", 2, 0, 10.0, 11.0, [25.0, 10.0], 8.0),
        ("synthetic", "lstm", 1, 1, 12.5, 13.0, [30.0, 12.5], 8.0),
        ("ptb", "lstm", 1, 0, 500.0, 520.0, [900.0, 500.0], None),
        ("ptb", "lstm", 2, 0, 600.0, 610.0, [1000.0, 600.0], None),
    ]
    pairs = [make_run(tmp_path / "runs", *spec, flops_per_token=3.5 * spec[2], note="text")
             for spec in specs]
    train_files, metrics_files = (list(files) for files in zip(*pairs, strict=True))
    return train_files, metrics_files, tmp_path / "report"


def test_runs_table(report):
    paths = report[0]
    table = pd.read_csv(paths["runs"])
    assert len(table) == 8
    keys = list(table[["dataset", "model", "gpus", "seed"]].itertuples(index=False, name=None))
    assert keys == [("ptb", "lstm", 0, 1), ("ptb", "lstm", 0, 2),
                    ("synthetic", "lstm", 0, 1), ("synthetic", "lstm", 0, 2),
                    ("synthetic", "lstm", 1, 1),
                    ("synthetic", "mos", 0, 1), ("synthetic", "mos", 0, 2),
                    ("synthetic", "mos", 0, 3)]
    assert list(table.columns[:13]) == ["dataset", "model", "framework", "seed", "gpus", "run_id",
                                        "n_params", "epochs", "best_epoch", "train_time_s",
                                        "batch_size", "epoch_time_s", "tokens_per_s"]
    assert set(table["framework"]) == {"tensorflow"}
    first_lstm = table.iloc[2]
    assert first_lstm["epochs"] == 3
    assert first_lstm["epoch_time_s"] == pytest.approx(3.0)  # mean of 2, 3, 4
    assert first_lstm["tokens_per_s"] == pytest.approx(2000.0)  # mean of 1000, 2000, 3000
    assert first_lstm["run_id"] == "lstm10"
    # the extra numeric key is carried over, the string one is not
    assert table["flops_per_token"].tolist() == [3.5, 7.0, 3.5, 7.0, 3.5, 3.5, 7.0, 10.5]
    assert "note" not in table.columns
    assert table["optimal_ppl"].isna().tolist() == [True, True] + [False] * 6
    assert {"latency_ms_p95", "eval_tokens_per_s", "test_loss"} <= set(table.columns)


def test_summary_values(report):
    paths = report[0]
    summary = pd.read_csv(paths["summary_csv"]).set_index(["dataset", "model", "gpus",
                                                           "framework"])
    assert len(summary) == 4

    lstm = summary.loc[("synthetic", "lstm", 0, "tensorflow")]
    assert lstm["n_seeds"] == 2
    assert lstm["best_valid_ppl_mean"] == pytest.approx(12.0)
    assert lstm["best_valid_ppl_std"] == pytest.approx(math.sqrt(8))  # (10, 14) -> 2.828...
    assert lstm["test_ppl_mean"] == pytest.approx(13.0)
    # per-run epoch times are 3.0 (3 epochs) and 3.0, so the spread is zero
    assert lstm["epoch_time_s_mean"] == pytest.approx(3.0)
    assert lstm["epoch_time_s_std"] == pytest.approx(0.0)
    assert lstm["n_params_mean"] == 1000
    assert lstm["optimal_ppl"] == 8.0

    mos = summary.loc[("synthetic", "mos", 0, "tensorflow")]
    assert mos["n_seeds"] == 3
    assert mos["best_valid_ppl_mean"] == pytest.approx(10.0)
    assert mos["best_valid_ppl_std"] == pytest.approx(1.0)
    assert mos["tokens_per_s_mean"] == pytest.approx(1500.0)

    single = summary.loc[("synthetic", "lstm", 1, "tensorflow")]
    assert single["n_seeds"] == 1
    assert single["best_valid_ppl_mean"] == pytest.approx(12.5)
    assert math.isnan(single["best_valid_ppl_std"])

    ptb = summary.loc[("ptb", "lstm", 0, "tensorflow")]
    assert ptb["best_valid_ppl_mean"] == pytest.approx(550.0)
    assert ptb["best_valid_ppl_std"] == pytest.approx(math.sqrt(5000))
    assert math.isnan(ptb["optimal_ppl"])


def _section(text, title):
    """The table lines of one section of summary.md."""
    part = text.split(f"## {title}\n")[1].split("\n## ")[0]
    return [line for line in part.splitlines() if line.startswith("|")]


def test_summary_markdown(report):
    text = report[0]["summary_md"].read_text(encoding="utf-8")
    assert text.startswith("# ")
    table = _section(text, "Perplexity")
    assert len(table) == 2 + 4  # header, separator, one line per group
    assert "best possible ppl" in table[0]
    assert table[0].startswith("| dataset | model | gpus | framework | seeds |")
    assert "| synthetic | lstm | 0 | tensorflow | 2 | 12.00 ± 2.83 | 13.00 ± 2.83 |" in text
    assert "| synthetic | lstm | 1 | tensorflow | 1 | 12.50 ± – |" in text
    assert "550.00 ± 70.71" in text
    assert "| 8.00 |" in text
    speed = _section(text, "Training speed and cost")
    assert len(speed) == 6 and "epoch time (s)" in speed[0]


def test_markdown_without_optimal_column(runs):
    train_files, metrics_files, out_dir = runs
    ptb = [i for i, path in enumerate(train_files) if "ptb" in str(path)]
    paths = aggregate([train_files[i] for i in ptb], [metrics_files[i] for i in ptb], out_dir)
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "best possible" not in text


def test_missing_optional_keys(tmp_path):
    train, metrics = make_run(tmp_path, "synthetic", "lstm", 1, 0, 10.0, 11.0, [10.0])
    data = pd.read_json(metrics, typ="series").to_dict()
    for key in ("latency_ms_median", "latency_ms_p95", "optimal_ppl", "eval_tokens_per_s"):
        del data[key]
    write_json(metrics, data)
    paths = aggregate([train], [metrics], tmp_path / "out")
    summary = pd.read_csv(paths["summary_csv"])
    assert math.isnan(summary.loc[0, "latency_ms_median_mean"])
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "## Prediction\n\nNo run recorded these figures." in text
    assert "latency" not in "".join(_section(text, "Perplexity"))


def test_every_figure_is_a_legible_png(report):
    paths = report[0]
    for name in ("valid_ppl_png", "scaling_png", "memory_png", "latency_png",
                 "result_cost_png"):
        data = paths[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        image = matplotlib.image.imread(paths[name])
        assert image.ndim == 3 and image.shape[0] >= 400 and image.shape[1] >= 600, name
        assert image[..., :3].std() > 0.01, name  # not a blank canvas


def test_summary_mean_and_std_equal_pandas_on_runs_csv(report):
    paths = report[0]
    table = pd.read_csv(paths["runs"])
    key = ["dataset", "model", "gpus", "framework"]
    summary = pd.read_csv(paths["summary_csv"]).set_index(key)
    stats = [c.removesuffix("_mean") for c in summary.columns if c.endswith("_mean")]
    present = [s for s in stats if s in table.columns]
    assert {"best_valid_ppl", "test_ppl", "epoch_time_s", "tokens_per_s",
            "latency_ms_median"} <= set(present)
    grouped = table.groupby(key)
    for stat in present:
        pd.testing.assert_series_equal(summary[f"{stat}_mean"], grouped[stat].mean(),
                                       check_names=False)
        pd.testing.assert_series_equal(summary[f"{stat}_std"], grouped[stat].std(),
                                       check_names=False)
    assert (summary["n_seeds"] == grouped.size()).all()


def test_only_final_files_are_left(report):
    paths, folder = report
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in paths.values())


def test_metrics_without_train_file(runs):
    train_files, metrics_files, out_dir = runs
    with pytest.raises(MosbenchError, match="without a matching train.json") as err:
        aggregate(train_files[1:], metrics_files, out_dir)
    assert str(metrics_files[0]) in str(err.value)


def test_train_without_metrics_file(runs):
    train_files, metrics_files, out_dir = runs
    with pytest.raises(MosbenchError, match="without a matching metrics.json"):
        aggregate(train_files, metrics_files[1:], out_dir)


def test_duplicate_runs(runs):
    train_files, metrics_files, out_dir = runs
    with pytest.raises(MosbenchError, match="duplicate metrics.json") as err:
        aggregate(train_files, metrics_files + [metrics_files[0]], out_dir)
    assert str(metrics_files[0]) in str(err.value)


def test_empty_input(tmp_path):
    with pytest.raises(MosbenchError, match="no runs to aggregate"):
        aggregate([], [], tmp_path)


def test_unreadable_file(tmp_path):
    train, metrics = make_run(tmp_path, "synthetic", "lstm", 1, 0, 10.0, 11.0, [10.0])
    metrics.write_text("{not json", encoding="utf-8")
    with pytest.raises(MosbenchError, match="metrics.json"):
        aggregate([train], [metrics], tmp_path / "out")


def test_measurements_and_absent_reasons_reach_the_tables(tmp_path):
    train, metrics = make_run(tmp_path, "ptb", "lstm", 1, 2, 90.0, 85.0, [120.0, 90.0])
    data = pd.read_json(train, typ="series").to_dict()
    data["measurements"] = {"epoch_time_s": 1800.0, "tokens_per_s": 500.0, "first_step_s": 4.0,
                            "host_rss_peak_mb": 900.0, "allocator_peak_mb": None,
                            "cost_per_epoch": 99.0}
    data["absent"] = {"allocator_peak_mb": "no GPU visible to TensorFlow"}
    write_json(train, data)
    prices = {"currency": "EUR", "gpu_hour": 3.0, "cpu_hour": 0.5}
    paths = aggregate([train], [metrics], tmp_path / "out", prices=prices)
    row = pd.read_csv(paths["runs"]).iloc[0]
    assert row["epoch_time_s"] == 1800.0 and row["first_step_s"] == 4.0
    assert row["cost_per_epoch"] == pytest.approx(0.5 * 2 * 3.0)  # priced again: 2 GPUs, 0.5 h
    assert math.isnan(row["allocator_peak_mb"])
    assert row["absent"].startswith("allocator_peak_mb: no GPU visible to TensorFlow; ")
    assert "target_valid_ppl: no target validation perplexity" in row["absent"]
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "money in EUR" in text
    assert ("*GPU peak, allocator, sum over devices (MiB)*: absent: no GPU visible to "
            "TensorFlow") in text
    assert "| ptb | lstm | 2 | tensorflow | 1 | 900 ± – |" in text  # host RSS, the one figure


def test_compile_figures_reach_the_runs_table_and_the_summary(tmp_path):
    train, metrics = make_run(tmp_path, "ptb", "lstm", 1, 0, 90.0, 85.0, [120.0, 90.0])
    data = pd.read_json(train, typ="series").to_dict()
    why = "TensorFlow traces and optimises a step's graph within the step's first call"
    data["measurements"] = {"first_step_s": 4.0, "compiles": 7, "compile_s": None}
    data["absent"] = {"compile_s": why}
    write_json(train, data)
    paths = aggregate([train], [metrics], tmp_path / "out")
    row = pd.read_csv(paths["runs"]).iloc[0]
    assert row["compiles"] == 7 and math.isnan(row["compile_s"])
    assert f"compile_s: {why}" in row["absent"]
    text = paths["summary_md"].read_text(encoding="utf-8")
    speed = _section(text, "Training speed and cost")
    assert "first step (s) | compiles (TensorFlow: traces) |" in speed[0]
    assert speed[2].endswith("| 4.00 ± – | 7.00 ± – |")
    assert f"- *compile time (s)*: absent: {why}" in text


def test_scaling_table_from_gpu_runs_and_weak_probes(tmp_path):
    pairs = [make_run(tmp_path / "runs", "ptb", "mos", seed, gpus, 60.0, 58.0, [70.0, 60.0])
             for seed in (1, 2) for gpus in (0, 1, 2, 4)]
    train_files, metrics_files = (list(files) for files in zip(*pairs, strict=True))
    for path in train_files:  # tokens/s: 1000 per GPU, 75 % efficient at 4
        data = pd.read_json(path, typ="series").to_dict()
        gpus = data["gpus"]
        data["measurements"] = {"tokens_per_s": {0: 100.0, 1: 1000.0, 2: 2000.0, 4: 3000.0}[gpus]}
        write_json(path, data)
    probes = []
    for gpus, tps in ((1, 1000.0), (2, 1900.0)):
        probes.append(tmp_path / f"probe{gpus}.json")
        write_json(probes[-1], {"framework": "tensorflow", "dataset": "ptb", "model": "mos",
                                "seed": 1, "gpus": gpus, "tokens_per_s": tps})
    paths = aggregate(train_files, metrics_files, tmp_path / "out", probe_files=probes)
    scaling = pd.read_csv(paths["scaling_csv"]).set_index(["scaling", "gpus"])
    assert list(scaling.loc["strong"].index) == [1, 2, 4]  # the CPU runs are not scaled
    assert scaling.loc[("strong", 4), "speedup"] == pytest.approx(3.0)
    assert scaling.loc[("strong", 4), "efficiency"] == pytest.approx(0.75)
    assert scaling.loc[("strong", 2), "n"] == 2
    assert set(scaling.loc["strong", "source"]) == {"training"}  # no strong probes: the runs
    assert scaling.loc[("weak", 2), "efficiency"] == pytest.approx(0.95)
    text = paths["scaling_md"].read_text(encoding="utf-8")
    assert "| ptb | mos | tensorflow | strong | training | 4 | 2 | 3,000 ± 0 | 3.00 | 75.0 |" in (
        text)


def test_difference_to_published_perplexities(runs):
    reference = {"ptb": {"lstm": {"valid_ppl": 500.0, "test_ppl": 600.0, "source": "paper"}},
                 "wikitext2": {"lstm": {"test_ppl": 1.0, "source": "unused"}}}
    paths = aggregate(*runs, reference=reference)
    published = pd.read_csv(paths["published_csv"]).set_index("metric")
    assert list(published.index) == ["valid_ppl", "test_ppl"]  # only what both sides have
    assert published.loc["valid_ppl", "difference"] == pytest.approx(50.0)  # 550 - 500
    assert published.loc["test_ppl", "difference"] == pytest.approx(-35.0)  # 565 - 600
    assert published.loc["test_ppl", "relative_pct"] == pytest.approx(-35.0 / 6)
    assert ("| ptb | lstm | 0 | tensorflow | valid_ppl | 2 | 550.00 ± 70.71 | 500.00 | +50.00 "
            "| +10.0 |") in paths["published_md"].read_text(encoding="utf-8")


def test_a_run_file_without_a_known_framework_is_refused(tmp_path):
    train, metrics = make_run(tmp_path, "synthetic", "lstm", 1, 0, 10.0, 11.0, [10.0])
    data = pd.read_json(train, typ="series").to_dict()
    del data["framework"]
    write_json(train, data)
    with pytest.raises(MosbenchError, match="lacks framework; expected the keys dataset, "
                                            "model, framework, seed, gpus"):
        aggregate([train], [metrics], tmp_path / "out")
    write_json(train, {**data, "framework": "mxnet"})
    with pytest.raises(MosbenchError, match=r"unknown framework 'mxnet'; allowed: "
                                            r"\['tensorflow', 'pytorch', 'jax'\]"):
        aggregate([train], [metrics], tmp_path / "out")


def stub_inventory(monkeypatch, components):
    """Replace the ease-of-use inventory (tests/test_ease_of_use.py builds the real one) by
    ``components(framework)``: (component, provided, lines) rows. Returns the list of the
    frameworks each call asked for."""
    asked = []

    def inventory(csv_path, md_path, frameworks=("tensorflow",)):
        asked.append(list(frameworks))
        table = pd.DataFrame(
            [{"framework": f, "component": c, "provided": p, "lines": n}
             for f in frameworks for c, p, n in components(f)], columns=ease_of_use.COLUMNS)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv_path, index=False)
        md_path.write_text("# Ease of use\n")
        return table

    monkeypatch.setattr(ease_of_use, "write_inventory", inventory)
    return asked


@pytest.fixture
def two_frameworks(tmp_path, monkeypatch):
    """The same cells in TensorFlow and PyTorch (PyTorch 10 % faster, 1 ppl better), on 0, 1
    and 2 GPUs; the ease-of-use inventory stubbed (tests/test_ease_of_use.py builds it)."""
    asked = stub_inventory(monkeypatch, lambda f: [("LSTM", "built in", None),
                                                    ("NT-ASGD", "written", 40),
                                                    ("MoS head", "written", 25 + len(f))])
    pairs, probes = [], []
    for framework, speed, better in (("tensorflow", 1.0, 0.0), ("pytorch", 1.1, 1.0)):
        for seed in (1, 2):
            for gpus in (0, 1, 2):
                train, metrics = make_run(tmp_path / "runs", "ptb", "awd-lstm-mos", seed, gpus,
                                          60.0 - better + seed, 58.0 - better + seed,
                                          [70.0, 60.0 - better + seed], framework=framework)
                data = pd.read_json(train, typ="series").to_dict()
                data["measurements"] = {"tokens_per_s": speed * {0: 100, 1: 1000, 2: 1600}[gpus]}
                write_json(train, data)
                pairs.append((train, metrics))
        for gpus, tps in ((1, 1000.0), (2, 1800.0)):
            probes.append(tmp_path / f"probe-{framework}-{gpus}.json")
            write_json(probes[-1], {"framework": framework, "dataset": "ptb",
                                    "model": "awd-lstm-mos", "seed": 1, "gpus": gpus,
                                    "tokens_per_s": speed * tps})
    train_files, metrics_files = (list(files) for files in zip(*pairs, strict=True))
    reference = {"ptb": {"awd-lstm-mos": {"valid_ppl": 56.54, "source": "Yang et al. 2018"}}}
    paths = aggregate(train_files, metrics_files, tmp_path / "out", reference=reference,
                      probe_files=probes)
    return paths, asked


def test_every_table_keeps_the_frameworks_apart(two_frameworks):
    paths, asked = two_frameworks
    runs = pd.read_csv(paths["runs"])
    assert len(runs) == 12
    # sorted by cell, a cell's frameworks next to each other, then seeds
    assert list(runs[["gpus", "framework", "seed"]].head(4).itertuples(index=False, name=None)) == [
        (0, "pytorch", 1), (0, "pytorch", 2), (0, "tensorflow", 1), (0, "tensorflow", 2)]

    summary = pd.read_csv(paths["summary_csv"])
    assert list(summary[["gpus", "framework"]].itertuples(index=False, name=None)) == [
        (g, f) for g in (0, 1, 2) for f in ("pytorch", "tensorflow")]
    assert (summary["n_seeds"] == 2).all()
    by_cell = summary.set_index(["gpus", "framework"])
    assert by_cell.loc[(1, "tensorflow"), "best_valid_ppl_mean"] == pytest.approx(61.5)
    assert by_cell.loc[(1, "pytorch"), "best_valid_ppl_mean"] == pytest.approx(60.5)
    assert by_cell.loc[(2, "pytorch"), "tokens_per_s_mean"] == pytest.approx(1760.0)
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "| ptb | awd-lstm-mos | 1 | pytorch | 2 | 60.50 ± 0.71 |" in text
    assert "| ptb | awd-lstm-mos | 1 | tensorflow | 2 | 61.50 ± 0.71 |" in text

    # each framework scales against its own single GPU
    scaling = pd.read_csv(paths["scaling_csv"]).set_index(["framework", "scaling", "gpus"])
    assert len(scaling) == 8
    for framework, speed in (("tensorflow", 1.0), ("pytorch", 1.1)):
        assert scaling.loc[(framework, "strong", 2), "tokens_per_s_mean"] == pytest.approx(
            1600 * speed)
        assert scaling.loc[(framework, "strong", 2), "efficiency"] == pytest.approx(0.8)
        assert scaling.loc[(framework, "weak", 2), "efficiency"] == pytest.approx(0.9)
    row = "| ptb | awd-lstm-mos | pytorch | strong | training | 2 | 2 | 1,760 ± 0 | 1.60 | 80.0 |"
    assert row in paths["scaling_md"].read_text(encoding="utf-8")

    published = pd.read_csv(paths["published_csv"]).set_index(["gpus", "framework"])
    assert len(published) == 6
    assert published.loc[(0, "tensorflow"), "difference"] == pytest.approx(61.5 - 56.54)
    assert published.loc[(0, "pytorch"), "difference"] == pytest.approx(60.5 - 56.54)

    assert asked == [["tensorflow", "pytorch"]]  # the inventory of every framework run


def test_the_figures_draw_both_frameworks(two_frameworks):
    paths, _ = two_frameworks
    for name in ("valid_ppl_png", "scaling_png", "memory_png", "latency_png",
                 "result_cost_png"):
        image = matplotlib.image.imread(paths[name])
        assert image.ndim == 3 and image[..., :3].std() > 0.01, name


def _probe(path, framework, scaling, gpus, blocks, allocator=None):
    write_json(path, {"framework": framework, "dataset": "ptb", "model": "mos", "gpus": gpus,
                      "scaling": scaling, "tokens_per_s": float(np.median(blocks)),
                      "tokens_per_s_blocks": blocks, "step_time_median_s": 0.1,
                      "allocator_peak_mb": allocator, "gpu_memory_peak_mb": None,
                      "provenance": {"framework": framework, "framework_version": "1.0",
                                     "gpu_model": "NVIDIA H200", "cpu_model": "x"}})
    return path


def test_probes_give_scaling_and_the_frameworks_side_by_side(tmp_path):
    # full trainings at one GPU only (the study's shape); speed and scaling from the probes
    pairs = [make_run(tmp_path / "runs", "ptb", "mos", seed, 1, 60.0, 58.0, [70.0, 60.0],
                      framework=framework)
             for seed in (1, 2) for framework in ("tensorflow", "pytorch")]
    train_files, metrics_files = (list(files) for files in zip(*pairs, strict=True))
    probes = [_probe(tmp_path / f"{f}-{s}-{g}.json", f, s, g,
                     [speed * g * eff * b for b in (0.98, 1.0, 1.02)], allocator=100.0 * g)
              for f, speed in (("tensorflow", 1000.0), ("pytorch", 1500.0))
              for s, eff in (("strong", 0.8), ("weak", 0.9)) for g in (1, 2, 4)
              if not (s == "weak" and g == 1)]
    paths = aggregate(train_files, metrics_files, tmp_path / "out", probe_files=probes)
    scaling = pd.read_csv(paths["scaling_csv"]).set_index(["framework", "scaling", "gpus"])
    assert set(scaling["source"]) == {"probe"}  # the one-GPU runs give way to the probes
    # strong: 0.8 of ideal at 2 and 4 GPUs against the 1-GPU probe, which ran at 0.8 too
    assert scaling.loc[("pytorch", "strong", 4), "efficiency"] == pytest.approx(1.0)
    assert scaling.loc[("pytorch", "strong", 4), "n"] == 3  # three timed blocks
    # weak scaling from its base, the 1-GPU strong probe (at one GPU the modes coincide)
    assert scaling.loc[("tensorflow", "weak", 1), "tokens_per_s_mean"] == pytest.approx(800.0)
    assert scaling.loc[("tensorflow", "weak", 4), "speedup"] == pytest.approx(3600 / 800)
    table = pd.read_csv(paths["probes_csv"]).set_index(["framework", "scaling", "gpus"])
    assert len(table) == 10
    assert table.loc[("pytorch", "strong", 2), "speed_ratio"] == pytest.approx(1.5)
    assert table.loc[("tensorflow", "strong", 2), "speed_ratio"] == pytest.approx(1.0)
    assert table.loc[("pytorch", "weak", 4), "tokens_per_s_min"] == pytest.approx(
        1500 * 4 * 0.9 * 0.98)
    assert (table["baseline"] == "tensorflow").all()
    page = paths["frameworks_md"].read_text(encoding="utf-8")
    assert "## Speed, scaling and memory at each GPU count (probes)" in page
    assert ("| ptb | mos | strong | 4 | pytorch | NVIDIA H200; pytorch 1.0 | 4,800 (4,704-4,896) "
            "| 1.50 | 400 | – |") in page
