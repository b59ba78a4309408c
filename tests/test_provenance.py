"""What a run ran on: exactly the keys the aggregate reads, None where a thing is absent."""

import platform
import socket
import subprocess

import pytest

from conftest import REPO
from mosbench.engines import FRAMEWORKS, load_engine
from mosbench.measurement import provenance as prov
from mosbench.reporting.environments import PROVENANCE_KEYS


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_cpu_job_records_every_key_with_its_engines_versions(framework):
    versions = load_engine(framework).versions()
    assert set(versions) == {"framework", "framework_version", "cuda", "cudnn", "libraries"}
    assert versions["framework"] == framework and versions["framework_version"]
    assert all(isinstance(v, str) for v in versions["libraries"].values())
    record = prov.provenance(versions, gpus=0)
    assert tuple(record) == prov.KEYS == PROVENANCE_KEYS  # the aggregate's keys, in order
    assert record["framework"] == framework
    assert record["framework_version"] == versions["framework_version"]
    # the companion libraries, one text: "keras 3.15.1"; PyTorch has none
    assert record["libraries"] == (", ".join(f"{n} {v}" for n, v in sorted(
        versions["libraries"].items())) or None)
    assert (record["libraries"] is None) == (framework == "pytorch")
    # a CPU job: no GPU, and no driver even on a machine that has one
    assert (record["gpu_model"], record["gpu_count"], record["nvidia_driver"]) == (None, 0, None)
    # ... and no CUDA or cuDNN, though TensorFlow's wheel names the ones it was built with
    assert (record["cuda_version"], record["cudnn_version"]) == (None, None)
    assert record["hostname"] == socket.gethostname()
    assert record["python_version"] == platform.python_version()
    assert record["cpu_model"]


def test_the_commit_and_dirtiness_are_those_of_this_checkout():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert prov.git_state() == (head, bool(status))


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                       "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\n")
    assert prov.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    # a VM's bare name covers two generations: family and model tell them apart
    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {}\n" \
            "model name\t: AMD EPYC\n\n"
    cpuinfo.write_text(block.format(0, 1) + block.format(1, 1))
    zen3 = prov.cpu_model(cpuinfo)
    cpuinfo.write_text(block.format(0, 17) + block.format(1, 17))
    assert (zen3, prov.cpu_model(cpuinfo)) == ("AMD EPYC (family 25 model 1)",
                                               "AMD EPYC (family 25 model 17)")
    # no such file (macOS, Windows): the platform's own description
    assert prov.cpu_model(tmp_path / "missing") == (platform.processor() or platform.machine())


def test_a_gpu_job_without_nvml_records_its_count_and_no_model():
    record = prov.provenance({"framework": "pytorch", "cuda": "13.0"}, gpus=2)
    assert record["gpu_count"] == 2 and record["cuda_version"] == "13.0"
    if prov.gpu_description(2) == (None, None):  # no NVIDIA driver here
        assert record["gpu_model"] is None and record["nvidia_driver"] is None
    else:
        assert record["gpu_model"] and record["nvidia_driver"]


def test_tags_leave_absent_values_out_and_spell_booleans_in_lower_case():
    tags = prov.as_tags({"framework": "tensorflow", "cuda_version": None, "gpu_count": 0,
                         "git_dirty": True}, prefix="evaluate.")
    assert tags == {"evaluate.framework": "tensorflow", "evaluate.gpu_count": "0",
                    "evaluate.git_dirty": "true"}
