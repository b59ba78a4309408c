"""Snakemake wrapper: evaluate one trained model and log into its MLflow run."""

import os
from pathlib import Path

from mosbench.gpu_slots import assign_devices
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
assign_devices(min(int(snakemake.wildcards.gpus), 1))  # one device, before the framework loads

import sys  # noqa: E402

from mosbench.errors import PAUSED_EXIT_CODE, TrainingPaused  # noqa: E402
from mosbench.evaluation.evaluate import evaluate  # noqa: E402

# Under SLURM, stop (saving where it is) before the time limit, as train does; a resource,
# not a param: a new time limit reruns nothing.
budget = snakemake.resources.get("wall_time_s") if "SLURM_JOB_ID" in os.environ else None

try:
    evaluate(Path(snakemake.input.train).parent, Path(snakemake.input.summary).parent,
             snakemake.output.metrics, model_name=snakemake.wildcards.model,
             hparams=snakemake.params.hparams,
             experiment=snakemake.config["mlflow"]["experiment"],
             gpus=int(snakemake.wildcards.gpus), threads=snakemake.threads,
             framework=snakemake.wildcards.framework, wall_time_s=budget,
             engine_options=snakemake.params.engine)
except TrainingPaused as paused:  # EvaluationPaused: its progress is saved
    # A retry (profiles/slurm sets `retries`) or the next run goes on where it stopped.
    print(f"paused: {paused}", file=sys.stderr)
    sys.exit(PAUSED_EXIT_CODE)
