"""The conda environments (`snakemake --sdm conda`) pin what pyproject.toml pins, per framework."""

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import REPO
from mosbench.engines import FRAMEWORKS

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# The workflow's own tools: installed by `-e ../` with the project, not listed again.
TOOLS = {"snakemake", "snakemake-executor-plugin-slurm"}
# The extra a framework's jobs install on a cluster, where it differs from the framework's
# own: TensorFlow and JAX with their CUDA wheels (their plain extras stay plain for CPU machines).
CLUSTER_EXTRAS = {"tensorflow": "tensorflow-cuda", "jax": "jax-cuda"}
# env file -> the pyproject extras it installs
ENVS = {"mosbench": [], "reporting": list(FRAMEWORKS),
        **{f: [CLUSTER_EXTRAS.get(f, f)] for f in FRAMEWORKS}}
# pip's marker variables on the platforms TensorFlow 2.21 has wheels for (PyPI)
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "windows-amd64": {"sys_platform": "win32", "platform_machine": "AMD64"},
}


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


def _installed(extra, platform):
    """The requirements of ``extra`` that pip installs on ``platform`` (markers applied)."""
    reqs = [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(PLATFORMS[platform])]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_cluster_extra_adds_tensorflows_cuda_wheels_on_linux_x86_64_only(platform):
    (plain,) = [r for r in _installed("tensorflow", platform) if r.name == "tensorflow"]
    (cluster,) = [r for r in _installed("tensorflow-cuda", platform) if r.name == "tensorflow"]
    assert cluster.specifier == plain.specifier  # the same TensorFlow measured on CPU and GPU
    assert plain.extras == set()
    assert cluster.extras == ({"and-cuda"} if platform == "linux-x86_64" else set())
    others = {str(r) for r in _installed("tensorflow-cuda", platform) if r.name != "tensorflow"}
    assert others == {str(r) for r in _installed("tensorflow", platform) if r.name != "tensorflow"}


def test_what_make_installs_on_ci_pulls_no_tensorflow_cuda_wheels():
    # `make test` on CPU-only CI must not download NVIDIA's several-GB CUDA wheels.
    (extras,) = re.findall(r"pip install .*-e '\.\[([^\]]+)\]'",
                           (REPO / "Makefile").read_text())
    for extra in extras.split(","):
        for req in _installed(extra, "linux-x86_64"):
            assert "and-cuda" not in req.extras, (extra, str(req))
