"""The features a stream carries between frames, as one explicit object.

The node, the ONNX exporter and the trainer all pass a :class:`StreamState` into
``MultiTaskVideoNet.step`` and get a new one back; nothing is hidden in module attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FrameMemory:
    """One past frame: per attention stream (a task name, or ``shared``) its SE-selected
    features (the attention values) and their embedding ``h(features)`` (the keys).

    ``weight`` multiplies what is propagated from this frame; 1 normally. The exporter feeds it
    as an input so a graph with fixed inputs can still express "no such frame yet" (weight 0).
    """

    features: dict[str, Tensor]
    keys: dict[str, Tensor]
    weight: Tensor | float = 1.0

    def map(self, fn) -> FrameMemory:  # noqa: ANN001 - a tensor -> tensor callable
        w = fn(self.weight) if isinstance(self.weight, Tensor) else self.weight
        return FrameMemory({k: fn(v) for k, v in self.features.items()},
                           {k: fn(v) for k, v in self.keys.items()}, w)


@dataclass
class StreamState:
    """What a video stream remembers: the last keyframe and the last non-keyframe.

    A fresh (reset) state has neither; the first frame of a stream must be a keyframe.
    """

    keyframe: FrameMemory | None = None
    nonkey: FrameMemory | None = None
    frames: int = 0  # frames stepped since the last reset

    @property
    def empty(self) -> bool:
        """No frame since the reset. (A model without propagation stores no keyframe memory,
        yet its stream has started once a keyframe went through.)"""
        return self.keyframe is None and self.frames == 0

    def reset(self) -> StreamState:
        """Return an empty state (states are values; the old one is left untouched)."""
        return StreamState()

    def detach(self) -> StreamState:
        """Cut the autograd history (truncated back-propagation through a long stream)."""
        return self._map(lambda t: t.detach())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> StreamState:
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def _map(self, fn) -> StreamState:  # noqa: ANN001
        return StreamState(
            self.keyframe.map(fn) if self.keyframe is not None else None,
            self.nonkey.map(fn) if self.nonkey is not None else None,
            self.frames,
        )
