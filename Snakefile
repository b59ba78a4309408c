# mosbench: download -> tokenise -> train -> evaluate -> aggregate, each training job
# once per framework (run.frameworks: TensorFlow, PyTorch); beside training, the data
# pipeline is measured once per framework, data set and device (data_pipeline.smk).
# `make run` runs config/demo.yaml on the CPU; `snakemake --profile profiles/slurm`
# runs the paper's grid (config/config.yaml) on a cluster. README.md says more.

import os

from snakemake.utils import min_version, validate

from mosbench.config import SCHEMA_PATH, check_consistency, typed_overrides

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


# The package's schema, shared with the `mosbench` command: one definition of a valid config.
# `--config 'run={seeds: [1, 2]}'` arrives with every nested scalar a string: typed first.
typed_overrides(config)
validate(config, str(SCHEMA_PATH))
check_consistency(config)


include: "workflow/rules/common.smk"


wildcard_constraints:
    framework=alternation(FRAMEWORKS),
    dataset=alternation(config["datasets"]),
    model=alternation(model_names()),
    seed=r"\d+",
    gpus=r"\d+",


include: "workflow/rules/download.smk"
include: "workflow/rules/tokenise.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/data_pipeline.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    input:
        rules.aggregate.output,
    default_target: True
