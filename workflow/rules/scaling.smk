# Weak scaling (optional, run.weak_scaling): throughput at a fixed per-GPU batch.


rule weak_scaling_probe:
    input:
        unpack(data_files),
    output:
        probe=f"{paths.PROBE}/weak.json",
    params:
        hparams=hparams,
        steps=config["run"]["weak_scaling"]["steps"],
        code=code_hash("weak_scaling_probe"),  # reruns on an edit of the code, not on a touch
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.gpus),
        **probe_resources(),
    log:
        f"logs/weak_scaling/{paths.RUN}.log",
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/weak_scaling_probe.py"
