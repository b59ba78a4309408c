"""Snakemake wrapper: generate one synthetic corpus with a known entropy rate."""

from pathlib import Path

from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.data.synthetic import generate_synthetic  # noqa: E402

meta = generate_synthetic(snakemake.wildcards.source, snakemake.params.source,
                          Path(snakemake.output[0]).parent)
print(f"best achievable perplexity: {meta['optimal_ppl']:.3f}")
