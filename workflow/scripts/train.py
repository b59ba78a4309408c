"""Snakemake wrapper: train one (framework, dataset, model, seed, gpus) job.

Tracking settings (experiment name, the config snapshot) and the prices are read
from ``snakemake.config`` rather than params on purpose: they must not trigger
reruns (aggregate prices every run again with the current prices).
"""

import os
from pathlib import Path

from mosbench.gpu_slots import assign_devices
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
assign_devices(int(snakemake.wildcards.gpus))  # this job's own GPUs, before the framework loads

import sys  # noqa: E402

from mosbench.errors import PAUSED_EXIT_CODE, MosbenchError, TrainingPaused  # noqa: E402
from mosbench.training.train import train  # noqa: E402

# Under SLURM, stop (with a checkpoint) before the time limit; locally nothing kills the job.
# A resource, not a param: a new time limit reruns nothing.
budget = snakemake.resources.get("wall_time_s") if "SLURM_JOB_ID" in os.environ else None

w = snakemake.wildcards
try:
    train(Path(snakemake.input.train).parent, Path(snakemake.output.summary).parent,
          framework=w.framework, dataset=w.dataset, model_name=w.model, seed=int(w.seed),
          gpus=int(w.gpus), hparams=snakemake.params.hparams,
          experiment=snakemake.config["mlflow"]["experiment"], threads=snakemake.threads,
          config_snapshot=snakemake.config, wall_time_s=budget, prices=snakemake.config["cost"],
          code_hash=snakemake.params.code,  # the code this run is for: resume only its checkpoint
          engine_options=snakemake.params.engine)
except TrainingPaused as paused:
    # Checkpointed: a retry (profiles/slurm sets `retries`) or the next run resumes.
    print(f"paused: {paused}", file=sys.stderr)
    sys.exit(PAUSED_EXIT_CODE)
except MosbenchError as error:  # a fault it names (a full disk, a lock held): one line, no trace
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
