"""What this CPU can compute, probed before a framework is imported (framework-neutral).

``matmul_precision: mixed_bfloat16`` on a CPU without bfloat16 instructions
crashes deep inside the framework: on an AVX2-only AMD Zen 3, PyTorch's LSTM
under bfloat16 autocast fails in oneDNN with "could not create a primitive
descriptor for the LSTM forward propagation primitive". So a CPU job checks
the CPU first (:func:`check_precision_hardware`, from
:func:`mosbench.engines.load_engine`) and refuses with a one-line message.

The check runs at job start, on the machine that computes, not when the
config is loaded: a config may be checked on a login node of another kind.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

from mosbench.errors import MosbenchError

CPUINFO = Path("/proc/cpuinfo")  # read at call time, so a test can point it at a fake file
# Linux's names of the x86 instructions oneDNN computes bfloat16 with (Cooper Lake, Zen 4,
# Sapphire Rapids and later); on ARM, the BF16 extension (Neoverse V1/N2, Graviton 3 ...).
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FEATURE = "bf16"


@dataclass(frozen=True)
class Bfloat16Support:
    """The probe's answer: ``supported`` is None when it could not tell, and ``detail`` says why."""

    supported: bool | None
    detail: str


def _cpu_lines(text, key):
    """Each processor's value of ``key`` (``flags``, ``Features``) as a set of words."""
    found = []
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            found.append(set(value.split()))
    return found


def parse_bfloat16_support(text):
    """Whether the CPU described by ``text`` (the contents of /proc/cpuinfo) has bfloat16.

    Every processor listed must have it: a job may run on any of them.
    """
    x86 = _cpu_lines(text, "flags")
    if x86:
        lacking = [i for i, flags in enumerate(x86) if not flags & set(X86_BF16_FLAGS)]
        if lacking:
            return Bfloat16Support(False, f"its flags have neither {' nor '.join(X86_BF16_FLAGS)}"
                                          f" ({len(lacking)} of {len(x86)} processors)")
        have = sorted(set().union(*x86) & set(X86_BF16_FLAGS))
        return Bfloat16Support(True, f"its flags have {', '.join(have)}")
    arm = _cpu_lines(text, "Features")
    if arm:
        lacking = [i for i, features in enumerate(arm) if ARM_BF16_FEATURE not in features]
        if lacking:
            return Bfloat16Support(False, f"its Features lack {ARM_BF16_FEATURE} "
                                          f"({len(lacking)} of {len(arm)} processors)")
        return Bfloat16Support(True, f"its Features have {ARM_BF16_FEATURE}")
    return Bfloat16Support(None, "its cpuinfo lists no flags or Features to probe")


def bfloat16_support(path=None):
    """Probe this machine's CPU (``path``: a cpuinfo file, default /proc/cpuinfo)."""
    path = Path(path or CPUINFO)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:  # not Linux (macOS, Windows): no cpuinfo to read
        return Bfloat16Support(None, f"{path} cannot be read ({exc.strerror or exc})")
    return parse_bfloat16_support(text)


def computes_on_cpu(gpus=0, devices=None):
    """Whether a job placed on ``gpus`` GPUs, or on ``devices`` if given, computes on a CPU."""
    if devices:
        return any("cpu" in str(name).lower().replace("/", ":").split(":") for name in devices)
    return gpus == 0


def check_precision_hardware(precision, gpus=0, devices=None, cpuinfo=None):
    """Refuse ``mixed_bfloat16`` on a CPU job whose CPU has no bfloat16 instructions.

    ``cpuinfo`` is the file to probe (default /proc/cpuinfo). A CPU the probe
    cannot read is not refused, only warned about: nothing says it lacks bfloat16.
    """
    if precision != "mixed_bfloat16" or not computes_on_cpu(gpus, devices):
        return
    support = bfloat16_support(cpuinfo)
    if support.supported is False:
        raise MosbenchError(
            f"config key 'matmul_precision': 'mixed_bfloat16' on a CPU job (gpus={gpus}) needs "
            f"bfloat16 instructions ({' or '.join(X86_BF16_FLAGS)} on x86, "
            f"{ARM_BF16_FEATURE} on ARM) and this CPU has none: {support.detail}; "
            "allowed here: float32 or tf32 (the same as float32 on a CPU), or run on a GPU")
    if support.supported is None:
        warnings.warn(f"matmul_precision 'mixed_bfloat16' on a CPU whose bfloat16 support "
                      f"could not be probed ({support.detail}); it may fail inside the framework",
                      stacklevel=2)
