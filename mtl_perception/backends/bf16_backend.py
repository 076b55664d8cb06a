"""PyTorch CPU with BF16 autocast, only on CPUs with native BF16 arithmetic.

oneDNN runs BF16 convolutions on AVX512-BF16 (Zen 4, Cooper Lake and later) or AMX, about twice as
fast as FP32 here (docs/cpu_inference.md). Without those instructions it emulates BF16 and is
*slower* than FP32, so :func:`native_bf16` must hold before this backend is created. The stream
state and outputs stay float32 at the boundary (the reduction casts them), accuracy against FP32 is
checked by the same gates as INT8 (``mtl-perception-quantize`` records the result).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import MultiTaskVideoNet
from .base import BackendError, StepResult
from .torch_backend import TorchBackend

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The ``flags`` of the first CPU in ``cpuinfo`` (empty when unreadable, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """(supported, why): oneDNN BF16 available and the CPU advertises AVX512-BF16 or AMX-BF16."""
    if not torch.backends.mkldnn.is_available():
        return False, "torch has no oneDNN (mkldnn)"
    flags = cpu_flags()
    have = [f for f in NATIVE_FLAGS if f in flags]
    if not have:
        return False, "CPU has no native BF16 (no avx512_bf16/amx_bf16 flag): BF16 would be emulated, slower"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN reports no BF16 support"
    return True, "native BF16 (" + ", ".join(have) + ")"


class TorchBf16Backend(TorchBackend):
    """``TorchBackend`` on the CPU, every step under ``torch.autocast("cpu", torch.bfloat16)``."""

    def __init__(self, model: MultiTaskVideoNet, channels_last: bool = True, force: bool = False) -> None:
        ok, why = native_bf16()
        if not ok and not force:
            raise BackendError(why)
        super().__init__(model, device="cpu", channels_last=channels_last)
        self.name = "torch-cpu-bf16"
        self.reason = why

    def step(self, image: np.ndarray, state: Any, is_keyframe: bool) -> StepResult:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().step(image, state, is_keyframe)
