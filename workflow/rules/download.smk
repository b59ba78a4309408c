# Raw corpora: archive sources are downloaded and checked, synthetic ones generated.


rule download_corpus:
    output:
        multiext(f"{paths.RAW}/", "train.txt", "valid.txt", "test.txt", "source.json"),
    params:
        source=lambda wildcards: canonical(config["sources"][wildcards.source]),
        code=code_hash("download_corpus"),  # reruns on an edit of the code, not on a touch
    log:
        "logs/download/{source}.log",
    wildcard_constraints:
        source=alternation(sources_of_kind("archive")),
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/download_corpus.py"


rule generate_synthetic_corpus:
    output:
        multiext(f"{paths.RAW}/", "train.txt", "valid.txt", "test.txt", "source.json"),
    params:
        source=lambda wildcards: canonical(config["sources"][wildcards.source]),
        code=code_hash("generate_synthetic_corpus"),
    log:
        "logs/synthetic/{source}.log",
    wildcard_constraints:
        source=alternation(sources_of_kind("synthetic")),
    conda:
        "../../envs/mosbench.yaml"
    script:
        "../scripts/generate_synthetic_corpus.py"
