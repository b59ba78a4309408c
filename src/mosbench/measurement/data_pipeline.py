"""What a training job pays to get its data ready, and streaming versus caching it.

``measure_data_pipeline`` measures, in one call, the preprocessing a job would
do without the Parquet files of the tokenise stage, the loading of those files,
and the throughput of the engine's three input pipelines over the train split
that yield the training loop's ``(inputs, targets)`` windows: streamed from
Parquet on every pass, cached in memory, and cached in a file on disk
(``Engine.input_pipelines``: ``tf.data`` for TensorFlow, ``torch.utils.data``
for PyTorch). The timing and the check of what each pass yields are here.

The *data_pipeline* rule runs it once per (framework, data set, hardware kind)
through :func:`data_pipeline_record`, with windows of one shape for every model
(config key ``data_pipeline``): the figures do not depend on the model, so the
training jobs no longer repeat them.
"""

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mosbench.config import SPLITS
from mosbench.data.batching import batchify
from mosbench.data.tokenise import build_vocab, load_split, read_metadata, read_tokens
from mosbench.engines import load_engine
from mosbench.errors import MosbenchError
from mosbench.measurement import page_cache
from mosbench.measurement.provenance import provenance

DEVICES = ("cpu", "gpu")  # the {device} wildcard: the host of a CPU job, or of a GPU job
# The figures whose absence a record explains (data_train_tokens is the rates' numerator).
DATA_FIGURES = ("data_preprocess_s", "data_parquet_load_s", "data_parquet_load_cached_pct",
                "data_stream_tokens_per_s",
                "data_cache_memory_fill_tokens_per_s", "data_cache_memory_tokens_per_s",
                "data_cache_file_fill_tokens_per_s", "data_cache_file_tokens_per_s")


def preprocess(raw_dir, subset=None):
    """Ids of each split from ``raw_dir/{split}.txt``, computed as the tokenise stage does."""
    tokens = {s: read_tokens(Path(raw_dir) / f"{s}.txt", limit=subset) for s in SPLITS}
    vocab = build_vocab(tokens[s] for s in SPLITS)
    return {s: np.fromiter((vocab[w] for w in t), np.int32, len(t)) for s, t in tokens.items()}


def measure_data_pipeline(engine, raw_dir, data_dir, *, batch_size, bptt, scratch_dir,
                          passes=2):
    """Data measurements of a job (seconds, tokens/s), all taken in this call.

    - ``data_preprocess_s``: read the raw train/valid/test text and turn it into
      ids as the tokenise stage does (what a job would pay without the Parquet files);
    - ``data_parquet_load_s``: load the three tokenised Parquet splits into memory, from a
      cold page cache where the OS allows (:func:`mosbench.measurement.page_cache.drop`),
      with ``data_parquet_load_cached_pct`` of their pages cached when it started (0: cold;
      None where the OS cannot say);
    - ``data_train_tokens``: input tokens one pass over the train windows yields,
      ``batch_size * (len(train) // batch_size - 1)``: the numerator of the rates below;
    - ``data_stream_tokens_per_s``: streamed from Parquet, best of ``passes`` passes;
    - ``data_cache_{memory,file}_fill_tokens_per_s``: first pass, which fills the cache;
    - ``data_cache_{memory,file}_tokens_per_s``: from the cache, best of ``passes - 1``.

    The file cache lives in a fresh folder under ``scratch_dir``, removed afterwards.
    """
    if passes < 2:
        raise ValueError("passes must be at least 2: the first fills the caches")
    data_dir = Path(data_dir)
    meta = read_metadata(data_dir / "train.parquet")

    start = time.perf_counter()
    ids = preprocess(raw_dir, meta["subset"])
    preprocess_s = time.perf_counter() - start
    if {s: len(ids[s]) for s in SPLITS} != meta["tokens"]:
        raise MosbenchError(f"{raw_dir}: the raw text does not give the tokens of {data_dir}")

    cache = page_cache.drop([data_dir / f"{split}.parquet" for split in SPLITS])
    start = time.perf_counter()
    for split in SPLITS:
        load_split(data_dir, split)
    load_s = time.perf_counter() - start

    scratch_dir = Path(scratch_dir)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    # A fresh folder per call: a killed run's lockfile or half-written cache cannot clash.
    cache_dir = Path(tempfile.mkdtemp(prefix="mosbench-data-cache-", dir=scratch_dir))
    try:
        pipelines = engine.input_pipelines(data_dir / "train.parquet", batch_size, bptt,
                                           cache_dir / "train")
        # Every pass must yield the windows' tokens of the ids computed from the raw text.
        streams = batchify(ids["train"], batch_size)
        tokens = int(streams[:, :-1].size)
        expected = (tokens, int(streams[:, 1:].sum(dtype=np.int64)))
        passes_s = {}
        for name, one_pass in pipelines.items():
            passes_s[name] = []
            for _ in range(passes):
                start = time.perf_counter()
                got = one_pass()
                seconds = time.perf_counter() - start
                if tuple(got) != expected:
                    raise MosbenchError(f"the {name} pipeline yielded {got[0]} tokens "
                                        f"(checksum {got[1]}), expected {expected}")
                passes_s[name].append(seconds)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    return {
        "data_preprocess_s": preprocess_s,
        "data_parquet_load_s": load_s,
        "data_parquet_load_cached_pct": cache["cached_pct"],
        "data_train_tokens": tokens,
        "data_stream_tokens_per_s": tokens / min(passes_s["stream"]),
        "data_cache_memory_fill_tokens_per_s": tokens / passes_s["cache_memory"][0],
        "data_cache_memory_tokens_per_s": tokens / min(passes_s["cache_memory"][1:]),
        "data_cache_file_fill_tokens_per_s": tokens / passes_s["cache_file"][0],
        "data_cache_file_tokens_per_s": tokens / min(passes_s["cache_file"][1:]),
    }


def data_pipeline_record(framework, dataset, device, raw_dir, data_dir, *, batch_size, bptt,
                         passes, scratch_dir, threads=None):
    """The data_pipeline.json of one (framework, data set, device): figures and provenance.

    ``{"framework", "dataset", "device", "batch_size", "bptt", "passes", <the figures of
    measure_data_pipeline>, "absent": {figure: reason}, "provenance": {...}}``. ``device``
    "gpu" places the engine on one GPU, as a GPU training job's process is (the pipelines
    themselves run on the host); "cpu" on none. A measurement that fails its own checks
    leaves its figures absent with the reason rather than failing the workflow; a batch
    larger than the train split allows is a configuration error.
    """
    if device not in DEVICES:
        raise MosbenchError(f"data pipeline: device '{device}'; allowed: {list(DEVICES)}")
    tokens = read_metadata(Path(data_dir) / "train.parquet")["tokens"]["train"]
    if tokens // batch_size < 2:
        raise MosbenchError(
            f"config key 'data_pipeline.batch_size': {batch_size} sequences need at least "
            f"{2 * batch_size} train tokens, and data set '{dataset}' has {tokens}; expected "
            f"at most {tokens // 2}")
    gpus = int(device == "gpu")
    engine = load_engine(framework, gpus=gpus, threads=threads)
    try:
        figures = measure_data_pipeline(engine, raw_dir, data_dir, batch_size=batch_size,
                                        bptt=bptt, scratch_dir=scratch_dir, passes=passes)
        absent = ({} if figures["data_parquet_load_cached_pct"] is not None else
                  {"data_parquet_load_cached_pct": "the OS cannot say what was cached"})
    except MosbenchError as exc:
        print(f"data measurements skipped: {exc}", flush=True)
        figures, absent = {}, {name: f"not measured: {exc}" for name in DATA_FIGURES}
    finally:
        engine.close()
    return {"framework": framework, "dataset": dataset, "device": device,
            "batch_size": batch_size, "bptt": bptt, "passes": passes, **figures,
            "absent": absent, "provenance": provenance(engine.versions(), gpus)}
