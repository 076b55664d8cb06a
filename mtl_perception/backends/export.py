"""ONNX export of the streaming step, with the stream state as explicit graph inputs/outputs.

Two graphs per model and input size: a keyframe step (slow encoder) and a non-keyframe step
(fast encoder). Each reads the memory slots it needs (``key.*``: the last keyframe, ``nonkey.*``:
the last non-keyframe; per attention stream its features and h-embedding, plus a scalar weight
that is 0 while the slot is empty) and writes the slot it replaces. A runtime keeps the slots as
device buffers and swaps them between frames; both graphs trace ``MultiTaskVideoNet.step`` itself,
so there is no second implementation of the network to drift.

Exported files live in a cache folder, named by the model hash (config + weights), the input size
and the frame type, with a JSON sidecar recording the full key and the file's own SHA-256:
:func:`ensure_onnx` re-exports whenever the sidecar does not match (other weights, size, opset,
torch version, exporter/model source code, a truncated or edited file) instead of trusting a
stale graph.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_path, write_bytes_atomic
from ..model import MultiTaskVideoNet
from ..model.state import FrameMemory, StreamState

log = logging.getLogger(__name__)
# The TorchScript exporter (dynamo=False) traces the tiny test model in ~6 s where the dynamo
# exporter takes ~45 s on 2 cores, and gives the same graph; the dynamo path needs opset >= 18
# (no Pad adapter down to 17) and stays selectable.
OPSET = 17
# Bump when the graph layout (input/output names, slot semantics) changes: old files then miss.
EXPORT_FORMAT = 1
CACHE_ENV = "MTL_PERCEPTION_CACHE"


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
        # A non-keyframe graph always belongs to a started stream, even one that stores nothing.
        state = StreamState(keyframe=slots.get("key"), nonkey=slots.get("nonkey"),
                            frames=0 if self.spec.is_keyframe else 1)
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
    drop_empty_trailing_inputs(path)
    log.info("exported %s step to %s", "keyframe" if is_keyframe else "non-keyframe", path)
    return graph.spec


def drop_empty_trailing_inputs(path: str | Path) -> int:
    """Remove trailing empty ("") optional inputs from every node of the ONNX file at ``path``;
    returns how many. Same graph (an omitted trailing optional input is the same as an empty one).

    Why: torch.onnx writes ``F.pad`` as ``Pad(x, pads, "")``, and ONNX Runtime's PadFusion
    (Pad -> Conv pads) declines a Pad whose third input exists but is not a constant, so the
    EfficientNet encoders' 17 "same" Pads per graph ran as separate single-threaded copies, each
    with a NCHWc reorder out and back in around it. Without the empty input they fold into their
    convs: default model's non-keyframe graph 20.4 -> 16.3 ms, 1 thread (docs/cpu_threads.md).
    """
    import onnx

    m = onnx.load(str(path))
    dropped = 0
    for node in m.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
            dropped += 1
    if dropped:
        onnx.save(m, str(path))
    return dropped


# -- cache: files named and checked by model hash + size -----------------------------------------
def default_cache_dir() -> Path:
    """``$MTL_PERCEPTION_CACHE`` or ``~/.cache/mtl_perception``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mtl_perception").expanduser()


def model_hash(model: MultiTaskVideoNet) -> str:
    """SHA-256 of the model config and every parameter/buffer (names, dtypes, shapes, bytes).

    Two models with the same hash trace to the same graph, so it keys the ONNX and engine caches.
    """
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def frame_tag(is_keyframe: bool) -> str:
    return "key" if is_keyframe else "nonkey"


def onnx_filename(mhash: str, input_size: tuple[int, int], is_keyframe: bool) -> str:
    """``mtl_<hash16>_<H>x<W>_<key|nonkey>.onnx``: the CLI's and the backends' shared naming."""
    h, w = input_size
    return f"mtl_{mhash[:16]}_{h}x{w}_{frame_tag(is_keyframe)}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


# The traced graph depends on this exporter and on the model code, not only on the weights: a code
# or torch upgrade must re-export. Hashing the source files is cheap and needs no version bumps.
_EXPORTER_SOURCES = (Path(__file__), *sorted((Path(__file__).parents[1] / "model").glob("*.py")))


def code_hash(files: tuple[Path, ...] | None = None) -> str:
    """SHA-256 over the exporter's and the model package's source files (name and bytes)."""
    h = hashlib.sha256()
    for f in files if files is not None else _EXPORTER_SOURCES:
        h.update(f"{f.name}|".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def exporter_code_hash() -> str:
    """:func:`code_hash` of this installation, computed once per process."""
    return code_hash()


def onnx_key(mhash: str, input_size: tuple[int, int], is_keyframe: bool, opset: int = OPSET,
             torch_version: str | None = None, exporter: str | None = None) -> dict[str, Any]:
    """Everything that determines an exported graph; the sidecar must match all of it."""
    return {"format": EXPORT_FORMAT, "model_sha256": mhash, "input_size": list(input_size),
            "frame": frame_tag(is_keyframe), "opset": opset,
            "torch": torch_version or torch.__version__, "exporter_sha256": exporter or exporter_code_hash()}


def _expected_meta(mhash: str, input_size: tuple[int, int], is_keyframe: bool, opset: int) -> dict[str, Any]:
    return onnx_key(mhash, input_size, is_keyframe, opset)


def check_sidecar(path: Path, expected: dict[str, Any], hash_field: str) -> tuple[dict[str, Any] | None, str]:
    """The JSON sidecar of a cached file (``path`` with ``.json``) if every ``expected`` key
    matches and ``hash_field`` equals the file's SHA-256; else None and the reason. Shared by
    the ONNX and the TensorRT engine caches: a file that does not match is rebuilt, not trusted."""
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        return None, "not cached"
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable sidecar ({e})"
    for k, v in expected.items():
        if meta.get(k) != v:
            return None, f"{k} is {meta.get(k)!r}, expected {v!r}"
    if meta.get(hash_field) != file_sha256(path):
        return None, "file hash differs from its sidecar (truncated or modified)"
    return meta, "ok"


def write_sidecar(path: Path, meta: dict[str, Any]) -> None:
    write_bytes_atomic(_sidecar(path), json.dumps(meta, indent=1).encode())


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path
    spec: GraphSpec
    sha256: str
    model_sha256: str
    input_size: tuple[int, int]


def ensure_onnx(model: MultiTaskVideoNet, is_keyframe: bool, cache_dir: str | Path | None = None,
                input_size: tuple[int, int] | None = None, opset: int = OPSET,
                mhash: str | None = None, force: bool = False) -> OnnxArtifact:
    """The cached ONNX of one step graph, exported first if missing or not matching its key.

    The export runs on a CPU copy of the model, so a model already moved to CUDA by another
    backend is left where it is.
    """
    size = tuple(int(v) for v in (input_size or model.cfg.input_size))
    assert len(size) == 2
    mhash = mhash or model_hash(model)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / onnx_filename(mhash, size, is_keyframe)  # type: ignore[arg-type]
    expected = _expected_meta(mhash, size, is_keyframe, opset)  # type: ignore[arg-type]
    spec = graph_spec(model, is_keyframe)
    meta, why = (None, "forced") if force else check_sidecar(path, expected, "onnx_sha256")
    if meta is not None:
        return OnnxArtifact(path, spec, meta["onnx_sha256"], mhash, size)  # type: ignore[arg-type]
    log.info("exporting %s (%s)", path.name, why)
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    with atomic_path(path) as tmp:
        export_step(cpu_model, tmp, is_keyframe, input_size=size, opset=opset)  # type: ignore[arg-type]
    sha = file_sha256(path)
    write_sidecar(path, {**expected, "onnx_sha256": sha, "inputs": spec.input_names,
                         "outputs": spec.output_names})
    return OnnxArtifact(path, spec, sha, mhash, size)  # type: ignore[arg-type]


def parse_size(text: str) -> tuple[int, int]:
    """``"256x512"`` -> (256, 512)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x512, got {text!r}") from None
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be multiples of 32")
    return h, w


def load_model_arg(checkpoint: str | None, model_config: str | None) -> MultiTaskVideoNet:
    """The model a CLI names: a checkpoint (preferred) or a config with seeded random weights."""
    from ..model import ModelConfig, build_model, load_model

    if checkpoint:
        return load_model(checkpoint)[0]
    if model_config:
        torch.manual_seed(0)  # same random weights as the node's model_config path
        return build_model(ModelConfig.from_yaml(model_config)).eval()
    raise SystemExit("error: give --checkpoint or --model-config")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="model checkpoint (.pt)")
    g.add_argument("--model-config", help="model YAML (random weights, seed 0)")
    p.add_argument("--size", type=parse_size, action="append",
                   help="input size HxW (repeatable); default: the model's input_size")
    p.add_argument("--cache-dir", default=None, help=f"cache folder (default ${CACHE_ENV} or "
                   "~/.cache/mtl_perception)")


def main(argv: list[str] | None = None) -> int:
    """``mtl-perception-export``: write the keyframe and non-keyframe ONNX graphs to the cache."""
    p = argparse.ArgumentParser(prog="mtl-perception-export", description=main.__doc__)
    add_model_args(p)
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--force", action="store_true", help="re-export even if a matching file exists")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ..model import CheckpointError, ConfigError

    try:
        model = load_model_arg(args.checkpoint, args.model_config)
    except (CheckpointError, ConfigError) as e:  # one line naming the file (docs/errors.md)
        print(f"mtl-perception-export: {e}", file=sys.stderr)
        return 1
    mhash = model_hash(model)
    for size in args.size or [tuple(model.cfg.input_size)]:
        for key in (True, False):
            art = ensure_onnx(model, key, args.cache_dir, size, args.opset, mhash, force=args.force)
            print(f"{art.path}  sha256={art.sha256[:16]}  inputs={len(art.spec.input_names)} "
                  f"outputs={len(art.spec.output_names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
