"""Snakemake wrapper: one timed probe (speed, scaling, memory) of a framework at a GPU count."""

from pathlib import Path

from mosbench.gpu_slots import assign_devices
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
assign_devices(int(snakemake.wildcards.gpus))  # this job's own GPUs, before the framework loads

from mosbench.io import write_json  # noqa: E402
from mosbench.measurement.probe import run_probe  # noqa: E402

w, settings = snakemake.wildcards, snakemake.params.settings
result = run_probe(Path(snakemake.input.train).parent, model_name=w.model,
                   hparams=snakemake.params.hparams, seed=settings["seed"], gpus=int(w.gpus),
                   scaling=w.scaling, steps=settings["steps"], warmup=settings["warmup"],
                   repeats=settings["repeats"], threads=snakemake.threads,
                   framework=w.framework, engine_options=snakemake.params.engine)
write_json(snakemake.output.probe, {"framework": w.framework, "dataset": w.dataset,
                                    "model": w.model, "gpus": int(w.gpus), **result})
print({k: v for k, v in result.items() if k != "provenance"})
