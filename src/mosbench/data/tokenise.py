"""Text -> integer ids in Parquet, exactly as the reference code tokenises.

Every line, blank lines included, becomes ``line.split() + ['<eos>']``
(zihangdai/mos and salesforce/awd-lstm-lm ``data.py``); the vocabulary is
built over train, valid and test, in order of first appearance. Each split is
written as one Parquet file with an ``int32`` column ``id``; the vocabulary
as ``vocab.parquet`` (id, word, train count). The Parquet schema metadata
carries the token count, vocabulary size, source checksums and, for a
synthetic source, its best achievable perplexity, so every later stage can
check what it reads.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mosbench.config import SPLITS
from mosbench.errors import MosbenchError
from mosbench.io import all_or_nothing, atomic_path

EOS = "<eos>"
FORMAT_VERSION = 1
META_KEY = b"mosbench"


def read_tokens(path, limit=None):
    """Tokens of a text file, ``<eos>`` after every line; at most ``limit`` tokens."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise MosbenchError(
            f"{path}: cannot read it ({exc.strerror}); expected the corpus text written by the "
            "download stage (mosbench download <source>)"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MosbenchError(
            f"{path}: invalid UTF-8 at byte {exc.start}; corpora must be UTF-8 text"
        ) from None
    tokens = []
    # The reference iterates over a text-mode file: universal newlines, so \r\n and
    # \r end a line, but not the other characters that str.splitlines() honours.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline does not start another line
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
        if limit is not None and len(tokens) >= limit:
            return tokens[:limit]
    return tokens


def build_vocab(splits):
    """Word -> id, in order of first appearance over the splits in order."""
    vocab = {}
    for tokens in splits:
        for word in tokens:
            if word not in vocab:
                vocab[word] = len(vocab)
    return vocab


def tokenise(raw_dir, out_dir, subset=None, expected_vocab=None):
    """Tokenise ``raw_dir/{train,valid,test}.txt`` into ``out_dir``; return the metadata.

    ``raw_dir/source.json`` (written by the download or synthetic stage) is
    carried into the metadata. ``subset`` keeps the first N tokens per split;
    ``expected_vocab``, when given, must equal the vocabulary size found.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    # A failed (re)run leaves no Parquet files, not the previous run's or a mix of both.
    outputs = [out_dir / "vocab.parquet"] + [out_dir / f"{split}.parquet" for split in SPLITS]
    with all_or_nothing(*outputs):
        return _tokenise(raw_dir, out_dir, subset, expected_vocab)


def _tokenise(raw_dir, out_dir, subset, expected_vocab):
    source = _read_source(raw_dir)
    splits = {}
    for split in SPLITS:
        tokens = read_tokens(raw_dir / f"{split}.txt", limit=subset)
        if not any(t != EOS for t in tokens):
            raise MosbenchError(f"{raw_dir / f'{split}.txt'}: the {split} split has no words; "
                                "expected a non-empty text file (one sentence per line)")
        splits[split] = tokens
    vocab = build_vocab(splits[s] for s in SPLITS)
    if expected_vocab is not None and len(vocab) != expected_vocab:
        raise MosbenchError(
            f"{raw_dir}: the vocabulary has {len(vocab)} words, the config expects "
            f"{expected_vocab} (datasets.<name>.vocab_size); are these the right files?"
        )
    ids = {s: np.fromiter((vocab[w] for w in splits[s]), np.int32, len(splits[s])) for s in SPLITS}

    meta = {
        "format_version": FORMAT_VERSION,
        "tokens": {s: int(len(ids[s])) for s in SPLITS},
        "vocab_size": len(vocab),
        "subset": subset,
        "source_sha256": {s: _sha256(raw_dir / f"{s}.txt") for s in SPLITS},
        "source": source,
        "optimal_ppl": source.get("optimal_ppl"),
    }
    words = list(vocab)
    counts = np.bincount(ids["train"], minlength=len(vocab))
    _write(out_dir / "vocab.parquet", {"id": np.arange(len(vocab), dtype=np.int32),
                                      "word": words, "train_count": counts}, meta)
    for split in SPLITS:
        _write(out_dir / f"{split}.parquet", {"id": ids[split]}, dict(meta, split=split))
    return meta


def _read_source(raw_dir):
    """``raw_dir/source.json``, written last by the download stage once the splits are complete."""
    path = raw_dir / "source.json"
    try:
        source = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MosbenchError(
            f"{path} is missing: the raw corpus in {raw_dir} is absent or incomplete; "
            "run the download stage first (mosbench download <source>)"
        ) from None
    except (OSError, ValueError) as exc:
        raise MosbenchError(f"{path}: not readable JSON ({exc}); expected the description "
                            "the download stage writes: run it again") from None
    if not isinstance(source, dict):
        raise MosbenchError(f"{path}: expected a JSON object; run the download stage again")
    return source


def _write(path, columns, meta):
    table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_metadata(path):
    """The mosbench metadata of a tokenised Parquet file, checked for format."""
    if not Path(path).exists():
        raise MosbenchError(f"{path} is missing; run the tokenise stage first "
                            "(mosbench tokenise <dataset>)")
    try:
        schema_meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise MosbenchError(f"{path}: not a readable Parquet file ({exc})") from None
    if META_KEY not in schema_meta:
        raise MosbenchError(f"{path}: no mosbench metadata, so not written by the tokenise "
                            "stage; re-run it (mosbench tokenise <dataset>)")
    try:
        meta = json.loads(schema_meta[META_KEY])
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise MosbenchError(f"{path}: its mosbench metadata is not a JSON object; re-run the "
                            "tokenise stage (mosbench tokenise <dataset>)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise MosbenchError(
            f"{path}: written in format {meta.get('format_version')}, this mosbench reads "
            f"format {FORMAT_VERSION}; re-run the tokenise stage (mosbench tokenise <dataset>)"
        )
    return meta


def load_split(data_dir, split):
    """Token ids of one split as an int32 array, and the file's metadata."""
    path = Path(data_dir) / f"{split}.parquet"
    meta = read_metadata(path)
    ids = pq.read_table(path, columns=["id"]).column("id").to_numpy()
    if len(ids) != meta["tokens"][split]:
        raise MosbenchError(
            f"{path}: holds {len(ids)} tokens, its metadata says {meta['tokens'][split]}"
        )
    return ids.astype(np.int32, copy=False), meta
