"""Snakemake wrapper: tables and plots over every run, and an MLflow run holding them.

The experiment name is read from ``snakemake.config``, not params: it reruns nothing.
"""

from pathlib import Path

from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.reporting.aggregate import aggregate  # noqa: E402
from mosbench.tracking.mlflow_run import log_aggregate  # noqa: E402

written = aggregate(snakemake.input.train, snakemake.input.metrics,
                    Path(snakemake.output.runs).parent, prices=snakemake.params.prices,
                    reference=snakemake.params.reference, probe_files=snakemake.input.probes)
log_aggregate(snakemake.config["mlflow"]["experiment"], written.values())
