"""Data measurements: every figure present and sane, pipelines yield the training windows."""

import json
import math

import numpy as np
import pytest

from mosbench.data.batching import batchify, windows
from mosbench.data.tokenise import load_split, tokenise
from mosbench.engines.tensorflow import input_pipeline
from mosbench.engines.tensorflow.engine import TensorFlowEngine
from mosbench.engines.tensorflow.input_pipeline import train_datasets
from mosbench.errors import MosbenchError
from mosbench.measurement import data_pipeline
from mosbench.measurement.data_pipeline import measure_data_pipeline, preprocess

BATCH, BPTT = 4, 7
FIGURES = {
    "data_preprocess_s", "data_parquet_load_s", "data_parquet_load_cached_pct",
    "data_train_tokens", "data_stream_tokens_per_s",
    "data_cache_memory_fill_tokens_per_s", "data_cache_memory_tokens_per_s",
    "data_cache_file_fill_tokens_per_s", "data_cache_file_tokens_per_s",
}


def write_corpus(folder, seed, lines=(120, 20, 20)):
    """Random lines of words (blank lines too) as raw train/valid/test text."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, n in zip(("train", "valid", "test"), lines, strict=True):
        text = "".join(" ".join(f"w{i}" for i in rng.integers(0, 40, rng.integers(0, 12))) + "\n"
                       for _ in range(n))
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    (folder / "source.json").write_text(json.dumps({"name": "t", "kind": "archive"}))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    raw = write_corpus(root / "raw", seed=0)
    tokenise(raw, root / "data")
    ids, _ = load_split(root / "data", "train")
    steps = len(ids) // BATCH
    # The interesting cases: a tail dropped by batchify and a short last window.
    assert len(ids) % BATCH and (steps - 1) % BPTT
    return raw, root / "data", ids


def as_lists(dataset):
    return [(x.numpy().tolist(), y.numpy().tolist()) for x, y in dataset]


def test_every_figure_is_finite_positive_and_no_cache_is_left(corpus, tmp_path):
    raw, data, ids = corpus
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "other.txt").write_text("not ours")
    figures = measure_data_pipeline(TensorFlowEngine(), raw, data, batch_size=BATCH, bptt=BPTT,
                                    scratch_dir=scratch, passes=3)
    assert set(figures) == FIGURES
    cached = figures.pop("data_parquet_load_cached_pct")  # read cold: 0 where the OS drops pages
    assert 0 <= cached <= 100
    for name, value in figures.items():
        assert math.isfinite(value) and value > 0, name
    assert figures["data_train_tokens"] == BATCH * (len(ids) // BATCH - 1)
    assert [p.name for p in scratch.iterdir()] == ["other.txt"]


def test_pipelines_yield_the_training_windows(corpus, tmp_path):
    _, data, ids = corpus
    expected = [(x.tolist(), y.tolist()) for x, y in windows(batchify(ids, BATCH), BPTT)]
    steps = len(ids) // BATCH
    assert len(expected) == math.ceil((steps - 1) / BPTT)
    datasets = train_datasets(data / "train.parquet", BATCH, BPTT, tmp_path / "cache")
    for name, dataset in datasets.items():
        for _ in range(2):  # filling the cache, then reading it
            assert as_lists(dataset) == expected, name
    assert sum(np.size(x) for x, _ in expected) == BATCH * (steps - 1)
    assert (tmp_path / "cache.index").exists()


def test_caches_read_the_parquet_file_once(corpus, tmp_path, monkeypatch):
    _, data, _ = corpus
    reads = []
    real_read_ids = input_pipeline.read_ids
    monkeypatch.setattr(input_pipeline, "read_ids",
                        lambda path: reads.append(path) or real_read_ids(path))
    datasets = train_datasets(data / "train.parquet", BATCH, BPTT, tmp_path / "cache")
    for name, dataset in datasets.items():
        reads.clear()
        for _ in range(3):
            as_lists(dataset)
        assert len(reads) == (3 if name == "stream" else 1), name


def test_preprocess_gives_the_parquet_ids(corpus):
    raw, data, _ = corpus
    for split, ids in preprocess(raw).items():
        np.testing.assert_array_equal(ids, load_split(data, split)[0])


def test_raw_text_of_another_corpus_is_refused(corpus, tmp_path):
    _, data, _ = corpus
    other = write_corpus(tmp_path / "raw", seed=1, lines=(121, 20, 20))
    with pytest.raises(MosbenchError, match="raw text does not give the tokens"):
        measure_data_pipeline(TensorFlowEngine(), other, data, batch_size=BATCH, bptt=BPTT,
                              scratch_dir=tmp_path)


@pytest.mark.parametrize("framework", ["tensorflow", "pytorch"])
def test_the_rules_record_has_the_figures_provenance_and_no_absence(corpus, tmp_path, framework):
    raw, data, ids = corpus
    record = data_pipeline.data_pipeline_record(framework, "t", "cpu", raw, data,
                                                batch_size=BATCH, bptt=BPTT, passes=2,
                                                scratch_dir=tmp_path, threads=1)
    assert {k: record[k] for k in ("framework", "dataset", "device", "batch_size", "bptt")} == {
        "framework": framework, "dataset": "t", "device": "cpu", "batch_size": BATCH,
        "bptt": BPTT}
    assert FIGURES <= set(record) and record["absent"] == {}
    assert all(record[name] > 0 for name in FIGURES - {"data_parquet_load_cached_pct"})
    assert 0 <= record["data_parquet_load_cached_pct"] <= 100
    assert record["data_train_tokens"] == BATCH * (len(ids) // BATCH - 1)
    assert record["provenance"]["framework"] == framework
    assert record["provenance"]["gpu_count"] == 0 and record["provenance"]["cpu_model"]
    assert list(tmp_path.iterdir()) == []  # the file cache is gone


def test_a_failed_measurement_is_absent_with_its_reason_and_a_bad_batch_is_refused(corpus,
                                                                                   tmp_path):
    _, data, ids = corpus
    other = write_corpus(tmp_path / "raw", seed=1, lines=(121, 20, 20))
    record = data_pipeline.data_pipeline_record("tensorflow", "t", "cpu", other, data,
                                                batch_size=BATCH, bptt=BPTT, passes=2,
                                                scratch_dir=tmp_path / "scratch")
    assert set(record["absent"]) == set(data_pipeline.DATA_FIGURES)
    assert all("raw text does not give the tokens" in r for r in record["absent"].values())
    assert not set(data_pipeline.DATA_FIGURES) & set(record)
    with pytest.raises(MosbenchError, match="config key 'data_pipeline.batch_size'"):
        data_pipeline.data_pipeline_record("tensorflow", "t", "cpu", other, data,
                                           batch_size=len(ids), bptt=BPTT, passes=2,
                                           scratch_dir=tmp_path)
    with pytest.raises(MosbenchError, match="device 'tpu'; allowed: \\['cpu', 'gpu'\\]"):
        data_pipeline.data_pipeline_record("tensorflow", "t", "tpu", other, data,
                                           batch_size=BATCH, bptt=BPTT, passes=2,
                                           scratch_dir=tmp_path)
