# Tables and plots over every run of the grid; `snakemake --report` shows them.


rule aggregate:
    input:
        train=all_runs(f"{paths.TRAIN}/train.json"),
        metrics=all_runs(f"{paths.EVALUATE}/metrics.json"),
        probes=weak_scaling_probes(),
    output:
        runs=report(f"{paths.AGGREGATE}/runs.csv", caption="../report/runs.rst", category="Tables"),
        summary_csv=report(
            f"{paths.AGGREGATE}/summary.csv", caption="../report/summary.rst", category="Tables"
        ),
        summary_md=f"{paths.AGGREGATE}/summary.md",
        scaling_csv=report(
            f"{paths.AGGREGATE}/scaling.csv", caption="../report/scaling.rst", category="Tables"
        ),
        scaling_md=f"{paths.AGGREGATE}/scaling.md",
        published_csv=report(
            f"{paths.AGGREGATE}/published.csv",
            caption="../report/published.rst",
            category="Tables",
        ),
        published_md=f"{paths.AGGREGATE}/published.md",
        ease_of_use_csv=report(
            f"{paths.AGGREGATE}/ease_of_use.csv",
            caption="../report/ease_of_use.rst",
            category="Ease of use",
        ),
        ease_of_use_md=f"{paths.AGGREGATE}/ease_of_use.md",
        valid_ppl_png=report(
            f"{paths.AGGREGATE}/valid_ppl.png",
            caption="../report/valid_ppl.rst",
            category="Plots",
        ),
        scaling_png=report(
            f"{paths.AGGREGATE}/scaling.png", caption="../report/scaling_plot.rst", category="Plots"
        ),
        memory_png=report(
            f"{paths.AGGREGATE}/memory.png", caption="../report/memory.rst", category="Plots"
        ),
        latency_png=report(
            f"{paths.AGGREGATE}/latency.png", caption="../report/latency.rst", category="Plots"
        ),
    params:
        prices=canonical(config["cost"]),  # a new price reruns only this job
        reference=lambda wildcards: canonical(reference_results()),
        code=code_hash("aggregate"),  # reruns on an edit of the code, not on a touch
    log:
        "logs/aggregate/aggregate.log",
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/aggregate.py"
