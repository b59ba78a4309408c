"""Content hashes of the package code each pipeline stage runs.

Snakemake reruns a job when its rule's own script changes, not when the
library code that script calls does. Each rule therefore carries
``code_hash(stage)`` as a param: the hash changes, and Snakemake's params
trigger fires, exactly when the *contents* of the modules behind that stage's
outputs change. Touching a file changes nothing; editing the reporting code
reruns only *aggregate*.

The stages that run a framework's engine (:data:`FRAMEWORK_STAGES`: train,
the weak-scaling probe, evaluate) hash per framework, ``code_hash(stage,
framework)``: the framework-neutral code (the procedure, the engine
interface, the workload) plus that engine's own package,
``engines/<framework>/`` and everything under it. An edit of the PyTorch
engine reruns only PyTorch jobs and the other way round; an edit of the
neutral code reruns both.

A stage lists its own code only. Code that an upstream stage already covers is
not repeated: when an upstream output is rebuilt, Snakemake reruns everything
downstream of it anyway. Modules in :data:`PLUMBING` decide where and how
results are written and logged, not what they are, so editing them reruns
nothing (``snakemake --forcerun RULE`` reruns on purpose).
"""

import hashlib
import os
from pathlib import Path

from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError

PACKAGE_ROOT = Path(__file__).resolve().parent
ROOT_ENV = "MOSBENCH_CODE_ROOT"  # hash another copy of the package (the tests edit one)

# What every engine implements and builds: the interface, how a framework's engine is
# found, and the workload (model names, preset keys) all engines read.
ENGINE_COMMON = ("engines/__init__.py", "engines/interface.py", "workload.py")
# One framework's engine: its package, subpackages included (models/ ...).
ENGINE_CODE = "engines/{framework}/**/*.py"

# The framework-neutral procedure; validation perplexity picks the best weights and
# drives the learning-rate schedule.
TRAIN_CODE = ("training/*.py", "data/batching.py", "evaluation/perplexity.py",
              "measurement/*.py", *ENGINE_COMMON)

# Rule name -> the package modules its outputs depend on (globs relative to the package);
# for FRAMEWORK_STAGES, the neutral part (ENGINE_CODE of the job's framework is added).
STAGES = {
    "download_corpus": ("data/download.py",),
    "generate_synthetic_corpus": ("data/synthetic.py",),
    "tokenise": ("data/tokenise.py",),
    "train": TRAIN_CODE,
    "weak_scaling_probe": TRAIN_CODE,  # the probe times the train step
    # evaluation drives the engine too (already covered upstream by train: listed for clarity)
    "evaluate": ("evaluation/*.py", *ENGINE_COMMON),
    "aggregate": ("reporting/*.py",),
}

# Stages whose jobs run one framework's engine: hashed per framework.
FRAMEWORK_STAGES = frozenset({"train", "weak_scaling_probe", "evaluate"})

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


def stage_patterns(stage, framework=None):
    """The globs ``stage`` hashes; with the engine of ``framework`` for FRAMEWORK_STAGES."""
    try:
        patterns = STAGES[stage]
    except KeyError:
        raise MosbenchError(
            f"code hash: unknown stage '{stage}'; allowed: {sorted(STAGES)}") from None
    if stage not in FRAMEWORK_STAGES:
        if framework is not None:
            raise MosbenchError(f"code hash: stage '{stage}' runs no framework's engine; "
                                f"got framework '{framework}', expected none")
        return patterns
    if framework not in FRAMEWORKS:
        raise MosbenchError(f"code hash: stage '{stage}' runs an engine: expected a framework "
                            f"from {list(FRAMEWORKS)}, got {framework!r}")
    return (*patterns, ENGINE_CODE.format(framework=framework))


def stage_files(stage, framework=None, root=None):
    """The package-relative paths of the modules ``stage`` (of ``framework``) depends on."""
    return expand(stage_patterns(stage, framework), root)


def code_hash(stage, framework=None, root=None):
    """A short hex digest of the paths and contents of ``stage``'s modules.

    ``framework`` names the engine for the stages that run one (FRAMEWORK_STAGES), and
    must be None for the others.
    """
    root = code_root(root)
    digest = hashlib.sha256()
    for rel in stage_files(stage, framework, root):
        content = (root / rel).read_bytes()
        # Length-prefixed, so moving bytes between two files changes the hash too.
        digest.update(f"{rel}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]
