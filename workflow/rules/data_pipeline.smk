# Streaming vs caching the training data: once per (framework, dataset, device), not per job.


rule data_pipeline:
    input:
        unpack(data_files),
        raw=raw_source,  # the text, to time preprocessing against loading the Parquet
    output:
        record=f"{paths.DATA_PIPELINE}/data_pipeline.json",
    params:
        settings=canonical(config["data_pipeline"]),  # window shape and passes
        code=lambda w: code_hash("data_pipeline", w.framework),  # an edit reruns, a touch not
    threads: config["threads"]
    resources:
        gpu=lambda wildcards: int(wildcards.device == "gpu"),  # a GPU node's host under SLURM
        **data_pipeline_resources(),
    log:
        "logs/data_pipeline/{framework}/{dataset}/{device}.log",
    wildcard_constraints:
        device="cpu|gpu",
    conda:
        framework_env
    script:
        "../scripts/measure_data_pipeline.py"
