"""Snakemake wrapper: tables and plots over every run, and an MLflow run holding them
(in experiment ``<mlflow.experiment>-aggregate``, apart from the training runs).

The experiment name is read from ``snakemake.config``, not params: it reruns nothing.
"""

from pathlib import Path

from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.reporting.aggregate import aggregate  # noqa: E402
from mosbench.tracking.tracker import log_aggregate  # noqa: E402

out_dir = Path(snakemake.output.runs).parent
written = aggregate(snakemake.input.train, snakemake.input.metrics, out_dir,
                    prices=snakemake.params.prices, reference=snakemake.params.reference,
                    probe_files=snakemake.input.probes,
                    data_pipeline_files=snakemake.input.data_pipeline,
                    evaluate_benchmarks=snakemake.input.evaluate_benchmarks,
                    comparison=snakemake.params.comparison)
# with the tracking store away the calls wait in out_dir for `mosbench replay-tracking`
log_aggregate(snakemake.config["mlflow"]["experiment"], written.values(), out_dir)
