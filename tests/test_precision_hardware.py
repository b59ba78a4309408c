"""``mixed_bfloat16`` on a CPU without bfloat16 instructions is refused at job start.

The probe reads cpuinfo text, so AVX2-only and ARM CPUs are checked here on
whatever this machine is; the refusal comes from ``load_engine`` before any
framework is imported; the tests that compute in bfloat16 on the CPU carry
the ``cpu_bfloat16`` marker, which skips them on such CPUs (tests/conftest.py).
"""

import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from mosbench import cpu_features
from mosbench.cpu_features import (
    bfloat16_support,
    check_precision_hardware,
    computes_on_cpu,
    parse_bfloat16_support,
)
from mosbench.errors import MosbenchError


def cpuinfo(*flag_lines, key="flags"):
    """/proc/cpuinfo text with one processor per line of flags."""
    return "".join(f"processor\t: {i}\nmodel name\t: test CPU\n{key}\t\t: {flags}\n\n"
                   for i, flags in enumerate(flag_lines))


# An AMD Zen 3 (EPYC 7003): AVX2, no AVX-512, no bfloat16 (the CPU the PyTorch crash came from)
ZEN3 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx "
        "fxsr sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good "
        "nopl pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave "
        "avx f16c rdrand hypervisor lahf_lm cmp_legacy abm sse4a misalignsse 3dnowprefetch "
        "bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt "
        "xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat npt nrip_save umip pku ospke "
        "vaes vpclmulqdq rdpid fsrm")
COOPER_LAKE = ZEN3 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16"
SAPPHIRE_RAPIDS = COOPER_LAKE + " amx_bf16 amx_tile amx_int8"
GRAVITON2 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm"
GRAVITON3 = GRAVITON2 + " sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm " \
                        "svebf16 i8mm bf16 dgh rng"


@pytest.mark.parametrize("text, supported", [
    (cpuinfo(ZEN3, ZEN3), False),
    (cpuinfo(COOPER_LAKE, COOPER_LAKE), True),
    (cpuinfo(ZEN3.replace("avx2", "") + " amx_bf16"), True),  # either flag is enough
    (cpuinfo(SAPPHIRE_RAPIDS, ZEN3), False),  # every processor must have it
    (cpuinfo(GRAVITON3, GRAVITON3, key="Features"), True),
    (cpuinfo(GRAVITON2, key="Features"), False),
    (cpuinfo(GRAVITON2 + " svebf16", key="Features"), False),  # SVE's bf16 alone is not BF16
    ("processor\t: 0\nvendor_id\t: unknown\n", None),  # nothing to probe: no verdict
], ids=["zen3", "cooper-lake", "amx-only", "mixed-processors", "graviton3", "graviton2",
        "sve-bf16-only", "unknown"])
def test_the_probe_reads_bfloat16_support_from_cpuinfo(text, supported):
    support = parse_bfloat16_support(text)
    assert support.supported is supported
    assert support.detail


def test_the_probe_says_what_an_avx2_only_cpu_lacks():
    detail = parse_bfloat16_support(cpuinfo(ZEN3, ZEN3)).detail
    assert "avx512_bf16" in detail and "amx_bf16" in detail and "2 of 2" in detail


def test_this_machine_is_probed_not_assumed(tmp_path):
    if not cpu_features.CPUINFO.is_file():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    flags = cpu_features.CPUINFO.read_text()
    support = bfloat16_support()
    assert support.supported is not None, support.detail
    expected = all({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split())
                   for line in flags.splitlines() if line.startswith("flags"))
    if "flags" in flags:
        assert support.supported is expected
    missing = bfloat16_support(tmp_path / "no-cpuinfo")
    assert missing.supported is None and "cannot be read" in missing.detail


@pytest.mark.parametrize("gpus, devices, on_cpu", [
    (0, None, True), (1, None, False), (2, None, False),
    (0, ["cpu", "cpu"], True), (0, ["/device:CPU:0", "/device:CPU:1"], True),
    (1, ["/gpu:0"], False), (0, ["cuda:0", "cuda:1"], False),
])
def test_a_job_computes_on_the_cpu_when_its_placement_says_so(gpus, devices, on_cpu):
    assert computes_on_cpu(gpus, devices) is on_cpu


@pytest.fixture
def avx2_only(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo(ZEN3, ZEN3))
    return path


def test_mixed_bfloat16_on_an_avx2_only_cpu_job_is_refused_in_one_line(avx2_only):
    with pytest.raises(MosbenchError) as caught:
        check_precision_hardware("mixed_bfloat16", gpus=0, cpuinfo=avx2_only)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("'matmul_precision'", "'mixed_bfloat16'", "avx512_bf16", "amx_bf16",
                 "float32", "tf32"):
        assert part in message


@pytest.mark.parametrize("precision, gpus, devices", [
    ("float32", 0, None), ("tf32", 0, None),  # what the CPU computes anyway
    ("mixed_bfloat16", 1, None), ("mixed_bfloat16", 0, ["/gpu:0"]),  # the GPU computes
])
def test_what_the_cpu_can_compute_is_not_refused(avx2_only, precision, gpus, devices):
    check_precision_hardware(precision, gpus=gpus, devices=devices, cpuinfo=avx2_only)


def test_a_cpu_with_bfloat16_runs_mixed_bfloat16(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo(SAPPHIRE_RAPIDS))
    check_precision_hardware("mixed_bfloat16", gpus=0, cpuinfo=path)


def test_a_cpu_that_cannot_be_probed_is_warned_about_not_refused(tmp_path):
    with pytest.warns(UserWarning, match="could not be probed"):
        check_precision_hardware("mixed_bfloat16", gpus=0, cpuinfo=tmp_path / "absent")


@pytest.mark.parametrize("framework", ["tensorflow", "pytorch"])
def test_load_engine_refuses_before_the_framework_is_imported(avx2_only, framework):
    # A fresh interpreter: in this one the frameworks are imported already.
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from mosbench import cpu_features
        from mosbench.engines import load_engine
        from mosbench.errors import MosbenchError
        cpu_features.CPUINFO = Path({str(avx2_only)!r})
        try:
            load_engine({framework!r}, gpus=0, precision="mixed_bfloat16")
        except MosbenchError as exc:
            print("refused:", exc)
        print("imported:", sorted({{"tensorflow", "keras", "torch"}} & set(sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=120).stdout
    assert "refused: config key 'matmul_precision': 'mixed_bfloat16'" in out
    assert "imported: []" in out


def test_the_load_engine_check_reads_the_probed_file(monkeypatch, avx2_only):
    # The same refusal in this process: load_engine passes gpus and devices through.
    from mosbench.engines import load_engine

    monkeypatch.setattr(cpu_features, "CPUINFO", avx2_only)
    with pytest.raises(MosbenchError, match="avx512_bf16"):
        load_engine("tensorflow", precision="mixed_bfloat16", devices=["/cpu:0", "/cpu:1"])


MARKED = '''
import pytest

@pytest.mark.cpu_bfloat16
def test_computes_in_bfloat16():
    pass

def test_float32():
    pass
'''


@pytest.mark.parametrize("flags, outcome", [(ZEN3, "1 passed, 1 skipped"),
                                            (COOPER_LAKE, "2 passed")],
                         ids=["avx2-only", "avx512-bf16"])
def test_the_marker_skips_bfloat16_tests_where_the_cpu_lacks_it(tmp_path, flags, outcome):
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo(flags))
    (tmp_path / "test_marked.py").write_text(MARKED)
    # The repository's conftest hooks, probing the fake cpuinfo.
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util
        from pathlib import Path
        from mosbench import cpu_features
        cpu_features.CPUINFO = Path({str(fake)!r})
        spec = importlib.util.spec_from_file_location(
            "repo_conftest", {str(REPO / "tests" / "conftest.py")!r})
        repo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(repo)
        pytest_configure = repo.pytest_configure
        pytest_collection_modifyitems = repo.pytest_collection_modifyitems
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider",
                          str(tmp_path)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert outcome in run.stdout, run.stdout + run.stderr
    if "skipped" in outcome:
        assert "mixed_bfloat16 needs bfloat16 on this CPU" in run.stdout
        assert "avx512_bf16" in run.stdout
