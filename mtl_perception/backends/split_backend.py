"""Split backend: keyframes on one backend, non-keyframes on another (e.g. PyTorch + ONNX Runtime).

Why: on the CPU the two frame types favour different runtimes. For the shipped model
(EffNet-Lite2 slow / Lite0 fast, 192x384, 2 threads) PyTorch FP32 runs the keyframe in 54 ms
against ONNX Runtime's 96, while ONNX Runtime runs the non-keyframe in 31 ms against PyTorch's 51
(docs/cpu_inference.md). Both are FP32 and exact, so the split is exact too.

State: each part keeps its own representation (PyTorch a :class:`StreamState` of tensors, ONNX
Runtime a :class:`SlotState` of numpy arrays). A :class:`SplitState` carries the state of the part
that made it; when the next frame goes to the other part, only the slots that part's step reads
(``export.graph_spec``) are converted, once per switch, with zero-copy views where the layout
allows. Runs of one frame type (K = 1, adaptive keyframes back to back, K = 100) convert nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model import MultiTaskVideoNet, StreamState
from .base import Backend, BackendError, StepResult
from .export import SlotSpec, graph_spec, memory_to_tensors, tensors_to_memory
from .slots import SlotState


@dataclass(frozen=True)
class SplitState:
    """The state of the part that ran the last frame (``on_key``: the keyframe part)."""

    inner: Any
    on_key: bool


def _kind(backend: Backend) -> str:
    """Which state representation a backend uses: ``stream`` (PyTorch on the CPU) or ``slots``
    (ONNX Runtime: numpy arrays). Anything else has no converter here."""
    from .ort_backend import OrtBackend
    from .torch_backend import TorchBackend

    if isinstance(backend, TorchBackend) and backend._device.type == "cpu":
        return "stream"
    if isinstance(backend, OrtBackend):
        return "slots"
    raise BackendError(f"split backend: no state conversion for {backend.name} on {backend.device}")


def stream_to_slots(state: StreamState, reads: tuple[SlotSpec, ...]) -> SlotState:
    """The slots in ``reads`` of a PyTorch state as ONNX Runtime arrays (C order: PyTorch hands
    out channels-last features, ONNX Runtime reads the buffer as NCHW)."""
    tensors: dict[str, np.ndarray] = {}
    filled = set()
    for r in reads:
        mem = state.keyframe if r.slot == "key" else state.nonkey
        if mem is None:
            continue
        for n, t in zip(r.names(), memory_to_tensors(mem, r)):
            tensors[n] = np.ascontiguousarray(t.detach().float().numpy())
        filled.add(r.slot)
    return SlotState(tensors, frozenset(filled), started=not state.empty)


def slots_to_stream(state: SlotState, reads: tuple[SlotSpec, ...],
                    memory_format: torch.memory_format = torch.contiguous_format) -> StreamState:
    """The slots in ``reads`` of an ONNX Runtime state as a PyTorch state (views of the arrays,
    in the PyTorch backend's memory format)."""
    mems = {}
    for r in reads:
        if r.slot not in state.filled:
            continue
        ts = [torch.from_numpy(np.asarray(state.tensors[n])) for n in r.names()]
        mems[r.slot] = tensors_to_memory([t.contiguous(memory_format=memory_format) if t.dim() == 4 else t
                                          for t in ts], r)
    # ``frames`` only tells a started stream from an empty one (StreamState.empty).
    return StreamState(mems.get("key"), mems.get("nonkey"), frames=int(state.started))


class SplitBackend(Backend):
    """Keyframes on ``key``, non-keyframes on ``nonkey``; both built for the same ``model``."""

    def __init__(self, model: MultiTaskVideoNet, key: Backend, nonkey: Backend) -> None:
        if tuple(key.input_size) != tuple(nonkey.input_size):
            raise BackendError(f"split backend: input sizes differ ({key.input_size} vs {nonkey.input_size})")
        super().__init__(tuple(key.input_size), model.tasks, model.cfg.num_classes)  # type: ignore[arg-type]
        self.parts = {True: key, False: nonkey}
        self._kinds = {k: _kind(b) for k, b in self.parts.items()}
        # What a step of each frame type reads: all a switch has to convert.
        self._reads = {k: graph_spec(model, k).reads for k in (True, False)}
        self.name = f"{key.name}+{nonkey.name}"
        self.reason = ""

    @property
    def device(self) -> str:
        devs = {b.device for b in self.parts.values()}
        return " + ".join(sorted(devs)) if len(devs) > 1 else devs.pop()

    def describe(self) -> str:
        return (f"{self.name}: keyframes {self.parts[True].describe()}; "
                f"non-keyframes {self.parts[False].describe()}")

    def _convert(self, inner: Any, to_key: bool) -> Any:
        src, dst = self._kinds[not to_key], self._kinds[to_key]
        if src == dst:
            return inner
        reads = self._reads[to_key]
        if dst == "slots":
            return stream_to_slots(inner, reads)
        fmt = getattr(self.parts[to_key], "memory_format", torch.contiguous_format)
        return slots_to_stream(inner, reads, fmt)

    def step(self, image: np.ndarray, state: SplitState | None, is_keyframe: bool) -> StepResult:
        inner, convert = None, 0.0
        if state is not None and state.on_key == is_keyframe:
            inner = state.inner
        elif state is not None:
            t0 = time.perf_counter()
            inner = self._convert(state.inner, is_keyframe)
            convert = time.perf_counter() - t0
        res = self.parts[is_keyframe].step(image, inner, is_keyframe)
        res.state = SplitState(res.state, is_keyframe)
        if convert:  # a switch's conversion is host-side layout work, like ONNX Runtime's feeds
            res.timings["io"] = res.timings.get("io", 0.0) + convert
        return res

    def warmup(self, frames: int = 2) -> None:
        # Both parts and a switch each way: key, non-key, key, non-key.
        h, w = self.input_size
        img = np.zeros((h, w, 3), np.uint8)
        state = None
        for i in range(max(frames, 4)):
            state = self.step(img, state, is_keyframe=i % 2 == 0).state

    def close(self) -> None:
        for b in self.parts.values():
            b.close()


def torch_onnxruntime(model: MultiTaskVideoNet, cache_dir: Any = None, threads: int = 0,
                      key: Backend | None = None, nonkey: Backend | None = None) -> SplitBackend:
    """PyTorch FP32 keyframes + ONNX Runtime FP32 non-keyframes (the parts may be passed in
    when they exist already, e.g. from the start-up measurement)."""
    from .ort_backend import OrtBackend
    from .torch_backend import TorchBackend

    key = key or TorchBackend(model, device="cpu")
    nonkey = nonkey or OrtBackend(model, cache_dir=cache_dir, threads=threads)
    return SplitBackend(model, key, nonkey)
