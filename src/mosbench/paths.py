"""Where each stage writes, relative to the working directory.

The Snakemake rules build their output patterns from these templates and the
``mosbench`` command uses them as defaults, so both agree on the layout.
"""

RAW = "results/raw/{source}"  # train/valid/test.txt + source.json
DOWNLOAD_CACHE = "results/download/{source}"  # archives, kept so reruns need no network
DATA = "results/data/{dataset}"  # {split}.parquet + vocab.parquet
RUN = "{dataset}/{model}/seed{seed}-gpus{gpus}"
TRAIN = "results/train/" + RUN  # model.weights.h5 + train.json
EVALUATE = "results/evaluate/" + RUN  # metrics.json
PROBE = "results/scaling/" + RUN  # weak.json: the weak-scaling probe (optional)
AGGREGATE = "results/aggregate"
