"""Snakemake wrapper: train one (dataset, model, seed, gpus) job.

Tracking settings (experiment name, the config snapshot) are read from
``snakemake.config`` rather than params on purpose: they must not trigger reruns.
"""

from pathlib import Path

from mosbench.io import redirect_output

redirect_output(snakemake.log[0])

from mosbench.training.train import train  # noqa: E402

w = snakemake.wildcards
train(Path(snakemake.input.train).parent, Path(snakemake.output.summary).parent,
      dataset=w.dataset, model_name=w.model, seed=int(w.seed), gpus=int(w.gpus),
      hparams=snakemake.params.hparams, experiment=snakemake.config["mlflow"]["experiment"],
      threads=snakemake.threads, config_snapshot=snakemake.config)
