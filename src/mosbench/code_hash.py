"""Content hashes of the package code each pipeline stage runs.

Snakemake reruns a job when its rule's own script changes, not when the
library code that script calls does. Each rule therefore carries
``code_hash(stage)`` as a param: the hash changes, and Snakemake's params
trigger fires, exactly when the *contents* of the modules behind that stage's
outputs change. Touching a file changes nothing; editing the reporting code
reruns only *aggregate*.

A stage lists its own code only. Code that an upstream stage already covers is
not repeated: when an upstream output is rebuilt, Snakemake reruns everything
downstream of it anyway. Modules in :data:`PLUMBING` decide where and how
results are written and logged, not what they are, so editing them reruns
nothing (``snakemake --forcerun RULE`` reruns on purpose).
"""

import hashlib
import os
from pathlib import Path

from mosbench.errors import MosbenchError

PACKAGE_ROOT = Path(__file__).resolve().parent
ROOT_ENV = "MOSBENCH_CODE_ROOT"  # hash another copy of the package (the tests edit one)

# validation perplexity picks the best weights and drives the learning-rate schedule
TRAIN_CODE = ("engines/tensorflow/models/*.py", "workload.py", "training/*.py",
              "data/batching.py", "evaluation/perplexity.py",
              "measurement/*.py")

# Rule name -> the package modules its outputs depend on (globs relative to the package).
STAGES = {
    "download_corpus": ("data/download.py",),
    "generate_synthetic_corpus": ("data/synthetic.py",),
    "tokenise": ("data/tokenise.py",),
    "train": TRAIN_CODE,
    "weak_scaling_probe": TRAIN_CODE,  # the probe times the train step
    "evaluate": ("evaluation/*.py",),
    "aggregate": ("reporting/*.py",),
}

# Which stages feed which: a module that an upstream stage hashes need not be hashed again.
UPSTREAM = {
    "download_corpus": (),
    "generate_synthetic_corpus": (),
    "tokenise": ("download_corpus", "generate_synthetic_corpus"),
    "train": ("tokenise",),
    "weak_scaling_probe": ("tokenise",),
    "evaluate": ("train",),
    "aggregate": ("evaluate", "weak_scaling_probe"),
}

# Modules no stage hashes: paths, config parsing, file plumbing, tracking, the CLI.
PLUMBING = (
    "__init__.py", "cli.py", "code_hash.py", "config.py", "errors.py", "gpu_slots.py",
    "io.py", "paths.py", "tracking/*.py", "faults.py",
)


def code_root(root=None):
    """The package folder to hash: ``root``, else ``$MOSBENCH_CODE_ROOT``, else this package."""
    return Path(root or os.environ.get(ROOT_ENV) or PACKAGE_ROOT)


def expand(patterns, root=None):
    """The files ``patterns`` name under ``root``, as sorted package-relative POSIX paths."""
    root = code_root(root)
    found = set()
    for pattern in patterns:
        matches = [p for p in root.glob(pattern) if p.is_file()]
        if not matches:
            raise MosbenchError(f"code hash: '{pattern}' matches no file under {root}")
        found.update(p.relative_to(root).as_posix() for p in matches)
    return sorted(found)


def stage_files(stage, root=None):
    """The package-relative paths of the modules ``stage`` depends on."""
    try:
        patterns = STAGES[stage]
    except KeyError:
        raise MosbenchError(
            f"code hash: unknown stage '{stage}'; allowed: {sorted(STAGES)}") from None
    return expand(patterns, root)


def code_hash(stage, root=None):
    """A short hex digest of the paths and contents of ``stage``'s modules."""
    root = code_root(root)
    digest = hashlib.sha256()
    for rel in stage_files(stage, root):
        content = (root / rel).read_bytes()
        # Length-prefixed, so moving bytes between two files changes the hash too.
        digest.update(f"{rel}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]
