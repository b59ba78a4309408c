# One training job per (framework, dataset, model, seed, gpus).


rule train:
    input:
        unpack(data_files),
    output:
        weights=f"{paths.TRAIN}/model.weights.npz",  # named NumPy arrays, any framework
        summary=f"{paths.TRAIN}/train.json",
    params:
        hparams=train_hparams,  # per (dataset, model), evaluation-only keys aside (workload.py)
        engine=engine_options,
        # the neutral code and this framework's engine: an engine edit reruns its jobs only
        code=lambda w: code_hash("train", w.framework),
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.gpus),
        **train_resources(),  # SLURM: GPU model, CPUs, memory, time limit; none rerun anything
    log:
        f"logs/train/{paths.RUN}.log",
    benchmark:
        f"results/benchmarks/train/{paths.RUN}.tsv"
    conda:
        framework_env
    script:
        "../scripts/train.py"
