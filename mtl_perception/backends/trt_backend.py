"""TensorRT backend (GPU): FP16/FP32 engines built from the exported step graphs.

What it guards against, because these are what break TensorRT nodes in the field:

- *Stale engines after an upgrade.* Engines are cached under a key of ONNX SHA-256 (whose own key
  covers weights, exporter code and torch version), input size, precision, TensorRT version,
  builder settings (flags, FP32-pinned layers, workspace), GPU name and compute capability, with
  a JSON sidecar holding the full key and the engine's own SHA-256; the file name carries the GPU
  name and a hash of the key. Any mismatch, a failed deserialisation or a truncated file means
  "rebuild", never "trust".
- *Silent minute-long builds.* Builds log every optimiser phase through an ``IProgressMonitor``
  plus a heartbeat every ``heartbeat_s``; ``mtl-perception-build-engine`` builds ahead of time.
- *FP16 accuracy loss.* Softmax, reductions, unary math (exp, log, sqrt), sigmoid/softplus
  activations and every layer of the ILA attention (its logits, softmax and weighted sum) are
  pinned to FP32 inside the FP16 engine (:func:`pinned_fp32`), and after loading an FP16 engine
  a short multi-frame stream of real frames is compared with the PyTorch FP32 model on the same
  GPU; if it misses the parity thresholds the backend uses the FP32 engine and says why.
- *Version drift.* Only TensorRT 10.x is supported (``SUPPORTED_TENSORRT``): 11.x removed the
  weakly typed FP16 builder flags this backend uses; another version is a BackendError naming
  the supported range, so ``auto`` skips TensorRT with that reason.
- *Multi-GPU.* Runtime, engines, contexts, stream and buffers are created under
  ``torch.cuda.device(cuda:N)`` of the configured device, never the current one.
- *Nodes that die.* Every failure raises :class:`BackendError`; ``select.FallbackBackend``
  switches to the next backend and counts it.

The stream state stays on the GPU: slot tensors are torch CUDA tensors whose addresses are bound
to the engine inputs; new slots are written by the engine into fresh buffers (torch's caching
allocator makes that free) so an older state is never overwritten. Only the final outputs
(argmax ids, depth, normals) are copied to the host.

``tensorrt`` is imported lazily: this module imports (and its tests skip) without it.

NOTE: written against the TensorRT 10 Python API; it has never run on a GPU in this repository
(``make gpu-check`` is the one command that proves it on the first GPU; see docs/backends.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from ..model import MultiTaskVideoNet
from . import slots
from .base import Backend, BackendError, StepResult, reduce_outputs
from .cuda_util import (
    check_frames,
    fp16_or_fp32,
    match_input_dtypes,
    resolve_cuda_device,
    stream_parity,
    torch_dtype_for,
)
from .export import (
    OnnxArtifact,
    add_model_args,
    check_sidecar,
    default_cache_dir,
    ensure_onnx,
    file_sha256,
    load_model_arg,
    model_hash,
    write_sidecar,
)

log = logging.getLogger(__name__)

ENGINE_FORMAT = 2
DEFAULT_WORKSPACE = 4 << 30
# The range setup.py's ``gpu`` extra pins. TensorRT 11 removed BuilderFlag.FP16,
# PREFER_PRECISION_CONSTRAINTS and platform_has_fast_fp16 (weak typing); supporting it means
# strongly typed networks built from an FP16 ONNX graph, which this backend does not export yet.
SUPPORTED_TENSORRT = (10, 11)  # major versions [min, max)
TENSORRT_PIP = "tensorrt-cu13>=10.13.2,<11"


def check_tensorrt_version(version: str) -> None:
    """BackendError unless ``version`` is in :data:`SUPPORTED_TENSORRT` (names the fix)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise BackendError(f"unrecognised tensorrt version {version!r}") from None
    lo, hi = SUPPORTED_TENSORRT
    if not lo <= major < hi:
        raise BackendError(f"tensorrt {version} is not supported (need {lo}.x; 11.x removed the FP16 "
                           f"builder flags this backend uses): pip install '{TENSORRT_PIP}'")


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError(f"the tensorrt package is not installed ({e})") from None
    check_tensorrt_version(trt.__version__)
    return trt


def gpu_identity(device: str = "cuda:0") -> dict[str, Any]:
    """GPU name and compute capability (part of the engine key: engines are GPU-specific)."""
    import torch

    if not torch.cuda.is_available():
        raise BackendError("CUDA is not available to torch")
    d = resolve_cuda_device(device, torch.cuda.current_device())
    major, minor = torch.cuda.get_device_capability(d)
    return {"gpu": torch.cuda.get_device_name(d), "compute_capability": f"{major}.{minor}"}


# Which layers an FP16 engine keeps in FP32 (part of the engine key through builder_settings).
# By TensorRT layer type: softmax, reductions (attention dot products, the normals' L2 norm) and
# unary math (exp, log, sqrt); by activation: sigmoid and softplus; by ONNX scope: every layer of
# the ILA attention product (module ``attend``), so its logits never pass through FP16
# elementwise/concat layers between the pinned ones. The ONNX parser names each layer after its
# ONNX node (``/semantic/attend/Mul_1``...), which is what the scope rule matches.
FP32_LAYER_TYPES = ("SOFTMAX", "REDUCE", "UNARY")
FP32_ACTIVATIONS = ("SIGMOID", "SOFTPLUS")
FP32_SCOPES = (r"/attend(_\d+)?/",)  # regexes: the exporter suffixes a module's 2nd call "_1"


def pinned_fp32(layer_type: str, layer_name: str, activation: str | None = None) -> bool:
    """Whether a layer (``trt.LayerType`` name, layer name, ``trt.ActivationType`` name for
    activation layers) is pinned to FP32 in an FP16 engine."""
    if layer_type in ("CONSTANT", "SHAPE", "ASSERTION"):
        return False  # no arithmetic; pinning them only adds reformats
    if layer_type in FP32_LAYER_TYPES or any(re.search(s, layer_name) for s in FP32_SCOPES):
        return True
    return layer_type == "ACTIVATION" and activation in FP32_ACTIVATIONS


def builder_settings(precision: str, workspace: int = DEFAULT_WORKSPACE) -> dict[str, Any]:
    """Everything the builder is told, as data: :func:`build_engine` applies exactly this, and
    it is part of the engine key, so changing a flag or the pinning rule rebuilds."""
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    fp16 = precision == "fp16"
    return {"network": "weakly_typed",
            "flags": ["FP16", "PREFER_PRECISION_CONSTRAINTS"] if fp16 else [],
            "fp32_layers": {"types": list(FP32_LAYER_TYPES), "activations": list(FP32_ACTIVATIONS),
                            "scopes": list(FP32_SCOPES)} if fp16 else None,
            "workspace": int(workspace), "optimization_level": 3}


def engine_key(onnx_sha256: str, input_size: tuple[int, int], precision: str, trt_version: str,
               gpu: dict[str, Any], builder: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full engine cache key; ``builder`` defaults to :func:`builder_settings` of ``precision``."""
    return {"format": ENGINE_FORMAT, "onnx_sha256": onnx_sha256, "input_size": list(input_size),
            "precision": precision, "tensorrt": trt_version,
            "builder": builder if builder is not None else builder_settings(precision), **gpu}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def engine_path(cache_dir: Path, onnx_path: Path, key: dict[str, Any]) -> Path:
    """Readable name with the GPU name (two GPUs of one compute capability do not share a
    file) and a hash of the whole key; the sidecar's full key is what is checked."""
    cc = str(key["compute_capability"]).replace(".", "")
    gpu = re.sub(r"[^a-z0-9]+", "-", str(key["gpu"]).lower()).strip("-")
    return (cache_dir / "engines" / f"{onnx_path.stem}_{key['onnx_sha256'][:8]}_{key['precision']}"
            f"_trt{key['tensorrt']}_{gpu}_sm{cc}_{key_hash(key)[:8]}.engine")


class _Progress:
    """Logs builder phases (an ``IProgressMonitor``) and a heartbeat while the build runs."""

    def __init__(self, trt: Any, label: str, heartbeat_s: float) -> None:
        self.label = label
        self.t0 = time.monotonic()
        self.phase = "starting"
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), daemon=True)
        outer = self

        class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                outer.phase = phase_name
                log.info("[%s %5.0f s] %s%s (%d steps)", outer.label, outer.elapsed,
                         f"{parent_phase} / " if parent_phase else "", phase_name, num_steps)

            def step_complete(self, phase_name: str, step: int) -> bool:
                outer.phase = f"{phase_name} step {step + 1}"
                return True  # False would cancel the build

            def phase_finish(self, phase_name: str) -> None:
                log.debug("[%s %5.0f s] done: %s", outer.label, outer.elapsed, phase_name)

        self.monitor = Monitor()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            log.info("[%s %5.0f s] still building (%s)", self.label, self.elapsed, self.phase)

    def __enter__(self) -> _Progress:
        self._beat.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._beat.join(timeout=1.0)


def pin_network(trt: Any, network: Any) -> list[str]:
    """Pin the layers :func:`pinned_fp32` selects to FP32 (compute and outputs); their names."""
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ltype = layer.type.name  # read before the downcast: IActivationLayer.type is the activation
        act = None
        if ltype == "ACTIVATION":
            layer.__class__ = trt.IActivationLayer  # TensorRT's Python way to reach subclass members
            act = layer.type.name
        if pinned_fp32(ltype, layer.name, act):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned


def parse_network(trt: Any, onnx_path: Path, builder: Any, logger: Any) -> tuple[Any, Any]:
    network = builder.create_network(0)  # TensorRT 10: explicit batch, weakly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    return network, parser


def build_engine(onnx_path: Path, precision: str, workspace: int = DEFAULT_WORKSPACE,
                 heartbeat_s: float = 10.0, settings: dict[str, Any] | None = None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (``fp16`` or ``fp32``) with exactly
    ``settings`` (default :func:`builder_settings`), logging progress. Runs on the current CUDA
    device: callers scope it with ``torch.cuda.device``."""
    trt = import_tensorrt()
    settings = settings if settings is not None else builder_settings(precision, workspace)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_network(trt, onnx_path, builder, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace"]))
    config.builder_optimization_level = int(settings["optimization_level"])
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings["fp32_layers"]:
        pinned = pin_network(trt, network)
        log.info("FP16 build: %d of %d layers pinned to FP32", len(pinned), network.num_layers)
    with _Progress(trt, f"build {onnx_path.stem} {precision}", heartbeat_s) as progress:
        config.progress_monitor = progress.monitor
        serialized = builder.build_serialized_network(network, config)
        elapsed = progress.elapsed
    if serialized is None:
        raise BackendError(f"TensorRT failed to build {onnx_path.name} ({precision}); see the log above")
    log.info("built %s %s in %.0f s", onnx_path.name, precision, elapsed)
    return bytes(serialized)


@dataclass
class EngineFile:
    path: Path
    key: dict[str, Any]
    rebuilt: bool
    reason: str


def ensure_engine(artifact: OnnxArtifact, precision: str, device: str = "cuda:0",
                  cache_dir: str | Path | None = None, rebuild: bool = False,
                  heartbeat_s: float = 10.0, workspace: int = DEFAULT_WORKSPACE) -> EngineFile:
    """The cached engine for this ONNX/size/precision/TensorRT/builder settings/GPU, built (on
    ``device``) if missing or stale."""
    import torch

    trt = import_tensorrt()
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    settings = builder_settings(precision, workspace)
    key = engine_key(artifact.sha256, artifact.input_size, precision, trt.__version__, gpu_identity(device),
                     settings)
    path = engine_path(folder, artifact.path, key)
    reason = "forced" if rebuild else check_sidecar(path, key, "engine_sha256")[1]
    if reason == "ok":
        return EngineFile(path, key, False, "cached")
    log.info("building engine %s (%s)", path.name, reason)
    with torch.cuda.device(resolve_cuda_device(device, torch.cuda.current_device())):
        data = build_engine(artifact.path, precision, heartbeat_s=heartbeat_s, settings=settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    write_sidecar(path, {**key, "engine_sha256": file_sha256(path)})
    return EngineFile(path, key, True, reason)


class _Engine:
    """One deserialised engine with its execution context and I/O table."""

    def __init__(self, trt: Any, runtime: Any, path: Path) -> None:
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {path.name}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"TensorRT could not create an execution context for {path.name}")
        self.inputs: dict[str, tuple[tuple[int, ...], Any]] = {}
        self.outputs: dict[str, tuple[tuple[int, ...], Any]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = torch_dtype_for(self.engine.get_tensor_dtype(name), name)
            is_in = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_in else self.outputs)[name] = (shape, dtype)


def zero_slots(engines: Any, zeros: Any, stream: Any, current: Any) -> dict[str, Any]:
    """The zero buffers fed for empty slots, allocated (and zero-filled) on the ``current``
    stream; ``stream``, where ``step`` reads them, then waits for it, so the first frames can
    never read them before the fill has run."""
    out = {}
    for eng in engines:
        for n, (shape, dtype) in eng.inputs.items():
            if n != "image" and not n.endswith(".weight"):
                out[n] = zeros(shape, dtype)
    stream.wait_stream(current)
    return out


class TrtBackend(Backend):
    """Runs the keyframe / non-keyframe engines with all buffers on one CUDA device."""

    name = "tensorrt"

    def __init__(self, model: MultiTaskVideoNet, device: str = "cuda:0", fp16: bool = True,
                 cache_dir: str | Path | None = None, input_size: tuple[int, int] | None = None,
                 verify: bool = True, rebuild: bool = False, workspace: int = DEFAULT_WORKSPACE) -> None:
        trt = import_tensorrt()
        import torch

        gpu_identity(device)  # raises BackendError without CUDA
        size = tuple(int(v) for v in (input_size or model.cfg.input_size))
        super().__init__(size, model.tasks, model.cfg.num_classes)  # type: ignore[arg-type]
        # An explicit index: every CUDA object below is created under it, not the current device.
        self._device = resolve_cuda_device(device, torch.cuda.current_device())
        self.cache_dir = cache_dir
        self.workspace = workspace
        self.notes: list[str] = []  # why FP32 was used instead of FP16, rebuilds, ...
        mhash = model_hash(model)
        try:
            self.artifacts = {k: ensure_onnx(model, k, cache_dir, size, mhash=mhash) for k in (True, False)}  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"ONNX export failed: {type(e).__name__}: {e}") from e
        self._trt = trt
        with torch.cuda.device(self._device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.stream = torch.cuda.Stream(self._device)
        self.precision = "fp16" if fp16 else "fp32"
        self._load(self.precision, rebuild)
        if fp16 and verify:
            def to_fp32() -> None:
                self.precision = "fp32"
                self._load("fp32", rebuild)

            fp16_or_fp32(lambda: self._verify(model), to_fp32, self.notes, "TensorRT")
        self.name = f"tensorrt-{self.precision}"

    # -- engines ----------------------------------------------------------------------------
    def _load(self, precision: str, rebuild: bool) -> None:
        """Load both engines; a cached engine that fails to deserialize is rebuilt once."""
        import torch

        self.engines: dict[bool, _Engine] = {}
        self.engine_files: dict[bool, EngineFile] = {}
        with torch.cuda.device(self._device):
            for k, art in self.artifacts.items():
                ef = ensure_engine(art, precision, str(self._device), self.cache_dir, rebuild,
                                   workspace=self.workspace)
                try:
                    eng = _Engine(self._trt, self._runtime, ef.path)
                except BackendError as e:
                    if ef.rebuilt:
                        raise
                    log.warning("%s; rebuilding", e)
                    self.notes.append(f"rebuilt {ef.path.name}: {e}")
                    ef = ensure_engine(art, precision, str(self._device), self.cache_dir, rebuild=True,
                                       workspace=self.workspace)
                    eng = _Engine(self._trt, self._runtime, ef.path)
                self.engines[k], self.engine_files[k] = eng, ef
            self._zeros = zero_slots(self.engines.values(),
                                     lambda s, d: torch.zeros(s, dtype=d, device=self._device),
                                     self.stream, torch.cuda.current_stream(self._device))

    def _verify(self, model: MultiTaskVideoNet, frames: int = 6) -> Any:
        """FP16 engine vs the PyTorch FP32 model on the same GPU over a short stream (K=3) of
        real frames (the bundled clip; synthetic structured frames if it is not installed)."""
        from .torch_backend import TorchBackend

        ref = TorchBackend(model, device=str(self._device), fp16=False)
        imgs, source = check_frames(self.input_size, frames)  # type: ignore[arg-type]
        meter = stream_parity(ref.step, self.step, imgs)
        ref.close()
        self.notes.append(f"FP16 self-check on {source}")
        return meter

    @property
    def device(self) -> str:
        import torch

        gpu = torch.cuda.get_device_name(self._device)
        return f"{self._device} ({gpu}, TensorRT {self._trt.__version__})"

    def describe(self) -> str:
        return f"{self.name} on {self.device} [{', '.join(e.path.name for e in self.engine_files.values())}]"

    # -- streaming ----------------------------------------------------------------------------
    def step(self, image: np.ndarray, state: slots.SlotState | None, is_keyframe: bool) -> StepResult:
        import torch

        slots.check_start(state, is_keyframe)
        eng = self.engines[is_keyframe]
        spec = self.artifacts[is_keyframe].spec
        t0 = time.perf_counter()
        with torch.cuda.device(self._device), torch.cuda.stream(self.stream):
            feed: dict[str, Any] = {}
            if "image" in eng.inputs:  # absent from a graph that ignores the frame (reuse)
                x = torch.from_numpy(np.ascontiguousarray(image)).to(self._device, non_blocking=True)
                feed["image"] = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0).contiguous()
            feed.update(slots.feeds(spec, state, set(eng.inputs), self._zeros.__getitem__,
                                    lambda v: torch.full((), v, dtype=torch.float32, device=self._device)))
            feed = match_input_dtypes(feed, eng.inputs)  # image and .weight scalars in the engine's dtype
            outs = {n: torch.empty(s, dtype=d, device=self._device) for n, (s, d) in eng.outputs.items()}
            for n, t in (*feed.items(), *outs.items()):
                if not eng.context.set_tensor_address(n, t.data_ptr()):
                    raise BackendError(f"TensorRT rejected the buffer for {n!r}")
            t1 = time.perf_counter()
            if not eng.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError("TensorRT execute_async_v3 failed")
            host_c = {k: v.to("cpu", non_blocking=True) for k, v in reduce_outputs(outs).items()}
        self.stream.synchronize()  # also surfaces asynchronous CUDA errors here, inside step
        t2 = time.perf_counter()
        host = {k: v.numpy() for k, v in host_c.items()}
        new_state = slots.advance(spec, state, outs)
        return StepResult(host, new_state, {"inference": t2 - t1, "io": t1 - t0})

    def close(self) -> None:
        self.engines = {}


# -- ahead-of-time builds -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``mtl-perception-build-engine``: export the ONNX graphs and build TensorRT engines."""
    p = argparse.ArgumentParser(prog="mtl-perception-build-engine", description=main.__doc__)
    add_model_args(p)
    p.add_argument("--precision", choices=("fp16", "fp32", "both"), default="fp16")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a matching engine exists")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between progress lines")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        import_tensorrt()
        gpu_identity(args.device)
    except BackendError as e:
        print(f"error: cannot build engines: {e}", file=sys.stderr)
        return 2
    model = load_model_arg(args.checkpoint, args.model_config)
    mhash = model_hash(model)
    precisions = ("fp16", "fp32") if args.precision == "both" else (args.precision,)
    for size in args.size or [tuple(model.cfg.input_size)]:
        for key in (True, False):
            art = ensure_onnx(model, key, args.cache_dir, size, mhash=mhash)
            for prec in precisions:
                ef = ensure_engine(art, prec, args.device, args.cache_dir, args.rebuild, args.heartbeat)
                print(f"{ef.path}  ({'built: ' + ef.reason if ef.rebuilt else 'cached, key matches'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
