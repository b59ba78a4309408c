"""The code hashes that make a rule rerun on an edit of its package code, and only then."""

import ast
import os
import re
import shutil

import pytest

from conftest import REPO
from mosbench.code_hash import (
    PACKAGE_ROOT,
    PLUMBING,
    ROOT_ENV,
    STAGES,
    UPSTREAM,
    code_hash,
    expand,
    stage_files,
)
from mosbench.errors import MosbenchError


@pytest.fixture
def code(tmp_path):
    """A copy of the package to edit."""
    root = tmp_path / "mosbench"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def hashes(root):
    return {stage: code_hash(stage, root) for stage in STAGES}


def test_every_stage_hashes_existing_modules_into_a_short_digest():
    for stage in STAGES:
        assert stage_files(stage), stage
        assert re.fullmatch(r"[0-9a-f]{16}", code_hash(stage))
    assert "engines/tensorflow/models/mixture_of_softmaxes.py" in stage_files("train")
    assert {"reporting/aggregate.py", "reporting/plots.py"} <= set(stage_files("aggregate"))
    assert all(f.startswith("reporting/") for f in stage_files("aggregate"))


def test_the_hash_follows_content_not_location_or_mtime(code):
    before = hashes(code)
    assert before == hashes(PACKAGE_ROOT)  # a copy hashes the same
    for path in code.rglob("*.py"):
        os.utime(path, (1e9, 2e9))
    assert hashes(code) == before


def test_an_edit_changes_exactly_the_stages_that_run_the_module(code):
    before = hashes(code)
    lstm = code / "engines" / "tensorflow" / "models" / "lstm.py"
    lstm.write_text(lstm.read_text() + "\n# an edit\n")
    changed = {s for s, h in hashes(code).items() if h != before[s]}
    # evaluate and aggregate rerun through their inputs; the probe builds the model too
    assert changed == {"train", "weak_scaling_probe"}

    report = code / "reporting" / "aggregate.py"
    report.write_text(report.read_text().replace("def ", "def  ", 1))
    changed = {s for s, h in hashes(code).items() if h != before[s]}
    assert changed == {"train", "weak_scaling_probe", "aggregate"}

    perplexity = code / "evaluation" / "perplexity.py"
    perplexity.write_text(perplexity.read_text() + "\n")
    after = hashes(code)
    assert after["evaluate"] != before["evaluate"] and after["tokenise"] == before["tokenise"]


def test_a_module_moved_between_files_changes_the_hash(code):
    before = code_hash("aggregate", code)
    (code / "reporting" / "__init__.py").write_text("x = 1\n")
    assert code_hash("aggregate", code) != before


def test_the_root_comes_from_the_environment(code, monkeypatch):
    (code / "reporting" / "aggregate.py").write_text("# replaced\n")
    monkeypatch.setenv(ROOT_ENV, str(code))
    assert code_hash("aggregate") == code_hash("aggregate", code) != code_hash(
        "aggregate", PACKAGE_ROOT)


def test_unknown_stages_and_vanished_modules_are_errors(code):
    with pytest.raises(MosbenchError, match="unknown stage 'plot'"):
        code_hash("plot")
    shutil.rmtree(code / "reporting")
    with pytest.raises(MosbenchError, match="'reporting/\\*.py' matches no file"):
        code_hash("aggregate", code)


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


def _covered(stage):
    files = set(stage_files(stage))
    for upstream in UPSTREAM[stage]:
        files |= _covered(upstream)
    return files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_hashes_every_module_its_script_reaches(stage):
    """Whatever the rule's script imports, directly or not, is hashed by it, by a stage
    upstream of it (whose rerun reruns it) or is plumbing that cannot change a result."""
    reached = _closure(REPO / "workflow" / "scripts" / f"{stage}.py")
    missing = reached - _covered(stage) - set(expand(PLUMBING))
    assert not missing, f"{stage} runs {sorted(missing)}: add them to STAGES or PLUMBING"


def test_every_rule_with_a_script_carries_its_code_hash():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    blocks = re.split(r"^rule ", rules, flags=re.M)[1:]
    scripted = {b.split(":")[0]: b for b in blocks if "script:" in b}
    assert set(scripted) == set(STAGES) == set(UPSTREAM)
    for name, block in scripted.items():
        assert f'code=code_hash("{name}")' in block, name
