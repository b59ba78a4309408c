# Weak scaling (optional, run.weak_scaling): throughput at a fixed per-GPU batch.


rule weak_scaling_probe:
    input:
        unpack(data_files),
    output:
        probe=f"{paths.PROBE}/weak.json",
    params:
        hparams=train_hparams,  # the probe trains: evaluation-only keys rerun no probe
        steps=config["run"]["weak_scaling"]["steps"],
        code=lambda w: code_hash("weak_scaling_probe", w.framework),  # reruns on an edit
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.gpus),
        **probe_resources(),
    log:
        f"logs/weak_scaling/{paths.RUN}.log",
    conda:
        framework_env
    script:
        "../scripts/weak_scaling_probe.py"
