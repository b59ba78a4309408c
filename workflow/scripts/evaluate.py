"""Snakemake wrapper: evaluate one trained model and log into its MLflow run."""

from pathlib import Path

from mosbench.gpu_slots import assign_devices
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
assign_devices(min(int(snakemake.wildcards.gpus), 1))  # one device, before the framework loads

from mosbench.evaluation.evaluate import evaluate  # noqa: E402

evaluate(Path(snakemake.input.train).parent, Path(snakemake.input.summary).parent,
         snakemake.output.metrics, model_name=snakemake.wildcards.model,
         hparams=snakemake.params.hparams, experiment=snakemake.config["mlflow"]["experiment"],
         gpus=int(snakemake.wildcards.gpus), threads=snakemake.threads,
         framework=snakemake.wildcards.framework)
