"""Tokenisation: the reference's rules, Parquet with metadata, clear errors."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mosbench.data.batching import batchify, windows
from mosbench.data.tokenise import (
    EOS,
    META_KEY,
    build_vocab,
    load_split,
    read_metadata,
    read_tokens,
    tokenise,
)
from mosbench.errors import MosbenchError


def write_raw(folder, texts, source=None):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (folder / f"{split}.txt").write_bytes(text.encode("utf-8") if isinstance(text, str)
                                              else text)
    (folder / "source.json").write_text(json.dumps(source or {"name": "t", "kind": "archive"}))
    return folder


def test_every_line_ends_with_eos_blank_lines_too(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b" the cat \n\nsat\r\non  the\rmat")  # no final newline
    assert read_tokens(path) == ["the", "cat", EOS, EOS, "sat", EOS, "on", "the", EOS, "mat", EOS]


def test_unicode_whitespace_and_limit(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("Café\u00a0au lait\nb c\n", encoding="utf-8")
    assert read_tokens(path) == ["Café", "au", "lait", EOS, "b", "c", EOS]
    assert read_tokens(path, limit=2) == ["Café", "au"]


def test_vocabulary_in_order_of_first_appearance():
    vocab = build_vocab([["b", "a", EOS], ["c", "a"], ["d"]])
    assert list(vocab.items()) == [("b", 0), ("a", 1), (EOS, 2), ("c", 3), ("d", 4)]


def test_parquet_round_trip_with_metadata(tmp_path):
    raw = write_raw(tmp_path / "raw", {"train": "a b\nb c\n", "valid": "c a\n", "test": "d\n"},
                    source={"name": "t", "kind": "synthetic", "optimal_ppl": 3.5})
    meta = tokenise(raw, tmp_path / "data")
    assert meta["tokens"] == {"train": 6, "valid": 3, "test": 2}
    assert meta["vocab_size"] == 5 and meta["optimal_ppl"] == 3.5
    ids, split_meta = load_split(tmp_path / "data", "train")
    assert ids.dtype == np.int32 and ids.tolist() == [0, 1, 2, 1, 3, 2]
    assert split_meta["split"] == "train"
    assert len(split_meta["source_sha256"]["train"]) == 64
    vocab = pq.read_table(tmp_path / "data" / "vocab.parquet").to_pydict()
    assert vocab["word"] == ["a", "b", EOS, "c", "d"]
    assert vocab["train_count"] == [1, 2, 2, 1, 0]
    assert not list((tmp_path / "data").glob(".*tmp"))  # no temporary files left


def test_subset_keeps_the_first_tokens(tmp_path):
    raw = write_raw(tmp_path / "raw", {"train": "a b c d\ne f\n", "valid": "g h i\n",
                                       "test": "j k\n"})
    meta = tokenise(raw, tmp_path / "data", subset=3)
    assert meta["tokens"] == {"train": 3, "valid": 3, "test": 3} and meta["subset"] == 3
    assert meta["vocab_size"] == 9  # a b c g h i j k <eos>


def test_empty_split_is_an_error(tmp_path):
    raw = write_raw(tmp_path / "raw", {"train": "a b\n", "valid": "\n\n", "test": "c\n"})
    with pytest.raises(MosbenchError, match="valid split has no words"):
        tokenise(raw, tmp_path / "data")
    assert not (tmp_path / "data" / "train.parquet").exists()


def test_invalid_utf8_names_file_and_offset(tmp_path):
    raw = write_raw(tmp_path / "raw", {"train": b"ok\n\xff\xfe\n", "valid": "a\n", "test": "b\n"})
    with pytest.raises(MosbenchError, match=r"train.txt: invalid UTF-8 at byte 3"):
        tokenise(raw, tmp_path / "data")


def test_older_format_and_foreign_parquet_are_rejected(tmp_path):
    raw = write_raw(tmp_path / "raw", {"train": "a b\n", "valid": "a\n", "test": "b\n"})
    tokenise(raw, tmp_path / "data")
    path = tmp_path / "data" / "train.parquet"
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(
        dict(meta, format_version=0))}), path)
    with pytest.raises(MosbenchError, match="format 0, this mosbench reads format 1"):
        read_metadata(path)
    pq.write_table(pa.table({"id": [1, 2]}), path)
    with pytest.raises(MosbenchError, match="no mosbench metadata"):
        load_split(tmp_path / "data", "train")
    path.write_bytes(b"PAR1 truncated")
    with pytest.raises(MosbenchError, match="not a readable Parquet file"):
        load_split(tmp_path / "data", "train")


def test_batchify_and_windows_cover_the_stream_once():
    ids = np.arange(23, dtype=np.int32)
    streams = batchify(ids, 4)  # 5 steps per stream, 3 tokens dropped
    assert streams.shape == (4, 5) and streams[1].tolist() == [5, 6, 7, 8, 9]
    pairs = list(windows(streams, 3))
    assert [x.shape[1] for x, _ in pairs] == [3, 1]
    for x, y in pairs:
        np.testing.assert_array_equal(y, x + 1)  # targets are the next tokens
    targets = np.concatenate([y for _, y in pairs], axis=1)
    np.testing.assert_array_equal(targets, streams[:, 1:])
