"""The conda environments (`snakemake --sdm conda`) pin what pyproject.toml pins, per framework."""

import re
import tomllib

import pytest
import yaml

from conftest import REPO
from mosbench.engines import FRAMEWORKS

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# The workflow's own tools: installed by `-e ../` with the project, not listed again.
TOOLS = {"snakemake", "snakemake-executor-plugin-slurm"}
# env file -> the pyproject extras it installs
ENVS = {"mosbench": [], "reporting": list(FRAMEWORKS), **{f: [f] for f in FRAMEWORKS}}


def _name(pin):
    return re.split(r"[=<>!\[ ]", pin, maxsplit=1)[0]


def _pip(env):
    spec = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())
    (pip,) = [d["pip"] for d in spec["dependencies"] if isinstance(d, dict)]
    return pip


@pytest.mark.parametrize("env", ENVS)
def test_each_environment_pins_the_project_and_its_frameworks_extras(env):
    pins = [p for p in _pip(env) if not p.startswith("-e ")]
    wanted = [p for p in PYPROJECT["dependencies"] if _name(p) not in TOOLS]
    for extra in ENVS[env]:
        wanted += PYPROJECT["optional-dependencies"][extra]
    assert sorted(pins) == sorted(wanted)
    extras = f"[{','.join(ENVS[env])}]" if ENVS[env] else ""
    assert [p for p in _pip(env) if p.startswith("-e ")] == [f"-e ../{extras}"]


def test_every_rule_names_an_environment_and_the_engine_rules_their_frameworks():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    for path in re.findall(r'conda:\s+"\.\./\.\./(envs/[^"]+)"', rules):
        assert (REPO / path).is_file(), path
    assert 'return f"../../envs/{wildcards.framework}.yaml"' in rules
    for framework in FRAMEWORKS:
        assert (REPO / "envs" / f"{framework}.yaml").is_file()
