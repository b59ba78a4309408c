"""Check the tokeniser against the official PTB and WikiText-2 counts, and time it.

Reads the real files from ../shared/data when they are there (they are never
part of the repository) and prints a table; exits 1 on any mismatch, 0 with a
note when the data is absent. Usage: ``.venv/bin/python benchmarks/tokenise_counts.py
[--data-dir DIR]``.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mosbench.data.tokenise import load_split, tokenise

# shared/reference/mos-reference.md (Merity et al. 2016; Mikolov's PTB)
OFFICIAL = {
    "ptb": {"train": 929_589, "valid": 73_760, "test": 82_430, "vocab": 10_000},
    "wikitext-2": {"train": 2_088_628, "valid": 217_646, "test": 245_569, "vocab": 33_278},
}
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(raw_dir, work_dir):
    """Tokenise one real data set; return its metadata and timings."""
    staged = work_dir / "raw"
    staged.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (staged / f"{split}.txt").symlink_to(raw_dir / f"{split}.txt")
    (staged / "source.json").write_text(json.dumps({"name": raw_dir.name, "kind": "archive"}))
    start = time.perf_counter()
    meta = tokenise(staged, work_dir / "data")
    text_to_parquet = time.perf_counter() - start
    start = time.perf_counter()
    for split in ("train", "valid", "test"):
        load_split(work_dir / "data", split)
    parquet_load = time.perf_counter() - start
    return meta, text_to_parquet, parquet_load


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        print(f"no real data at {args.data_dir}: nothing to check")
        return 0
    print("| data set | split | tokens | official | match | text->Parquet s | load s |")
    print("|---|---|---:|---:|---|---:|---:|")
    ok = True
    for name, official in OFFICIAL.items():
        with tempfile.TemporaryDirectory() as tmp:
            meta, seconds, load = measure(args.data_dir / name, Path(tmp))
        counts = {**meta["tokens"], "vocab": meta["vocab_size"]}
        for key, expected in official.items():
            match = counts[key] == expected
            ok &= match
            timing = f"{seconds:.2f} | {load:.3f}" if key == "train" else " | "
            print(f"| {name} | {key} | {counts[key]:,} | {expected:,} | "
                  f"{'yes' if match else 'NO'} | {timing} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
