# Valid/test perplexity and prediction speed of each trained model.


rule evaluate:
    input:
        unpack(data_files),
        weights=f"{paths.TRAIN}/model.weights.h5",
        summary=f"{paths.TRAIN}/train.json",
    output:
        metrics=f"{paths.EVALUATE}/metrics.json",
    params:
        hparams=hparams,
        code=code_hash("evaluate"),  # reruns on an edit of the code, not on a touch
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: min(int(wildcards.gpus), 1),
        **evaluate_resources(),
    log:
        f"logs/evaluate/{paths.RUN}.log",
    benchmark:
        f"results/benchmarks/evaluate/{paths.RUN}.tsv"
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/evaluate.py"
