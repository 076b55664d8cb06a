"""Backend choice and runtime fallback.

``backend: auto`` walks the chain TensorRT (CUDA) -> PyTorch CUDA -> PyTorch CPU -> ONNX Runtime
CPU and keeps the first that can be created; each skipped one leaves a one-line reason. On the CPU,
PyTorch comes first because it measured faster: on an idle 2-core machine, eager PyTorch
(channels_last, the in-place ILA) ran the average frame at K = 5 in 514 ms against ONNX Runtime's
541 ms for D101-18 at 256x512, and 107 vs 126 ms for ``bench/small.yaml``; ONNX Runtime runs ILA's
shift loop as unfused Slice/Mul/Add, 4-5x slower (``bench/latency.py``). ONNX Runtime stays in the
chain as the runtime fallback. The
chosen backend is wrapped in :class:`FallbackBackend`, which keeps the rest of the chain: when the
active backend raises during ``step`` (an engine that fails to execute, a CUDA error, an ORT run
error) the failure is counted, the next backend in the chain is created, and the same frame is
redone on it as a keyframe of a fresh stream (one backend's state is meaningless to another). The
node therefore keeps publishing, and ``/diagnostics`` shows the active backend, why the others
were skipped and how many failures happened.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..model import MultiTaskVideoNet
from .base import Backend, BackendError, StepResult

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime", "onnxruntime-int8", "torch-bf16")
# Chain entries, in the order ``auto`` tries them. The reduced-precision CPU entries are taken by
# ``auto`` only when ``mtl-perception-quantize`` measured them fastest with the accuracy gates met
# for this model (cpu_choice.py); otherwise they are skipped with that reason.
CHAIN = ("tensorrt", "torch-cuda", "onnxruntime-int8", "torch-cpu-bf16", "torch-cpu", "onnxruntime")
_NAMED = {"onnxruntime-int8": "onnxruntime-int8", "torch-bf16": "torch-cpu-bf16"}


@dataclass
class Candidate:
    """A chain entry: a label and a function that builds it (raising with the reason if it can't)."""

    label: str
    create: Callable[[], Backend]


@dataclass(frozen=True)
class _Tagged:
    """The state a FallbackBackend hands out: the inner state plus which backend made it."""

    generation: int
    inner: Any


class FallbackBackend(Backend):
    """The active backend plus the rest of the chain, switched to on a runtime failure."""

    def __init__(self, active: Backend, label: str, rest: list[Candidate], skipped: list[str]) -> None:
        super().__init__(active.input_size, active.tasks, active.num_classes)
        self.active = active
        self.active_label = label
        self.rest = list(rest)
        self.skipped = list(skipped)
        self.failures = 0
        self.last_failure = ""
        self.switches: list[str] = []  # "tensorrt -> torch-cuda: <error>" per switch
        self._generation = 0

    # The node reads these; they follow the active backend.
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.active.name

    @property
    def device(self) -> str:
        return self.active.device

    def describe(self) -> str:
        return self.active.describe()

    def step(self, image: np.ndarray, state: Any, is_keyframe: bool) -> StepResult:
        inner = state.inner if isinstance(state, _Tagged) and state.generation == self._generation else None
        restarted = inner is None and not is_keyframe
        while True:
            try:
                res = self.active.step(image, inner, is_keyframe or inner is None)
            except Exception as e:  # noqa: BLE001 - any failure of the active backend degrades
                self._on_failure(e)  # raises BackendError when the chain is exhausted
                inner, restarted = None, restarted or not is_keyframe
                continue
            res.state = _Tagged(self._generation, res.state)
            if restarted:
                res.is_keyframe = True
            return res

    def warmup(self, frames: int = 2) -> None:
        # Through our own step, so a backend that cannot even warm up is replaced now.
        Backend.warmup(self, frames)

    def _on_failure(self, error: Exception) -> None:
        self.failures += 1
        self.last_failure = f"{self.active_label}: {type(error).__name__}: {error}"
        log.error("backend %s failed at run time (%d failure(s)): %s", self.active_label, self.failures,
                  self.last_failure)
        while self.rest:
            cand = self.rest.pop(0)
            try:
                nxt = cand.create()
            except Exception as e:  # noqa: BLE001
                reason = f"{cand.label}: {type(e).__name__}: {e}"
                self.skipped.append(reason)
                log.warning("fallback: skipping %s", reason)
                continue
            switch = f"{self.active_label} -> {cand.label} after {type(error).__name__}"
            self.switches.append(switch)
            log.warning("fallback: %s (%s on %s)", switch, nxt.name, nxt.device)
            try:
                self.active.close()
            except Exception:  # noqa: BLE001 - a broken backend may fail to close, too
                log.debug("closing %s failed", self.active_label, exc_info=True)
            self.active, self.active_label = nxt, cand.label
            self._generation += 1
            return
        raise BackendError(f"no backend left after failure of {self.last_failure}") from error

    def diagnostics(self) -> dict[str, str]:
        """Key/values for ``/diagnostics``."""
        d = {"backend": self.active.name, "backend_device": self.active.device,
             "backend_failures": str(self.failures), "backend_fallbacks": str(len(self.switches))}
        if getattr(self.active, "reason", ""):  # why this precision (INT8/BF16 gates, measured choice)
            d["backend_reason"] = str(self.active.reason)[:300]
        if self.last_failure:
            d["backend_last_failure"] = self.last_failure[:300]
        for i, s in enumerate(self.skipped):
            d[f"backend_skipped_{i}"] = s[:300]
        return d

    def close(self) -> None:
        self.active.close()


def _cuda_device(device: str) -> str | None:
    """The CUDA device to try for ``device`` ("auto", "cuda", "cuda:N", "cpu"), or None."""
    if device == "cpu":
        return None
    return "cuda:0" if device in ("auto", "cuda") else device


def candidates(model: MultiTaskVideoNet, device: str = "auto", cache_dir: str | Path | None = None,
               fp16: bool = True, threads: int = 0, named: str | None = None,
               measured_order: bool = False) -> list[Candidate]:
    """The ``auto`` chain for this device setting, each entry creating its backend lazily.
    The INT8/BF16 entries need the recorded CPU choice to name them, unless ``named`` (the
    label the user asked for) is that entry. With ``measured_order`` (``auto``), ONNX Runtime FP32
    goes ahead of PyTorch FP32 when the record measured it fastest (both FP32; PyTorch stays next
    as its runtime fallback). The record is read (and the model hashed) at most once."""
    import torch

    from .cuda_util import host_model

    cuda = _cuda_device(device)
    # What the CPU entries run, taken now while any device holding the model is alive: after a
    # sticky CUDA error they must not copy weights off a dead context (the CUDA backends keep
    # private device copies and never move this one).
    host = host_model(model)

    def need_cuda() -> str:
        if cuda is None:
            raise BackendError(f"device is {device!r}")
        if not torch.cuda.is_available():
            raise BackendError("CUDA is not available to torch")
        return cuda

    def trt() -> Backend:
        from .trt_backend import TrtBackend

        return TrtBackend(model, device=need_cuda(), fp16=fp16, cache_dir=cache_dir)

    def torch_cuda() -> Backend:
        from .torch_backend import TorchBackend

        return TorchBackend(model, device=need_cuda(), fp16=fp16)

    def ort() -> Backend:
        from .ort_backend import OrtBackend

        return OrtBackend(host, cache_dir=cache_dir, threads=threads)

    def torch_cpu() -> Backend:
        from .torch_backend import TorchBackend

        return TorchBackend(host, device="cpu")

    @functools.cache
    def recorded() -> tuple[str, str]:
        from .cpu_choice import read_choice

        return read_choice(host, cache_dir)

    def chosen(label: str, b: Callable[[], Any]) -> Backend:
        pick, why = recorded()
        if label != named and pick != label:
            raise BackendError(f"not chosen: {why}")
        out = b()
        out.reason = f"{'asked for' if label == named else why}; {getattr(out, 'reason', '')}".rstrip("; ")
        return out

    def int8() -> Backend:
        from .quantize import OrtInt8Backend

        return chosen("onnxruntime-int8", lambda: OrtInt8Backend(host, cache_dir=cache_dir, threads=threads))

    def bf16() -> Backend:
        from .bf16_backend import TorchBf16Backend

        return chosen("torch-cpu-bf16", lambda: TorchBf16Backend(host))

    cands = {"tensorrt": trt, "torch-cuda": torch_cuda, "torch-cpu": torch_cpu, "onnxruntime": ort,
             "onnxruntime-int8": int8, "torch-cpu-bf16": bf16}
    order = list(CHAIN)
    if measured_order and recorded()[0] == "onnxruntime":
        order.remove("onnxruntime")
        order.insert(order.index("torch-cpu"), "onnxruntime")
        cands["onnxruntime"] = lambda: chosen("onnxruntime", ort)
    return [Candidate(label, cands[label]) for label in order]


def create_backend(model: MultiTaskVideoNet, backend: str = "auto", device: str = "auto",
                   cache_dir: str | Path | None = None, fp16: bool = True, threads: int = 0
                   ) -> tuple[FallbackBackend, list[str]]:
    """Create the backend ``backend`` asks for: ``(backend, one reason per skipped candidate)``.

    ``auto`` takes the first candidate of the chain that can be created. A named backend
    (``tensorrt``, ``torch``, ``onnxruntime``) must be created or this raises BackendError with the
    reason; the candidates after it in the chain still serve as runtime fallbacks. ``torch`` means
    PyTorch on ``device`` (CUDA when ``auto`` finds it).
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend: invalid value {backend!r}; allowed: {list(BACKENDS)}")
    chain = candidates(model, device, cache_dir, fp16, threads, named=_NAMED.get(backend),
                       measured_order=backend == "auto")
    if backend != "auto":
        import torch

        first = _NAMED.get(backend, backend)
        if backend == "torch":
            cuda = _cuda_device(device)
            first = "torch-cuda" if cuda is not None and (device != "auto" or torch.cuda.is_available()) \
                else "torch-cpu"
        i = [c.label for c in chain].index(first)
        # The named backend first, then the rest of the chain as runtime fallbacks; PyTorch CPU
        # always stays as the last resort (it follows ONNX Runtime's place in no chain).
        chain = chain[i:] + [c for c in chain[:i] if c.label == "torch-cpu"]
    skipped: list[str] = []
    for i, cand in enumerate(chain):
        t0 = time.perf_counter()
        try:
            b = cand.create()
        except Exception as e:  # noqa: BLE001 - every failure is a reason to try the next one
            reason = f"{cand.label}: {type(e).__name__}: {e}"
            if backend != "auto":
                raise BackendError(f"backend {backend!r} unavailable: {reason}") from e
            skipped.append(reason)
            continue
        log.info("backend %r -> %s on %s (%.1f s to create)", backend, b.name, b.device,
                 time.perf_counter() - t0)
        for s in skipped:
            log.info("  skipped %s", s)
        return FallbackBackend(b, cand.label, chain[i + 1:], skipped), skipped
    raise BackendError("no backend could be created: " + "; ".join(skipped))
