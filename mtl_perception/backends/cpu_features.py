"""What the CPU offers the reduced-precision backends: its flags, native BF16, the INT8 kernel.

ONNX Runtime's INT8 convolutions multiply u8 activations by s8 weights. With VNNI (``vpdpbusd``)
the products are summed in 32 bits. Without it (AVX2 / AVX-512 before VNNI) the kernel uses
``vpmaddubsw``, which adds two u8 x s8 products into a saturating 16-bit lane: 255 x 127 x 2 =
64770 clips at 32767. On such a CPU the default model's INT8 graphs missed the accuracy gates
(97.2 % semantic agreement against the 99 % gate, docs/cpu_threads.md). ONNX Runtime's session
option ``session.x64quantprecision`` = 1 turns the constant s8 weights into u8 ones at load and
runs the u8 x u8 kernel, which does not saturate: the gates passed (99.03 %), 1.2-1.3x slower
than the saturating kernel. The backends set it where the CPU lacks VNNI (:func:`int8_kernel`);
the INT8 gate verdicts are cached per kernel, since the same graph scores differently on each.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# Flags under which ONNX Runtime's u8 x s8 kernels sum in 32 bits (no 16-bit saturation).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")
# "1": always the exact u8 x u8 INT8 kernel; "0": never (ONNX Runtime's default kernel).
PRECISE_ENV = "MTL_PERCEPTION_ORT_INT8_PRECISE"
PRECISE, FAST = "u8u8-x64quantprecision", "u8s8"


@functools.lru_cache(maxsize=8)
def _first_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """The first CPU's block of ``cpuinfo`` as key -> value (empty when unreadable, e.g. not
    Linux); read once per file (every ONNX Runtime session asks for the flags)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break  # the end of the first CPU's block
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first CPU in ``cpuinfo`` (empty when unreadable)."""
    return frozenset(_first_cpu(cpuinfo).get("flags", "").split())


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The first CPU's ``model name`` (else the platform's processor or machine name)."""
    return _first_cpu(cpuinfo).get("model name") or platform.processor() or platform.machine()


def needs_precise_int8(flags: set[str] | frozenset[str] | None = None,
                       machine: str | None = None) -> tuple[bool, str]:
    """(use ONNX Runtime's exact u8 x u8 INT8 kernel, why) for a CPU with ``flags`` and
    ``machine`` (default: this one's). ``MTL_PERCEPTION_ORT_INT8_PRECISE`` = 0 / 1 overrides."""
    env = os.environ.get(PRECISE_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1", f"{PRECISE_ENV}={env}"
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in X86:
        return False, f"{machine or 'unknown'} CPU: the x86 16-bit saturation does not apply"
    flags = cpu_flags() if flags is None else flags
    have = [f for f in VNNI_FLAGS if f in flags]
    if have:
        return False, "VNNI (" + ", ".join(have) + "): u8 x s8 sums in 32 bits"
    if not flags:
        return True, "CPU flags unknown: the exact kernel, in case it has no VNNI"
    return True, "no VNNI: u8 x s8 would saturate 16-bit sums, exact u8 x u8 kernel"


def int8_kernel() -> str:
    """The INT8 kernel this process's ONNX Runtime sessions run (part of the gate verdict's key)."""
    return PRECISE if needs_precise_int8()[0] else FAST
