"""The code hashes that make a rule rerun on an edit of its package code, and only then."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from conftest import REPO
from mosbench.code_hash import (
    ENGINE,
    ENTRIES,
    FRAMEWORK_STAGES,
    PACKAGE_ROOT,
    PLUMBING,
    ROOT_ENV,
    STAGES,
    closure,
    code_hash,
    expand,
    module_file,
    stage_files,
)
from mosbench.engines import FRAMEWORKS
from mosbench.errors import MosbenchError
from mosbench.workload import EVALUATION_KEYS, training_hparams

# Every hash a workflow uses: (stage, framework), the framework None where a stage runs no engine.
JOBS = [(stage, framework) for stage in STAGES
        for framework in (FRAMEWORKS if stage in FRAMEWORK_STAGES else (None,))]
PLUMBING_FILES = set(expand(PLUMBING))


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


def engine_jobs(framework):
    return {(stage, framework) for stage in FRAMEWORK_STAGES}


def jobs_running(module, root=PACKAGE_ROOT):
    """The (stage, framework) jobs whose stage imports ``module``."""
    return {job for job in JOBS if module in stage_files(*job, root=root)}


def append(path, text="\n# an edit\n"):
    path.write_text(path.read_text() + text)


def test_every_stage_hashes_existing_modules_into_a_short_digest():
    for job in JOBS:
        assert stage_files(*job), job
        assert re.fullmatch(r"[0-9a-f]{16}", code_hash(*job))
    assert "engines/tensorflow/models/mixture_of_softmaxes.py" in stage_files("train", "tensorflow")
    assert {"reporting/aggregate.py", "reporting/plots.py"} <= set(stage_files("aggregate"))
    assert not any(f.startswith("reporting/") for job in JOBS if job[0] != "aggregate"
                   for f in stage_files(*job))
    assert not set(stage_files("aggregate")) & PLUMBING_FILES


def test_the_engine_stages_hash_the_neutral_code_and_their_own_engine_only():
    assert FRAMEWORK_STAGES == {"train", "probe", "data_pipeline", "evaluate"}
    for stage in FRAMEWORK_STAGES:
        files = {f: set(stage_files(stage, f)) for f in FRAMEWORKS}
        shared = files["tensorflow"] & files["pytorch"]
        assert {"engines/__init__.py", "engines/interface.py", "workload.py"} <= shared
        for framework in FRAMEWORKS:
            own = files[framework] - shared
            assert own and all(f.startswith(f"engines/{framework}/") for f in own), own
            assert f"engines/{framework}/engine.py" in own  # imported by name, at run time
            assert f"engines/{framework}/__init__.py" in own  # the packages around it too
        assert not any(f.startswith("engines/") and f.count("/") > 1 for f in shared)
    assert {"training/train.py", "training/bptt.py"} <= set(stage_files("train", "pytorch"))
    # what the engine imports, subpackages included; not what only the tests or the
    # aggregate import (the ease-of-use inventories)
    train = set(stage_files("train", "tensorflow"))
    assert "engines/tensorflow/models/__init__.py" in train
    assert not {"engines/tensorflow/inventory.py", "engines/pytorch/inventory.py",
                "measurement/probe.py"} & (train | set(stage_files("train", "pytorch")))


def test_each_stage_hashes_what_its_entries_import_and_nothing_else():
    """Probe and data-pipeline jobs run no training procedure; training runs no probe."""
    probe = set(stage_files("probe", "tensorflow"))
    assert "measurement/probe.py" in probe
    assert not {"training/train.py", "training/bptt.py", "evaluation/perplexity.py"} & probe
    pipeline = set(stage_files("data_pipeline", "pytorch"))
    assert "measurement/data_pipeline.py" in pipeline and "training/train.py" not in pipeline
    evaluate = set(stage_files("evaluate", "tensorflow"))
    assert {"evaluation/dynamic_eval.py", "evaluation/rank.py"} <= evaluate
    assert not {"evaluation/dynamic_eval.py", "evaluation/rank.py"} & set(
        stage_files("train", "tensorflow"))
    assert stage_files("tokenise") == ["data/__init__.py", "data/tokenise.py"]


def test_the_evaluation_only_keys_are_read_by_evaluation_alone():
    """What training is not given (workload.EVALUATION_KEYS) no module it runs reads, and
    evaluation does; each is a preset key of the schema."""
    schema = yaml.safe_load((PACKAGE_ROOT / "config.schema.yaml").read_text())
    preset_keys = set(schema["$defs"]["lstm_preset"]["properties"])
    for key in EVALUATION_KEYS:
        assert key in preset_keys, key
        literal = re.compile(rf"""["']{key}["']""")
        for stage in ("train", "probe"):
            for framework in FRAMEWORKS:
                readers = [f for f in stage_files(stage, framework) if f != "workload.py"
                           and literal.search((PACKAGE_ROOT / f).read_text())]  # declares
                assert not readers, f"{stage} reads {key} in {readers}: not evaluation-only"
        assert any(literal.search((PACKAGE_ROOT / f).read_text())
                   for f in stage_files("evaluate", "tensorflow")), key
    preset = {"lr": 1.0, "test_batch_size": 1, "rank_contexts": 9, "dynamic_eval": None}
    assert training_hparams(preset) == {"lr": 1.0}


def test_the_hash_follows_content_not_location_or_mtime(code):
    before = hashes(code)
    assert before == hashes(PACKAGE_ROOT)  # a copy hashes the same
    for path in code.rglob("*.py"):
        os.utime(path, (1e9, 2e9))
    assert hashes(code) == before


def test_an_edit_changes_exactly_the_stages_that_run_the_module(code):
    before = hashes(code)
    append(code / "engines" / "tensorflow" / "models" / "lstm.py")
    # TensorFlow's jobs, and the aggregate: its ease-of-use inventory reads the model code
    assert changed_since(before, code) == engine_jobs("tensorflow") | {("aggregate", None)}

    before = hashes(code)
    report = code / "reporting" / "aggregate.py"
    report.write_text(report.read_text().replace("def ", "def  ", 1))
    assert changed_since(before, code) == {("aggregate", None)}

    before = hashes(code)
    append(code / "evaluation" / "rank.py")  # evaluation only
    assert changed_since(before, code) == {("evaluate", f) for f in FRAMEWORKS}

    before = hashes(code)
    append(code / "measurement" / "probe.py")  # the probe only: no training job
    assert changed_since(before, code) == {("probe", f) for f in FRAMEWORKS}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_an_engine_edit_changes_only_that_frameworks_hashes(code, framework):
    before = hashes(code)
    append(code / "engines" / framework / "engine.py")
    assert changed_since(before, code) == engine_jobs(framework)
    before = hashes(code)
    append(code / "engines" / framework / "models" / "mixture_of_softmaxes.py")
    assert changed_since(before, code) == engine_jobs(framework) | {("aggregate", None)}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_new_module_counts_once_something_imports_it(code, framework):
    before = hashes(code)
    new = code / "engines" / framework / "models" / "new_layer.py"  # in a subpackage
    new.write_text("x = 1\n")
    assert changed_since(before, code) == set()  # nothing runs it yet
    append(code / "engines" / framework / "engine.py", "\nfrom mosbench.engines."
           f"{framework}.models import new_layer  # noqa\n")
    assert changed_since(before, code) == engine_jobs(framework)
    before = hashes(code)
    new.write_text("x = 2\n")
    assert changed_since(before, code) == engine_jobs(framework)


@pytest.mark.parametrize("module", ["training/bptt.py", "engines/interface.py", "workload.py",
                                    "engines/__init__.py"])
def test_a_neutral_edit_changes_both_frameworks_hashes(code, module):
    before = hashes(code)
    append(code / module)
    changed = changed_since(before, code)
    assert {("train", f) for f in FRAMEWORKS} <= changed
    assert changed == jobs_running(module)


def test_plumbing_and_unimported_modules_change_no_hash(code):
    before = hashes(code)
    for module in ("progress.py", "tracking/tracker.py", "paths.py", "cli.py"):
        append(code / module)
    assert changed_since(before, code) == set()


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
    with pytest.raises(MosbenchError, match="'reporting/aggregate.py' matches no file"):
        code_hash("aggregate", root=code)
    shutil.rmtree(code / "engines" / "pytorch")
    with pytest.raises(MosbenchError, match="'engines/pytorch/engine.py' matches no file"):
        code_hash("train", "pytorch", root=code)


def test_a_framework_is_needed_exactly_where_a_stage_runs_an_engine():
    with pytest.raises(MosbenchError, match="stage 'train' runs an engine: expected a framework "
                                            "from \\['tensorflow', 'pytorch', 'jax'\\], got None"):
        code_hash("train")
    with pytest.raises(MosbenchError, match="got 'mxnet'"):
        code_hash("evaluate", "mxnet")
    with pytest.raises(MosbenchError, match="stage 'aggregate' runs no framework's engine"):
        code_hash("aggregate", "tensorflow")


def rule_blocks():
    """Rule name -> its text, for the rules that run a script."""
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    blocks = re.split(r"^rule ", rules, flags=re.M)[1:]
    return {b.split(":")[0]: b for b in blocks if "script:" in b}


def script_of(stage):
    return REPO / "workflow" / "scripts" / re.search(
        r'script:\s+"\.\./scripts/([^"]+)"', rule_blocks()[stage])[1]


def script_modules(stage):
    """The package modules the rule's script imports (by name: ``mosbench.a.b``)."""
    names = []
    for node in ast.walk(ast.parse(script_of(stage).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "mosbench"):
            names += [f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}")
                      else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("mosbench")]
    return sorted(set(names))


def entry_files(stage, framework):
    """The script's modules plus what the stage imports by name (ENTRIES' globs that are
    no module of the script: the engine, the inventories)."""
    files = {module_file(name) for name in script_modules(stage)}
    by_name = [p.format(framework=framework) for p in ENTRIES[stage]
               if p == ENGINE or "*" in p]
    return files | set(expand(by_name))


@pytest.mark.parametrize(("stage", "framework"), JOBS)
def test_each_stage_hashes_exactly_the_modules_its_script_reaches(stage, framework):
    """The import graph from the rule's script (and what it loads by name), plumbing aside,
    is the stage's hashed set: nothing it runs is missing, nothing it cannot run is there."""
    reached = closure(entry_files(stage, framework))
    assert set(stage_files(stage, framework)) == reached - PLUMBING_FILES


# Imports the modules given, then prints the package files Python loaded.
LOADED = """
import importlib, json, sys
from pathlib import Path
import mosbench
root = Path(mosbench.__file__).parent
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(Path(m.__file__).resolve().relative_to(root).as_posix()
                        for n, m in list(sys.modules.items())
                        if n.split(".")[0] == "mosbench" and getattr(m, "__file__", None))))
"""


def _loaded_modules(stage, framework):
    """Run LOADED in a fresh interpreter on what ``stage``'s script imports (and the engine
    or inventories it loads by name)."""
    names = script_modules(stage) + [
        "mosbench." + p.format(framework=framework).removesuffix(".py").replace("/", ".")
        for p in ENTRIES[stage] if p == ENGINE]
    if stage == "aggregate":
        names += [f"mosbench.engines.{f}.inventory" for f in FRAMEWORKS]
    return names, subprocess.run([sys.executable, "-c", LOADED, *names], capture_output=True,
                                 text=True, timeout=300, cwd=REPO,
                                 env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def loaded_per_job():
    """Every job's fresh interpreter, as many at once as there are cores: each spends
    seconds importing its framework on one core."""
    with ThreadPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        return dict(zip(JOBS, pool.map(lambda job: _loaded_modules(*job), JOBS), strict=True))


@pytest.mark.parametrize(("stage", "framework"), JOBS)
def test_what_python_loads_for_a_stage_is_hashed(loaded_per_job, stage, framework):
    """In a fresh interpreter, importing what the stage's script imports (and the engine
    or inventories it loads by name) loads only hashed or plumbing modules."""
    names, done = loaded_per_job[stage, framework]
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert loaded, names
    missing = loaded - set(stage_files(stage, framework)) - PLUMBING_FILES
    assert not missing, f"{stage} loads {sorted(missing)}, which its code hash lacks"


def test_every_rule_with_a_script_carries_its_code_hash():
    scripted = rule_blocks()
    assert set(scripted) == set(STAGES)
    for name, block in scripted.items():
        if name in FRAMEWORK_STAGES:  # per job: the job's framework
            assert f'code=lambda w: code_hash("{name}", w.framework)' in block, name
            assert re.search(r"conda:\s+framework_env\n", block), name
        else:
            assert f'code=code_hash("{name}")' in block, name
