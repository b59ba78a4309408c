"""Where each stage writes, relative to the working directory.

The Snakemake rules build their output patterns from these templates and the
``mosbench`` command uses them as defaults, so both agree on the layout.
"""

RAW = "results/raw/{source}"  # train/valid/test.txt + source.json
DOWNLOAD_CACHE = "results/download/{source}"  # archives, kept so reruns need no network
DATA = "results/data/{dataset}"  # {split}.parquet + vocab.parquet
# One job of the grid: every framework's results, logs and benchmarks sit in a tree of their own.
RUN = "{framework}/{dataset}/{model}/seed{seed}-gpus{gpus}"
TRAIN = "results/train/" + RUN  # model.weights.npz (named NumPy arrays) + train.json
EVALUATE = "results/evaluate/" + RUN  # metrics.json
# probe.json: a timed probe (speed, scaling, memory) at one GPU count and scaling mode
PROBE = "results/probe/{framework}/{dataset}/{model}/{scaling}-gpus{gpus}"
# data_pipeline.json: streaming vs caching, once per framework, data set and device (cpu, gpu)
DATA_PIPELINE = "results/data_pipeline/{framework}/{dataset}/{device}"
AGGREGATE = "results/aggregate"
# The aggregate's files by name (the rule's named outputs).
AGGREGATE_OUTPUTS = {
    "verdict_md": "verdict.md", "verdict_html": "verdict.html",
    "frameworks_csv": "frameworks.csv", "frameworks_md": "frameworks.md",
    "frameworks_html": "frameworks.html", "probes_csv": "probes.csv",
    "result_cost_csv": "result_cost.csv", "result_cost_md": "result_cost.md",
    "result_cost_html": "result_cost.html", "result_cost_png": "result_cost.png",
    "runs": "runs.csv", "summary_csv": "summary.csv", "summary_md": "summary.md",
    "summary_html": "summary.html", "scaling_csv": "scaling.csv", "scaling_md": "scaling.md",
    "scaling_html": "scaling.html", "published_csv": "published.csv",
    "published_md": "published.md", "published_html": "published.html",
    "ease_of_use_csv": "ease_of_use.csv", "ease_of_use_md": "ease_of_use.md",
    "ease_of_use_html": "ease_of_use.html",
    "valid_ppl_png": "valid_ppl.png", "scaling_png": "scaling.png",
    "memory_png": "memory.png", "latency_png": "latency.png",
}
# A training job's outputs in its TRAIN folder (the evaluate stage reads both).
WEIGHTS = "model.weights.npz"  # best by validation (named NumPy arrays, canonical names)
SUMMARY = "train.json"
