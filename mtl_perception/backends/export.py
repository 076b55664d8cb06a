"""ONNX export of the streaming step, with the stream state as explicit graph inputs/outputs.

Two graphs per model and input size: a keyframe step (slow encoder) and a non-keyframe step
(fast encoder). Each reads the memory slots it needs (``key.*``: the last keyframe, ``nonkey.*``:
the last non-keyframe; per attention stream its features and h-embedding, plus a scalar weight
that is 0 while the slot is empty) and writes the slot it replaces. A runtime keeps the slots as
device buffers and swaps them between frames; both graphs trace ``MultiTaskVideoNet.step`` itself,
so there is no second implementation of the network to drift.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..model import MultiTaskVideoNet
from ..model.state import FrameMemory, StreamState

log = logging.getLogger(__name__)
# The TorchScript exporter (dynamo=False) traces the tiny test model in ~6 s where the dynamo
# exporter takes ~45 s on 2 cores, and gives the same graph; the dynamo path needs opset >= 18
# (no Pad adapter down to 17) and stays selectable.
OPSET = 17


@dataclass(frozen=True)
class SlotSpec:
    """Tensors of one memory slot, in graph order."""

    slot: str  # "key" or "nonkey"
    streams: tuple[str, ...]
    keyed: tuple[str, ...]  # streams that also carry an h-embedding

    def names(self) -> list[str]:
        return ([f"{self.slot}.features.{s}" for s in self.streams]
                + [f"{self.slot}.keys.{s}" for s in self.keyed])


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one step graph."""

    is_keyframe: bool
    reads: tuple[SlotSpec, ...]
    writes: SlotSpec | None
    tasks: tuple[str, ...]

    @property
    def input_names(self) -> list[str]:
        names = ["image"]
        for r in self.reads:
            names += r.names() + [f"{r.slot}.weight"]
        return names

    @property
    def output_names(self) -> list[str]:
        return list(self.tasks) + ([f"new.{n}" for n in self.writes.names()] if self.writes else [])


def graph_spec(model: MultiTaskVideoNet, is_keyframe: bool) -> GraphSpec:
    """Which slots a step of this frame type reads and writes, for this model's propagation."""
    p = model.cfg.propagation
    streams = tuple(model.streams)
    keyed = tuple(s for s in streams if s in model.propagation)
    key = SlotSpec("key", streams, keyed)
    nonkey = SlotSpec("nonkey", streams, keyed)
    attends = bool(keyed)
    if is_keyframe:
        reads = (nonkey,) if attends and p.multi_frame else ()
        writes = key if attends or model.reuse else None
    elif model.reuse:
        reads, writes = (SlotSpec("key", streams, ()),), None
    else:
        reads = ((key, nonkey) if p.multi_frame else (key,)) if attends else ()
        writes = nonkey if attends and p.multi_frame else None
    return GraphSpec(is_keyframe, reads, writes, tuple(model.tasks))


def memory_to_tensors(memory: FrameMemory, spec: SlotSpec) -> list[Tensor]:
    return [memory.features[s] for s in spec.streams] + [memory.keys[s] for s in spec.keyed]


def tensors_to_memory(tensors: list[Tensor], spec: SlotSpec, weight: Tensor | float = 1.0) -> FrameMemory:
    n = len(spec.streams)
    return FrameMemory(dict(zip(spec.streams, tensors[:n])), dict(zip(spec.keyed, tensors[n:])), weight)


class StepGraph(nn.Module):
    """``(image, *slot tensors) -> (*task outputs, *new slot tensors)`` around ``model.step``."""

    def __init__(self, model: MultiTaskVideoNet, is_keyframe: bool) -> None:
        super().__init__()
        self.model = model
        self.spec = graph_spec(model, is_keyframe)

    def forward(self, image: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        slots: dict[str, FrameMemory] = {}
        i = 0
        for r in self.spec.reads:
            n = len(r.names())
            slots[r.slot] = tensors_to_memory(list(flat[i:i + n]), r, weight=flat[i + n])
            i += n + 1
        state = StreamState(keyframe=slots.get("key"), nonkey=slots.get("nonkey"))
        out, new_state = self.model.step(image, state, self.spec.is_keyframe)
        result = [out[t] for t in self.spec.tasks]
        if self.spec.writes is not None:
            mem = new_state.keyframe if self.spec.writes.slot == "key" else new_state.nonkey
            assert mem is not None
            result += memory_to_tensors(mem, self.spec.writes)
        return tuple(result)


def example_inputs(model: MultiTaskVideoNet, is_keyframe: bool, batch: int = 1,
                   input_size: tuple[int, int] | None = None) -> tuple[Tensor, ...]:
    """Real (not random) slot contents: a short stream is run to fill them, so tracing and
    parity checks see realistic values."""
    h, w = input_size or tuple(model.cfg.input_size)
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(batch, 3, h, w, generator=g) for _ in range(3)]
    with torch.no_grad():
        _, st = model.step(frames[0], None, True)
        _, st = model.step(frames[1], st, False) if model.fast is not None or model.reuse else (None, st)
    spec = graph_spec(model, is_keyframe)
    flat: list[Tensor] = []
    for r in spec.reads:
        mem = st.keyframe if r.slot == "key" else st.nonkey
        assert mem is not None
        flat += memory_to_tensors(mem, r) + [torch.ones(())]
    return (frames[2], *flat)


def export_step(model: MultiTaskVideoNet, path: str | Path, is_keyframe: bool,
                input_size: tuple[int, int] | None = None, opset: int = OPSET,
                dynamo: bool = False) -> GraphSpec:
    """Export one step graph (static shapes for ``input_size``) to ``path``; returns its spec."""
    if opset < 17 or (dynamo and opset < 18):
        raise ValueError(f"opset must be >= 17 (>= 18 with dynamo), got {opset}")
    model = model.eval()
    graph = StepGraph(model, is_keyframe).eval()
    inputs = example_inputs(model, is_keyframe, input_size=input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, str(path), opset_version=opset, dynamo=dynamo,
                          input_names=graph.spec.input_names, output_names=graph.spec.output_names,
                          external_data=False, verbose=False)
    log.info("exported %s step to %s", "keyframe" if is_keyframe else "non-keyframe", path)
    return graph.spec
