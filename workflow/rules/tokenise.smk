# Text -> int32 ids in Parquet, one file per split plus the vocabulary.


rule tokenise:
    input:
        unpack(raw_files),
    output:
        multiext(f"{paths.DATA}/", *(f"{s}.parquet" for s in SPLITS), "vocab.parquet"),
    params:
        subset=lambda wildcards: config["datasets"][wildcards.dataset]["subset"],
        vocab_size=lambda wildcards: config["datasets"][wildcards.dataset]["vocab_size"],
        code=code_hash("tokenise"),  # reruns on an edit of the code, not on a touch
    log:
        "logs/tokenise/{dataset}.log",
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/tokenise.py"
