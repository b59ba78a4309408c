"""What each run ran on, and keeping seeds apart that ran on different things.

Each train.json carries a ``provenance`` block (framework and library
versions, GPU and CPU model, host, Python, git commit). Seeds of one cell
(dataset, model, gpus, framework) are averaged only when they ran in the same
*environment*: the same processor (the GPU model on a GPU job, the CPU model
on a CPU job) and the same framework, companion-library (Keras, ...), CUDA and
cuDNN versions. A cell whose seeds ran in two environments becomes two rows, and
the tables say why.
Runs written before provenance was recorded form one environment, "unknown".
"""

PROVENANCE_KEYS = ("framework", "framework_version", "libraries", "cuda_version",
                   "cudnn_version", "nvidia_driver", "gpu_model", "gpu_count", "cpu_model",
                   "hostname", "python_version", "git_commit", "git_dirty")
# runs.csv columns: the block's keys but `framework`, which is the run's own column already
PROVENANCE_COLUMNS = [k for k in PROVENANCE_KEYS if k != "framework"]
SOFTWARE = (("framework_version", ""), ("libraries", ""), ("cuda_version", "CUDA "),
            ("cudnn_version", "cuDNN "))
UNKNOWN = "unknown"


def provenance_of(train_data):
    """The run's provenance as runs.csv columns (None where absent or never recorded)."""
    return {k: _block(train_data).get(k) for k in PROVENANCE_COLUMNS}


def _block(train_data):
    """The run's provenance block; one written before ``libraries`` (a ``keras_version``)
    read as it would be written now."""
    block = train_data.get("provenance")
    if not isinstance(block, dict):
        return {}
    if "libraries" not in block and block.get("keras_version"):
        block = {**block, "libraries": f"keras {block['keras_version']}"}
    return block


def hardware_of(train_data):
    """The processor that ran the job: GPU model for gpus >= 1, else the CPU model."""
    block = train_data.get("provenance")
    if not isinstance(block, dict):
        return UNKNOWN
    model = block.get("gpu_model") if train_data.get("gpus") else block.get("cpu_model")
    return str(model) if model else UNKNOWN


def environment_of(train_data):
    """A run's environment label: its processor and the library versions it ran with."""
    if not isinstance(train_data.get("provenance"), dict):
        return UNKNOWN
    block = _block(train_data)
    versions = [f"{prefix}{block[key]}" for key, prefix in SOFTWARE if block.get(key)]
    if versions and block.get("framework_version"):
        versions[0] = f"{train_data.get('framework')} {versions[0]}"
    return "; ".join([hardware_of(train_data)] + versions)


def split_notes(runs, cell):
    """One sentence per cell (``cell``: column names) whose seeds ran in several environments."""
    notes = []
    for key, group in runs.groupby(cell, sort=True):
        environments = group.groupby("environment", sort=True)["seed"].apply(sorted)
        if len(environments) < 2:
            continue
        where = "; ".join(f"seeds {', '.join(map(str, seeds))} on {env}"
                          for env, seeds in environments.items())
        notes.append(f"{' / '.join(map(str, key))}: split into {len(environments)} rows, "
                     f"not averaged, because its seeds ran on different hardware or library "
                     f"versions ({where}).")
    return notes


def environment_tags(table):
    """{environment: short tag} (E1, E2, ...) in order of first appearance in ``table``."""
    tags = {}
    for env in table["environment"]:
        tags.setdefault(env, f"E{len(tags) + 1}")
    return tags


def is_split(table, cell):
    """Whether some cell of ``table`` (a runs or summary table) spans several environments."""
    if table.empty or "environment" not in table:
        return False
    return bool((table.groupby(cell)["environment"].nunique() > 1).any())


def environment_legend(tags):
    """Markdown lines naming each environment tag."""
    return [f"- {tag}: {env}" for env, tag in tags.items()]

