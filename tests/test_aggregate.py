import math

import matplotlib.image
import pandas as pd
import pytest

from mosbench.errors import MosbenchError
from mosbench.io import write_json
from mosbench.reporting.aggregate import aggregate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root, dataset, model, seed, gpus, valid_ppl, test_ppl, curve, optimal=None,
             **extra_metrics):
    """Write train.json and metrics.json for one run; ``curve`` is valid_ppl per epoch."""
    run_dir = root / f"{dataset}-{model}-s{seed}-g{gpus}"
    ident = {"dataset": dataset, "model": model, "seed": seed, "gpus": gpus,
             "run_id": f"{model}{seed}{gpus}"}
    history = [
        {"epoch": i + 1, "train_loss": 5.0, "valid_loss": math.log(ppl), "valid_ppl": ppl,
         "epoch_time_s": 2.0 + i, "tokens_per_s": 1000.0 * (i + 1), "lr": 1.0}
        for i, ppl in enumerate(curve)
    ]
    train = {**ident, "n_params": 1000 if model == "lstm" else 2000, "history": history,
             "best_epoch": len(curve), "best_valid_loss": math.log(curve[-1]),
             "train_time_s": 10.0}
    metrics = {**ident, "valid_loss": math.log(valid_ppl), "valid_ppl": valid_ppl,
               "test_loss": math.log(test_ppl), "test_ppl": test_ppl,
               "latency_ms_median": 1.5, "latency_ms_p95": 2.0, "eval_tokens_per_s": 9000.0,
               "optimal_ppl": optimal, **extra_metrics}
    write_json(run_dir / "train.json", train)
    write_json(run_dir / "metrics.json", metrics)
    return run_dir / "train.json", run_dir / "metrics.json"


@pytest.fixture
def runs(tmp_path):
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


def test_runs_table(runs):
    paths = aggregate(*runs)
    table = pd.read_csv(paths["runs"])
    assert len(table) == 8
    keys = list(table[["dataset", "model", "gpus", "seed"]].itertuples(index=False, name=None))
    assert keys == [("ptb", "lstm", 0, 1), ("ptb", "lstm", 0, 2),
                    ("synthetic", "lstm", 0, 1), ("synthetic", "lstm", 0, 2),
                    ("synthetic", "lstm", 1, 1),
                    ("synthetic", "mos", 0, 1), ("synthetic", "mos", 0, 2),
                    ("synthetic", "mos", 0, 3)]
    assert list(table.columns[:11]) == ["dataset", "model", "seed", "gpus", "run_id", "n_params",
                                        "epochs", "best_epoch", "train_time_s", "epoch_time_s",
                                        "tokens_per_s"]
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


def test_summary_values(runs):
    paths = aggregate(*runs)
    summary = pd.read_csv(paths["summary_csv"]).set_index(["dataset", "model", "gpus"])
    assert len(summary) == 4

    lstm = summary.loc[("synthetic", "lstm", 0)]
    assert lstm["n_seeds"] == 2
    assert lstm["valid_ppl_mean"] == pytest.approx(12.0)
    assert lstm["valid_ppl_std"] == pytest.approx(math.sqrt(8))  # (10, 14) -> 2.828...
    assert lstm["test_ppl_mean"] == pytest.approx(13.0)
    # per-run epoch times are 3.0 (3 epochs) and 3.0, so the spread is zero
    assert lstm["epoch_time_s_mean"] == pytest.approx(3.0)
    assert lstm["epoch_time_s_std"] == pytest.approx(0.0)
    assert lstm["n_params_mean"] == 1000
    assert lstm["optimal_ppl"] == 8.0

    mos = summary.loc[("synthetic", "mos", 0)]
    assert mos["n_seeds"] == 3
    assert mos["valid_ppl_mean"] == pytest.approx(10.0)
    assert mos["valid_ppl_std"] == pytest.approx(1.0)
    assert mos["tokens_per_s_mean"] == pytest.approx(1500.0)

    single = summary.loc[("synthetic", "lstm", 1)]
    assert single["n_seeds"] == 1
    assert single["valid_ppl_mean"] == pytest.approx(12.5)
    assert math.isnan(single["valid_ppl_std"])

    ptb = summary.loc[("ptb", "lstm", 0)]
    assert ptb["valid_ppl_mean"] == pytest.approx(550.0)
    assert ptb["valid_ppl_std"] == pytest.approx(math.sqrt(5000))
    assert math.isnan(ptb["optimal_ppl"])


def test_summary_markdown(runs):
    text = aggregate(*runs)["summary_md"].read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 4  # header, separator, one line per group
    assert "optimal ppl" in table[0]
    assert "| synthetic | lstm | 0 | 2 | 12.00 ± 2.83 | 13.00 ± 2.83 |" in text
    assert "| synthetic | lstm | 1 | 1 | 12.50 ± – |" in text
    assert "550.00 ± 70.71" in text
    assert "| 8.00 |" in text


def test_markdown_without_optimal_column(runs):
    train_files, metrics_files, out_dir = runs
    ptb = [i for i, path in enumerate(train_files) if "ptb" in str(path)]
    paths = aggregate([train_files[i] for i in ptb], [metrics_files[i] for i in ptb], out_dir)
    text = paths["summary_md"].read_text(encoding="utf-8")
    assert "optimal" not in text


def test_missing_optional_keys(tmp_path):
    train, metrics = make_run(tmp_path, "synthetic", "lstm", 1, 0, 10.0, 11.0, [10.0])
    data = pd.read_json(metrics, typ="series").to_dict()
    for key in ("latency_ms_median", "latency_ms_p95", "optimal_ppl"):
        del data[key]
    write_json(metrics, data)
    paths = aggregate([train], [metrics], tmp_path / "out")
    summary = pd.read_csv(paths["summary_csv"])
    assert math.isnan(summary.loc[0, "latency_ms_median_mean"])
    header = paths["summary_md"].read_text(encoding="utf-8").split("\n| ")[1]
    assert header.startswith("dataset |") and "latency" not in header


def test_plot_is_a_png(runs):
    png = aggregate(*runs)["valid_ppl_png"]
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 2 * image.shape[0]


def test_only_final_files_are_left(runs):
    paths = aggregate(*runs)
    names = sorted(p.name for p in runs[2].iterdir())
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
