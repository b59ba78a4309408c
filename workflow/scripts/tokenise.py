"""Snakemake wrapper: tokenise one data set to Parquet."""

from pathlib import Path

from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.data.tokenise import tokenise  # noqa: E402

meta = tokenise(Path(snakemake.input.source_json).parent, Path(snakemake.output[0]).parent,
                subset=snakemake.params.subset, expected_vocab=snakemake.params.vocab_size)
print(f"tokens {meta['tokens']}, vocabulary {meta['vocab_size']}")
