# Valid/test perplexity and prediction speed of each trained model.


rule evaluate:
    input:
        unpack(data_files),
        weights=f"{paths.TRAIN}/model.weights.npz",
        summary=f"{paths.TRAIN}/train.json",
    output:
        metrics=f"{paths.EVALUATE}/metrics.json",
    params:
        hparams=hparams,  # the whole preset: an evaluation-only key reruns only this
        engine=engine_options,
        code=lambda w: code_hash("evaluate", w.framework),  # an edit reruns, a touch does not
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: min(int(wildcards.gpus), 1),
        **evaluate_resources(),
    log:
        f"logs/evaluate/{paths.RUN}.log",
    benchmark:
        f"results/benchmarks/evaluate/{paths.RUN}.tsv"
    conda:
        framework_env
    script:
        "../scripts/evaluate.py"
