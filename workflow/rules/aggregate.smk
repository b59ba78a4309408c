# Tables and plots over every run of the grid.


rule aggregate:
    input:
        train=all_runs(f"{paths.TRAIN}/train.json"),
        metrics=all_runs(f"{paths.EVALUATE}/metrics.json"),
    output:
        runs=f"{paths.AGGREGATE}/runs.csv",
        summary_csv=f"{paths.AGGREGATE}/summary.csv",
        summary_md=f"{paths.AGGREGATE}/summary.md",
        plot=f"{paths.AGGREGATE}/valid_ppl.png",
    params:
        code=code_hash("aggregate"),  # reruns on an edit of the code, not on a touch
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/aggregate.py"
