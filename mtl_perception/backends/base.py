"""The backend protocol every inference engine implements.

A backend owns a model on one device. Its ``step`` mirrors ``MultiTaskVideoNet.step``: it takes a
frame, the stream state it returned last time (``None`` after a reset) and whether the frame is a
keyframe, and returns the outputs plus the new state. The state is opaque to the caller and
stays on the backend's device (GPU buffers for TensorRT), so the node only stores and drops it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class BackendError(RuntimeError):
    """A backend cannot be created or has failed at run time (the node falls back)."""


@dataclass
class StepResult:
    """Outputs of one frame at network resolution, on the host.

    ``semantic``: (H, W) int32 class ids; ``depth``: (H, W) float32 metres; ``normals``:
    (H, W, 3) float32 unit vectors (camera optical frame). Only the model's tasks are present.
    ``timings``: seconds per stage: ``encoder`` and ``decoder`` where the backend can split them
    (PyTorch), else ``inference`` for the fused graph run (ONNX Runtime, TensorRT) plus ``io``.
    ``is_keyframe``: set when the backend ran the frame as a different type than asked (a
    fallback restarts the stream on a keyframe); None means "as asked".
    """

    outputs: dict[str, np.ndarray]
    state: Any
    timings: dict[str, float] = field(default_factory=dict)
    is_keyframe: bool | None = None


def class_ids(logits: torch.Tensor) -> torch.Tensor:
    """(C, H, W) logits -> (H, W) int32 ids of the largest, the first one on ties (as argmax).

    On the CPU with channels-first logits this is a running maximum over the channels: C
    contiguous passes, 3-4x faster than ``argmax`` over the strided channel axis (21 vs 6 ms for
    19 x 256 x 512 on one core; docs/cpu_measurements.md). NaN logits are never picked."""
    if logits.device.type != "cpu" or logits.stride(0) == 1 or logits.shape[0] > 64:
        return logits.argmax(0).to(torch.int32)
    best = logits[0].clone()
    ids = torch.zeros(logits.shape[1:], dtype=torch.int32)
    for c in range(1, logits.shape[0]):
        ids.masked_fill_(logits[c] > best, c)
        torch.maximum(best, logits[c], out=best)
    return ids


def reduce_outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch-1 network outputs (NCHW) -> the :class:`StepResult` layout, on the same device:
    class ids (H, W) int32 (argmax on the device, so only ids cross to the host), depth (H, W)
    and normals (H, W, 3) float32. Keys other than the task names (e.g. state slots) are left out.
    """
    host: dict[str, torch.Tensor] = {}
    if "semantic" in out:
        host["semantic"] = class_ids(out["semantic"][0])
    if "depth" in out:
        host["depth"] = out["depth"][0, 0].float()
    if "normals" in out:
        host["normals"] = out["normals"][0].permute(1, 2, 0).float().contiguous()
    return host


def class_ids_host(logits: np.ndarray) -> np.ndarray:
    """:func:`class_ids` for a (C, H, W) host array, in NumPy: same ids (running maximum over
    contiguous channel planes, first index on ties, NaN logits never picked)."""
    if logits.shape[0] > 64 or not logits.flags.c_contiguous:
        return logits.argmax(0).astype(np.int32)
    best = logits[0].copy()
    ids = np.zeros(logits.shape[1:], dtype=np.int32)
    above = np.empty(logits.shape[1:], dtype=bool)
    for c in range(1, logits.shape[0]):
        np.greater(logits[c], best, out=above)
        np.copyto(ids, c, where=above)
        np.maximum(best, logits[c], out=best)
    return ids


def reduce_outputs_host(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`reduce_outputs` for host arrays (ONNX Runtime's outputs), in NumPy.

    Why not the torch version on ``torch.from_numpy`` views: its elementwise passes run on
    PyTorch's OpenMP pool, whose workers then busy-wait for a while on the other core just when
    the next ONNX Runtime run wakes its own workers (docs/cpu_threads.md, "Threads"). NumPy runs
    these passes on the calling thread."""
    host: dict[str, np.ndarray] = {}
    if "semantic" in out:
        host["semantic"] = class_ids_host(out["semantic"][0])
    if "depth" in out:
        host["depth"] = out["depth"][0, 0].astype(np.float32, copy=False)
    if "normals" in out:
        # (H, W, 3) as a view of the planar output, no copy: the node's postprocess normalises it
        # plane by plane straight into the interleaved message array (postprocess.unit_normals)
        host["normals"] = out["normals"][0].transpose(1, 2, 0).astype(np.float32, copy=False)
    return host


class Backend(abc.ABC):
    name: str = "base"

    def __init__(self, input_size: tuple[int, int], tasks: tuple[str, ...], num_classes: int) -> None:
        self.input_size = input_size
        self.tasks = tasks
        self.num_classes = num_classes

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Human-readable device, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100)``."""

    @abc.abstractmethod
    def step(self, image: np.ndarray, state: Any, is_keyframe: bool) -> StepResult:
        """``image``: (H, W, 3) uint8 RGB at ``input_size``. ``state``: what the previous step
        returned, or None to start a stream (then ``is_keyframe`` must be True)."""

    def warmup(self, frames: int = 2) -> None:
        """Run a few frames so lazy initialisation and autotuning happen before real traffic."""
        h, w = self.input_size
        img = np.zeros((h, w, 3), np.uint8)
        state = None
        for i in range(frames):
            state = self.step(img, state, is_keyframe=i == 0).state

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to free
        """Release device resources (engines, sessions); the backend is unusable afterwards."""
