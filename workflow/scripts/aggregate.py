"""Snakemake wrapper: tables and plots over every run."""

from pathlib import Path

from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.reporting.aggregate import aggregate  # noqa: E402

aggregate(snakemake.input.train, snakemake.input.metrics, Path(snakemake.output.runs).parent)
