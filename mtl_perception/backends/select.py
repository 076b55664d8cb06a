"""Backend choice and runtime fallback.

``backend: auto`` walks the chain TensorRT (CUDA) -> PyTorch CUDA -> the CPU backends and keeps
the first that can be created; each skipped one leaves a one-line reason. On a CPU-only device the
CPU backends are ordered by a timing taken once at the first start and cached (:func:`_measured_cpu`,
``cpu_choice.py``): the exact FP32 ones (PyTorch, ONNX Runtime, the PyTorch + ONNX Runtime split)
and the reduced-precision ones with gate evidence; the fastest runs, the others stay as runtime
fallbacks. Without a timing (a CUDA machine's fallbacks) the rule is PyTorch CPU, then ONNX
Runtime (docs/cpu_inference.md). The
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

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime", "onnxruntime-int8", "torch-bf16", "torch+onnxruntime")
SPLIT = "torch-cpu+onnxruntime"  # keyframes on PyTorch FP32, non-keyframes on ONNX Runtime FP32
# Chain entries, in the order ``auto`` tries them. The reduced-precision CPU entries are taken by
# ``auto`` only when ``mtl-perception-quantize`` measured them fastest with the accuracy gates met
# for this model (cpu_choice.py); otherwise they are skipped with that reason. The split runs
# under ``auto`` only when the start-up speed record ranks it (see _measured_cpu), else it is
# skipped and the documented rule (PyTorch FP32) applies.
CHAIN = ("tensorrt", "torch-cuda", "onnxruntime-int8", "torch-cpu-bf16", SPLIT, "torch-cpu", "onnxruntime")
_NAMED = {"onnxruntime-int8": "onnxruntime-int8", "torch-bf16": "torch-cpu-bf16", "torch+onnxruntime": SPLIT}


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
               measured_order: bool = False, keyframe_interval: int = 5) -> list[Candidate]:
    """The ``auto`` chain for this device setting, each entry creating its backend lazily.
    The INT8/BF16 entries need the quantize record to name them, unless ``named`` (the label the
    user asked for) is that entry. With ``measured_order`` (``auto``) the CPU entries are ordered
    by the start-up speed record (:func:`_measured_cpu`): the fastest of the exact FP32 backends
    and the gate-passing reduced-precision ones runs, the slower ones stay as runtime fallbacks.
    The records are read (and the model hashed) at most once."""
    import torch

    from .cuda_util import host_model

    cuda = _cuda_device(device)
    # What the CPU entries run, taken now while any device holding the model is alive: after a
    # sticky CUDA error they must not copy weights off a dead context (the CUDA backends keep
    # private device copies and never move this one).
    host = host_model(model)
    size = tuple(int(v) for v in host.cfg.input_size)

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

    def split(parts: dict[str, Backend] | None = None) -> Backend:
        from .split_backend import torch_onnxruntime

        parts = parts or {}
        return torch_onnxruntime(host, cache_dir, threads, parts.get("torch-cpu"), parts.get("onnxruntime"))

    def int8_raw() -> Backend:
        from .quantize import OrtInt8Backend

        return OrtInt8Backend(host, cache_dir=cache_dir, threads=threads)

    def bf16_raw() -> Backend:
        from .bf16_backend import TorchBf16Backend, recorded_recipe

        recipe, source = recorded_recipe(recorded()[1])  # the record already read: no second hash
        return TorchBf16Backend(host, recipe=recipe, source=source)

    @functools.cache
    def recorded() -> tuple[str, dict[str, Any] | None, str, str]:
        """(model hash, quantize record, its choice, why)."""
        from . import cpu_choice

        mhash = cpu_choice.model_hash(host)
        rec = cpu_choice.read_record(mhash, size, cache_dir)  # type: ignore[arg-type]
        return (mhash, rec, *cpu_choice.choice_of(rec, mhash, size, cache_dir))  # type: ignore[arg-type]

    def chosen(label: str, b: Callable[[], Any]) -> Backend:
        _, _, pick, why = recorded()
        if label != named and pick != label:
            raise BackendError(f"not chosen: {why}")
        out = b()
        out.reason = f"{'asked for' if label == named else why}; {getattr(out, 'reason', '')}".rstrip("; ")
        return out

    cands: dict[str, Callable[[], Backend]] = {
        "tensorrt": trt, "torch-cuda": torch_cuda, "torch-cpu": torch_cpu, "onnxruntime": ort,
        "onnxruntime-int8": lambda: chosen("onnxruntime-int8", int8_raw),
        "torch-cpu-bf16": lambda: chosen("torch-cpu-bf16", bf16_raw),
        SPLIT: split if named == SPLIT else _fail("not measured: runs under auto when the start-up CPU "
                                                  "timing (CPU-only devices) ranks it first")}
    order = list(CHAIN)
    if measured_order:
        raw = {"torch-cpu": torch_cpu, "onnxruntime": ort, "onnxruntime-int8": int8_raw,
               "torch-cpu-bf16": bf16_raw, SPLIT: split}
        cpu_only = cuda is None or not torch.cuda.is_available()
        measured = _measured_cpu(host, size, cache_dir, threads, recorded()[0], recorded()[1], raw,
                                 measure=cpu_only, k=keyframe_interval)
        if measured is not None:
            ranked, why, errors, made = measured
            for label in ranked:
                cands[label] = _take(label, made, raw[label], why)
            for label, err in errors.items():
                cands[label] = _fail(err)
            cpu = [c for c in CHAIN if c not in ("tensorrt", "torch-cuda")]
            # Not timed (no gates passed, creation failed) first: their skip reasons then show in
            # /diagnostics; then the timed ones, fastest first (the rest are its fallbacks).
            order = ["tensorrt", "torch-cuda"] + [c for c in cpu if c not in ranked] + ranked
    return [Candidate(label, cands[label]) for label in order]


def _take(label: str, made: dict[str, Backend], raw: Callable[[], Backend],
          why: str) -> Callable[[], Backend]:
    """A chain entry that hands out the backend the measurement made (once; a fallback creates
    a fresh one), with the measured reason (plus the gate line for reduced precision)."""
    def create() -> Backend:
        b = made.pop(label, None) or raw()
        from .cpu_choice import release

        release(made, b)  # the other measured backends: closed, not kept alive
        b.reason = f"{why}; {getattr(b, 'reason', '')}".rstrip("; ")
        return b
    return create


def _fail(reason: str) -> Callable[[], Backend]:
    def create() -> Backend:
        raise BackendError(reason)
    return create


def _measured_cpu(host: MultiTaskVideoNet, size: tuple[int, ...], cache_dir: str | Path | None, threads: int,
                  mhash: str, quant: dict[str, Any] | None, raw: dict[str, Callable[..., Backend]],
                  measure: bool, k: int) -> tuple[list[str], str, dict[str, str], dict[str, Backend]] | None:
    """(labels fastest first, why, label -> creation error, backends made) from the speed record
    of this model, size and thread count, timing the candidates now when there is none and
    ``measure`` (CPU-only: on a GPU machine the CPU entries are only fallbacks, not worth a
    measurement). None: no record and no measurement (the default order applies)."""
    import torch

    from . import cpu_choice

    nthreads = threads if threads > 0 else torch.get_num_threads()
    passing = cpu_choice.gate_passing(quant)
    wanted = list(cpu_choice.FP32) + [c for c in cpu_choice.REDUCED if c in passing]
    path = cpu_choice.speed_path(mhash, size, nthreads, cache_dir)  # type: ignore[arg-type]
    rec = cpu_choice.read_speed(mhash, size, nthreads, cache_dir)  # type: ignore[arg-type]
    made: dict[str, Backend] = {}
    qsha = cpu_choice.quant_sha(quant)
    stale = rec is not None and (rec.get("quant_sha") != qsha  # a new quantize record: new candidates
                                 or any("error" in rec["candidates"].get(c, {}) for c in wanted))
    if rec is None or stale or not set(wanted) <= set(rec["candidates"]):
        if not measure or not cpu_choice.timing_enabled():
            return None if rec is None else _from_record(rec, wanted, quant, passing, path.name, k, made)
        t0 = time.perf_counter()
        errors: dict[str, str] = {}
        for label in wanted:
            try:
                made[label] = raw[label](made) if label == SPLIT else raw[label]()
            except Exception as e:  # noqa: BLE001 - a candidate that cannot be created is not timed
                errors[label] = f"{type(e).__name__}: {e}"
        timed, failed = cpu_choice.time_frames(made, size)  # type: ignore[arg-type]
        for label, err in failed.items():  # failed while timed: not a candidate this start
            errors[label] = err
            made.pop(label, None)
        try:
            rec = cpu_choice.write_speed(mhash, size, nthreads, cache_dir, timed, errors,  # type: ignore[arg-type]
                                         quant_sha=qsha)
        except OSError as e:  # an unwritable cache must not stop the node: use the timing unsaved
            log.warning("CPU speed record not written (%s); timing again at the next start", e)
            rec = {"candidates": {**timed, **{c: {"error": v} for c, v in errors.items()}}}
        log.info("timed the CPU backends in %.1f s: %s", time.perf_counter() - t0, path.name)
    return _from_record(rec, wanted, quant, passing, path.name, k, made)


def _from_record(rec: dict[str, Any], wanted: list[str], quant: dict[str, Any] | None,
                 passing: dict[str, str], path_name: str, k: int, made: dict[str, Backend]
                 ) -> tuple[list[str], str, dict[str, str], dict[str, Backend]]:
    """The ranking, reason and per-candidate skip reasons from a speed record."""
    from . import cpu_choice

    cands = rec["candidates"]
    ranked = [c for c in cpu_choice.rank(rec, k) if c in wanted]
    why = cpu_choice.speed_why({**rec, "candidates": {c: cands[c] for c in ranked}}, path_name, k)
    # A candidate missing from the record: it joined after the timing (a newer quantize record)
    # and the start-up timing is switched off, so the record is used as it is.
    errors = {c: (f"could not be timed: {cands[c].get('error', '')}" if c in cands
                  else "not in the CPU speed record (timed before it passed the gates; start-up timing off)")
              for c in wanted if c not in ranked}
    for c in cpu_choice.REDUCED:  # no gate evidence: say which
        if c not in wanted:
            got = ((quant or {}).get("candidates") or {}).get(c)
            errors[c] = (f"missed the accuracy gates ({got.get('why', '')})" if isinstance(got, dict)
                         else "not in the mtl-perception-quantize record" if quant else cpu_choice.NO_GATES)
    if ranked and ranked[0] in passing:
        why += f"; gates passed: {passing[ranked[0]]}"
    return ranked, why, errors, made


def create_backend(model: MultiTaskVideoNet, backend: str = "auto", device: str = "auto",
                   cache_dir: str | Path | None = None, fp16: bool = True, threads: int = 0,
                   keyframe_interval: int = 5) -> tuple[FallbackBackend, list[str]]:
    """Create the backend ``backend`` asks for: ``(backend, one reason per skipped candidate)``.

    ``auto`` takes the first candidate of the chain that can be created. A named backend
    (``tensorrt``, ``torch``, ``onnxruntime``) must be created or this raises BackendError with the
    reason; the candidates after it in the chain still serve as runtime fallbacks. ``torch`` means
    PyTorch on ``device`` (CUDA when ``auto`` finds it).
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend: invalid value {backend!r}; allowed: {list(BACKENDS)}")
    chain = candidates(model, device, cache_dir, fp16, threads, named=_NAMED.get(backend),
                       measured_order=backend == "auto", keyframe_interval=keyframe_interval)
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
