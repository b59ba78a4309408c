"""Snakemake wrapper: download, check and extract one archive source."""

from pathlib import Path

from mosbench import paths
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.data.download import download_corpus  # noqa: E402

source = snakemake.wildcards.source
download_corpus(source, snakemake.params.source, Path(snakemake.output[0]).parent,
                paths.DOWNLOAD_CACHE.format(source=source))
