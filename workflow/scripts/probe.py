"""Snakemake wrapper: time training steps at a fixed per-GPU batch (weak scaling)."""

from pathlib import Path

from mosbench.gpu_slots import assign_devices
from mosbench.io import redirect_output

redirect_output(snakemake.log[0])
assign_devices(int(snakemake.wildcards.gpus))  # this job's own GPUs, before the framework loads

from mosbench.io import write_json  # noqa: E402
from mosbench.measurement.scaling_probe import weak_scaling_probe  # noqa: E402

w = snakemake.wildcards
result = weak_scaling_probe(Path(snakemake.input.train).parent, model_name=w.model,
                            hparams=snakemake.params.hparams, seed=int(w.seed),
                            gpus=int(w.gpus), steps=snakemake.params.steps,
                            threads=snakemake.threads, framework=w.framework)
write_json(snakemake.output.probe, {"framework": w.framework, "dataset": w.dataset,
                                    "model": w.model, "seed": int(w.seed), "gpus": int(w.gpus),
                                    **result})
print(result)
