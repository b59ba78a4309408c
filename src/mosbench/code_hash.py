"""Content hashes of the package code each pipeline stage runs.

Snakemake reruns a job when its rule's own script changes, not when the
library code that script calls does. Each rule therefore carries
``code_hash(stage)`` as a param: the hash changes, and Snakemake's params
trigger fires, exactly when the *contents* of the modules that stage runs
change. Touching a file changes nothing; editing the reporting code reruns
only *aggregate*.

What a stage hashes is derived, not listed: the package modules its entry
modules (:data:`ENTRIES`) import, directly or not, at the top of a module or
inside a function, with the packages (``__init__.py``) around them, found by
reading their ``import`` statements. Modules imported by name at run time
(``load_engine``'s ``engines/<framework>/engine.py``, the ease-of-use
inventories) are entries themselves. So a stage hashes exactly the modules
it can run: an edit of the probes reruns no training job, and a
new import is covered the moment it is written.

The stages that run a framework's engine (:data:`FRAMEWORK_STAGES`) hash per
framework, ``code_hash(stage, framework)``: the framework-neutral code plus
what that framework's engine imports. An edit of the PyTorch engine reruns
only PyTorch jobs and the other way round; an edit of the neutral code reruns
both. Modules in :data:`PLUMBING` decide where and how results are written,
logged and reported, not what they are, so editing them reruns nothing
(``snakemake --forcerun RULE`` reruns on purpose).
"""

import ast
import functools
import hashlib
import os
from pathlib import Path

from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError

PACKAGE_ROOT = Path(__file__).resolve().parent
ROOT_ENV = "MOSBENCH_CODE_ROOT"  # hash another copy of the package (the tests edit one)
PACKAGE = "mosbench"

# The engine a job loads by name (mosbench.engines.load_engine).
ENGINE = "engines/{framework}/engine.py"

# Rule name -> the modules its script imports or loads by name (package-relative globs;
# "{framework}": the job's); tests/test_code_hash.py checks them against the scripts.
ENTRIES = {
    "download_corpus": ("data/download.py",),
    "generate_synthetic_corpus": ("data/synthetic.py",),
    "tokenise": ("data/tokenise.py",),
    "train": ("training/train.py", ENGINE),
    "probe": ("measurement/probe.py", ENGINE),
    "data_pipeline": ("measurement/data_pipeline.py", ENGINE),
    "evaluate": ("evaluation/evaluate.py", ENGINE),
    # the ease-of-use inventory of every framework, imported by name; the run it logs
    "aggregate": ("reporting/aggregate.py", "engines/*/inventory.py", "tracking/tracker.py"),
}
STAGES = tuple(ENTRIES)

# Stages whose jobs run one framework's engine: hashed per framework.
FRAMEWORK_STAGES = frozenset(s for s, entries in ENTRIES.items() if ENGINE in entries)

# Modules no stage hashes: paths, config parsing, file plumbing, tracking, progress, the CLI.
PLUMBING = (
    "__init__.py", "cli.py", "code_hash.py", "config.py", "errors.py", "gpu_slots.py",
    "io.py", "paths.py", "tracking/*.py", "faults.py", "progress.py", "study.py", "plan.py",
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
    """The entry globs of ``stage``; with the engine of ``framework`` for FRAMEWORK_STAGES."""
    try:
        patterns = ENTRIES[stage]
    except KeyError:
        raise MosbenchError(
            f"code hash: unknown stage '{stage}'; allowed: {sorted(ENTRIES)}") from None
    if stage not in FRAMEWORK_STAGES:
        if framework is not None:
            raise MosbenchError(f"code hash: stage '{stage}' runs no framework's engine; "
                                f"got framework '{framework}', expected none")
        return patterns
    if framework not in FRAMEWORKS:
        raise MosbenchError(f"code hash: stage '{stage}' runs an engine: expected a framework "
                            f"from {list(FRAMEWORKS)}, got {framework!r}")
    return tuple(p.format(framework=framework) for p in patterns)


def module_file(name, root=None):
    """``mosbench.a.b`` -> ``a/b.py`` or ``a/b/__init__.py`` under ``root``; None if neither."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    rel = "/".join(parts[1:])
    root = code_root(root)
    for candidate in ((f"{rel}.py", f"{rel}/__init__.py") if rel else ("__init__.py",)):
        if (root / candidate).is_file():
            return candidate
    return None


def _packages(rel):
    """The ``__init__.py`` of every package around ``rel``: Python runs them first."""
    parts = rel.split("/")[:-1]
    return {"/".join([*parts[:i], "__init__.py"]) for i in range(len(parts) + 1)}


@functools.lru_cache(maxsize=512)
def _import_candidates(source, rel):
    """Per import statement name in ``source`` (the module ``rel``): the dotted names it may
    mean, the likelier first. Cached on the source text: parsing is most of a code hash's
    time, and a workflow hashes the same files for every stage and framework."""
    module = ".".join([PACKAGE, *Path(rel).with_suffix("").parts])
    package = module if rel.endswith("__init__.py") else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    candidates = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Import):
            candidates.extend((alias.name,) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            # `from mosbench import paths` names a module, `from mosbench.io import x` not
            candidates.extend((f"{base}.{alias.name}", base) for alias in node.names)
    return tuple(candidates)


def imported_modules(rel, root=None):
    """The package modules the module ``rel`` imports anywhere in it (lazy imports too)."""
    root = code_root(root)
    found = set()
    for names in _import_candidates((root / rel).read_bytes(), rel):
        # resolved on every call: which files exist may change, the source's text may not
        found.add(next((f for f in (module_file(n, root) for n in names) if f), None))
    return found - {None}


def closure(entries, root=None):
    """``entries`` and every package module they import, transitively, with their packages."""
    root = code_root(root)
    seen, todo = set(), list(entries)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        todo.extend(_packages(rel) | imported_modules(rel, root))
    return seen


def stage_files(stage, framework=None, root=None):
    """The package-relative paths of the modules ``stage`` (of ``framework``) runs,
    :data:`PLUMBING` aside."""
    root = code_root(root)
    reached = closure(expand(stage_patterns(stage, framework), root), root)
    return sorted(reached - set(expand(PLUMBING, root)))


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
