# Speed, multi-GPU scaling and memory: bounded timed probes at every GPU count of run.gpus.


rule probe:
    input:
        unpack(data_files),
        # the previous framework's probe of the cell: they run one after another, and in
        # one SLURM job (the group below), so their ratio is measured on one node
        previous=previous_probe,
    output:
        probe=f"{paths.PROBE}/probe.json",
    params:
        hparams=train_hparams,  # the probe trains: evaluation-only keys rerun no probe
        engine=engine_options,
        settings=lambda w: canonical(probe_settings()),  # steps, warm-up, repeats, seed
        code=lambda w: code_hash("probe", w.framework),  # reruns on an edit, not a touch
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.gpus),
        **probe_resources(),
    group:
        "probe-{dataset}-{model}-{scaling}-gpus{gpus}"
    log:
        f"logs/probe/{paths.PROBE.removeprefix('results/probe/')}.log",
    wildcard_constraints:
        scaling="strong|weak",
    conda:
        framework_env
    script:
        "../scripts/probe.py"
