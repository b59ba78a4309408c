"""The code hashes that make a rule rerun on an edit of its package code, and only then."""

import ast
import os
import re
import shutil

import pytest

from conftest import REPO
from mosbench.code_hash import (
    FRAMEWORK_STAGES,
    PACKAGE_ROOT,
    PLUMBING,
    ROOT_ENV,
    STAGES,
    UPSTREAM,
    code_hash,
    expand,
    stage_files,
)
from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError

# Every hash a workflow uses: (stage, framework), the framework None where a stage runs no engine.
JOBS = [(stage, framework) for stage in STAGES
        for framework in (FRAMEWORKS if stage in FRAMEWORK_STAGES else (None,))]


@pytest.fixture
def code(tmp_path):
    """A copy of the package to edit."""
    root = tmp_path / "mosbench"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def hashes(root):
    return {job: code_hash(*job, root=root) for job in JOBS}


def changed_since(before, root):
    """The (stage, framework) hashes that differ from ``before``."""
    return {job for job, digest in hashes(root).items() if digest != before[job]}


def test_every_stage_hashes_existing_modules_into_a_short_digest():
    for job in JOBS:
        assert stage_files(*job), job
        assert re.fullmatch(r"[0-9a-f]{16}", code_hash(*job))
    assert "engines/tensorflow/models/mixture_of_softmaxes.py" in stage_files("train", "tensorflow")
    assert {"reporting/aggregate.py", "reporting/plots.py"} <= set(stage_files("aggregate"))
    assert all(f.startswith("reporting/") for f in stage_files("aggregate"))


def test_the_engine_stages_hash_the_neutral_code_and_their_own_engine_only():
    assert FRAMEWORK_STAGES == {"train", "weak_scaling_probe", "evaluate"}
    for stage in FRAMEWORK_STAGES:
        files = {f: set(stage_files(stage, f)) for f in FRAMEWORKS}
        shared = files["tensorflow"] & files["pytorch"]
        assert {"engines/__init__.py", "engines/interface.py", "workload.py"} <= shared
        for framework in FRAMEWORKS:
            own = files[framework] - shared
            assert own and all(f.startswith(f"engines/{framework}/") for f in own), own
            assert f"engines/{framework}/models/__init__.py" in own  # subpackages too
        assert not any(f.startswith("engines/") and f.count("/") > 1 for f in shared)
    assert {"training/train.py", "measurement/scaling_probe.py"} <= set(
        stage_files("train", "pytorch"))
    # the framework's whole engine package: what a job of it can import
    assert set(stage_files("train", "tensorflow")) >= {
        p.relative_to(PACKAGE_ROOT).as_posix()
        for p in (PACKAGE_ROOT / "engines" / "tensorflow").rglob("*.py")}


def test_the_hash_follows_content_not_location_or_mtime(code):
    before = hashes(code)
    assert before == hashes(PACKAGE_ROOT)  # a copy hashes the same
    for path in code.rglob("*.py"):
        os.utime(path, (1e9, 2e9))
    assert hashes(code) == before


def engine_jobs(framework):
    return {(stage, framework) for stage in FRAMEWORK_STAGES}


def test_an_edit_changes_exactly_the_stages_that_run_the_module(code):
    before = hashes(code)
    lstm = code / "engines" / "tensorflow" / "models" / "lstm.py"
    lstm.write_text(lstm.read_text() + "\n# an edit\n")
    # only TensorFlow's jobs; aggregate reruns through its inputs
    assert changed_since(before, code) == engine_jobs("tensorflow")

    report = code / "reporting" / "aggregate.py"
    report.write_text(report.read_text().replace("def ", "def  ", 1))
    assert changed_since(before, code) == engine_jobs("tensorflow") | {("aggregate", None)}

    perplexity = code / "evaluation" / "perplexity.py"
    perplexity.write_text(perplexity.read_text() + "\n")
    after = hashes(code)
    assert after[("evaluate", "pytorch")] != before[("evaluate", "pytorch")]
    assert after[("tokenise", None)] == before[("tokenise", None)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_engine_edit_changes_only_that_frameworks_hashes(code, framework):
    before = hashes(code)
    module = sorted((code / "engines" / framework).rglob("*.py"))[-1]  # any of its modules
    module.write_text(module.read_text() + "\n# an edit\n")
    assert changed_since(before, code) == engine_jobs(framework)
    new = code / "engines" / framework / "models" / "new_layer.py"  # a new file in a subpackage
    before = hashes(code)
    new.write_text("x = 1\n")
    assert changed_since(before, code) == engine_jobs(framework)


@pytest.mark.parametrize("module", ["training/bptt.py", "engines/interface.py", "workload.py",
                                    "engines/__init__.py"])
def test_a_neutral_edit_changes_both_frameworks_hashes(code, module):
    before = hashes(code)
    (code / module).write_text((code / module).read_text() + "\n# an edit\n")
    changed = changed_since(before, code)
    assert {("train", f) for f in FRAMEWORKS} <= changed
    assert {job[0] for job in changed} <= FRAMEWORK_STAGES


def test_a_module_moved_between_files_changes_the_hash(code):
    before = code_hash("aggregate", root=code)
    (code / "reporting" / "__init__.py").write_text("x = 1\n")
    assert code_hash("aggregate", root=code) != before


def test_the_root_comes_from_the_environment(code, monkeypatch):
    (code / "reporting" / "aggregate.py").write_text("# replaced\n")
    monkeypatch.setenv(ROOT_ENV, str(code))
    assert code_hash("aggregate") == code_hash("aggregate", root=code) != code_hash(
        "aggregate", root=PACKAGE_ROOT)


def test_unknown_stages_and_vanished_modules_are_errors(code):
    with pytest.raises(MosbenchError, match="unknown stage 'plot'"):
        code_hash("plot")
    shutil.rmtree(code / "reporting")
    with pytest.raises(MosbenchError, match="'reporting/\\*.py' matches no file"):
        code_hash("aggregate", root=code)
    shutil.rmtree(code / "engines" / "pytorch")
    with pytest.raises(MosbenchError, match="'engines/pytorch/\\*\\*/\\*.py' matches no file"):
        code_hash("train", "pytorch", root=code)


def test_a_framework_is_needed_exactly_where_a_stage_runs_an_engine():
    with pytest.raises(MosbenchError, match="stage 'train' runs an engine: expected a framework "
                                            "from \\['tensorflow', 'pytorch'\\], got None"):
        code_hash("train")
    with pytest.raises(MosbenchError, match="got 'jax'"):
        code_hash("evaluate", "jax")
    with pytest.raises(MosbenchError, match="stage 'aggregate' runs no framework's engine"):
        code_hash("aggregate", "tensorflow")


def _module_file(name):
    """``mosbench.a.b`` -> ``a/b.py`` or ``a/b/__init__.py``; None outside the package."""
    if not (name == "mosbench" or name.startswith("mosbench.")):
        return None
    rel = "/".join(name.split(".")[1:])
    for candidate in (f"{rel}.py", f"{rel}/__init__.py" if rel else "__init__.py"):
        if (PACKAGE_ROOT / candidate).is_file():
            return candidate
    return None


def _imports(path):
    """Package modules ``path`` imports, anywhere in it (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(_module_file(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from mosbench import paths` names a module
                found.add(_module_file(f"{node.module}.{alias.name}")
                          or _module_file(node.module))
    return found - {None}


def _closure(path):
    seen, todo = set(), list(_imports(path))
    while todo:
        rel = todo.pop()
        if rel not in seen:
            seen.add(rel)
            todo.extend(_imports(PACKAGE_ROOT / rel))
    return seen


def _covered(stage, framework):
    """Hashed by ``stage`` or upstream of it; ``framework`` None (aggregate): every one's."""
    if stage in FRAMEWORK_STAGES:
        files = set(stage_files(stage, framework))
    else:
        files = set(stage_files(stage))
    for upstream in UPSTREAM[stage]:
        for each in (FRAMEWORKS if framework is None else (framework,)):
            files |= _covered(upstream, each)
    return files


# Modules imported by name at run time (importlib), which the import graph does not show.
RUNTIME_IMPORTS = {stage: "engines/{framework}/engine.py" for stage in FRAMEWORK_STAGES}
RUNTIME_IMPORTS["aggregate"] = "engines/{framework}/inventory.py"  # the ease-of-use inventory


@pytest.mark.parametrize(("stage", "framework"), JOBS)
def test_each_stage_hashes_every_module_its_script_reaches(stage, framework):
    """Whatever the rule's script imports, directly or not, is hashed by it, by a stage
    upstream of it (whose rerun reruns it) or is plumbing that cannot change a result."""
    reached = _closure(REPO / "workflow" / "scripts" / f"{stage}.py")
    if stage in RUNTIME_IMPORTS:
        for each in (FRAMEWORKS if framework is None else (framework,)):
            module = RUNTIME_IMPORTS[stage].format(framework=each)
            if (PACKAGE_ROOT / module).is_file():  # an engine still being written may lack it
                reached |= {module} | _closure(PACKAGE_ROOT / module)
    missing = reached - _covered(stage, framework) - set(expand(PLUMBING))
    assert not missing, f"{stage} runs {sorted(missing)}: add them to STAGES or PLUMBING"


def test_every_rule_with_a_script_carries_its_code_hash():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    blocks = re.split(r"^rule ", rules, flags=re.M)[1:]
    scripted = {b.split(":")[0]: b for b in blocks if "script:" in b}
    assert set(scripted) == set(STAGES) == set(UPSTREAM)
    for name, block in scripted.items():
        if name in FRAMEWORK_STAGES:  # per job: the job's framework
            assert f'code=lambda w: code_hash("{name}", w.framework)' in block, name
            assert re.search(r"conda:\s+framework_env\n", block), name
        else:
            assert f'code=code_hash("{name}")' in block, name
