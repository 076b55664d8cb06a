"""Stream state for graph runtimes (ONNX Runtime, TensorRT): the memory slots as plain buffers.

The exported step graphs take the slots they read as inputs (``key.*``, ``nonkey.*`` tensors and
a ``<slot>.weight`` scalar, 0 while the slot is empty) and return the slot they replace as
``new.*`` outputs. :class:`SlotState` holds those buffers between frames on the runtime's device
(numpy arrays for ONNX Runtime, torch CUDA tensors for TensorRT); the bookkeeping below is
array-agnostic so both runtimes swap slots the same way the model's ``step`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .export import GraphSpec

NEW = "new."


@dataclass(frozen=True)
class SlotState:
    """What a graph runtime remembers of a stream. A value: ``advance`` returns a new one and
    never writes into buffers an older state still references."""

    tensors: Mapping[str, Any] = field(default_factory=dict)
    filled: frozenset[str] = frozenset()  # slots ("key", "nonkey") holding a real frame
    # A keyframe has been stepped. Not the same as "key" in filled: a model without propagation
    # stores nothing, yet its stream has started and may go on with non-keyframes.
    started: bool = False

    @property
    def empty(self) -> bool:
        return not self.started


def feeds(spec: GraphSpec, state: SlotState | None, wanted: set[str],
          zeros: Callable[[str], Any], scalar: Callable[[float], Any]) -> dict[str, Any]:
    """The slot inputs of one graph: stored buffers, zeros for an empty slot (its weight 0 makes
    the graph add nothing from it), and only names in ``wanted`` (an exporter may drop an
    input the graph does not use)."""
    state = state or SlotState()
    out: dict[str, Any] = {}
    for r in spec.reads:
        full = r.slot in state.filled
        for n in r.names():
            if n in wanted:
                out[n] = state.tensors[n] if full else zeros(n)
        w = f"{r.slot}.weight"
        if w in wanted:
            out[w] = scalar(1.0 if full else 0.0)
    return out


def advance(spec: GraphSpec, state: SlotState | None, outputs: Mapping[str, Any]) -> SlotState:
    """The state after a step: the written slot replaced by the graph's ``new.*`` outputs."""
    state = state or SlotState()
    started = state.started or spec.is_keyframe
    if spec.writes is None:
        return SlotState(state.tensors, state.filled, started)
    tensors = dict(state.tensors)
    for n in spec.writes.names():
        tensors[n] = outputs[NEW + n]
    return SlotState(tensors, state.filled | {spec.writes.slot}, started)


def check_start(state: SlotState | None, is_keyframe: bool) -> None:
    if not is_keyframe and (state is None or state.empty):
        raise ValueError("a stream must start on a keyframe (the state is empty)")
