# One training job per (dataset, model, seed, gpus).


rule train:
    input:
        unpack(data_files),
        raw=raw_source,  # the text, to time preprocessing against loading the Parquet
    output:
        weights=f"{paths.TRAIN}/model.weights.h5",
        summary=f"{paths.TRAIN}/train.json",
    params:
        hparams=hparams,  # per (dataset, model): a new value reruns only that model's jobs
        code=code_hash("train"),  # reruns on an edit of the code, not on a touch
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.gpus),
        **train_resources(),  # SLURM: GPU model, CPUs, memory, time limit; none rerun anything
    log:
        f"logs/train/{paths.RUN}.log",
    benchmark:
        f"results/benchmarks/train/{paths.RUN}.tsv"
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/train.py"
