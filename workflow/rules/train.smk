# One training job per (dataset, model, seed, gpus).


rule train:
    input:
        unpack(data_files),
    output:
        weights=f"{paths.TRAIN}/model.weights.h5",
        summary=f"{paths.TRAIN}/train.json",
    params:
        hparams=hparams,
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.gpus),
    log:
        f"logs/train/{paths.RUN}.log",
    benchmark:
        f"results/benchmarks/train/{paths.RUN}.tsv"
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/train.py"
