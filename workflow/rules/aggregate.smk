# Tables and plots over every run of the grid; `snakemake --report` shows them.


rule aggregate:
    input:
        train=all_runs(f"{paths.TRAIN}/train.json"),
        metrics=all_runs(f"{paths.EVALUATE}/metrics.json"),
        probes=probe_files(),  # speed, scaling and memory per GPU count
        data_pipeline=data_pipeline_files(),  # joined to each run by framework, dataset, device
        evaluate_benchmarks=all_runs(f"results/benchmarks/evaluate/{paths.RUN}.tsv"),  # cost
    output:
        **aggregate_outputs(),
    params:
        prices=canonical(config["cost"]),  # a new price reruns only this job
        reference=lambda wildcards: canonical(reference_results()),
        # the baseline, the primary endpoints' GPU count, the equivalence margins
        comparison=canonical(study.comparison_settings(config)),
        code=code_hash("aggregate"),  # reruns on an edit of the code, not on a touch
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../../envs/reporting.yaml"
    script:
        "../scripts/aggregate.py"
