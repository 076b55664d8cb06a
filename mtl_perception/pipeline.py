"""One frame's way from RGB pixels to published-ready outputs, shared by the node and eval-bag:
preprocess (resize to network size) -> ``Backend.step`` -> postprocess (resize back, NaN depth).
The node stops after ``Backend.step`` (:meth:`Pipeline.infer`) and sizes each subscribed topic
itself (``outputs.py``); eval-bag and the tests take every task at once (:meth:`Pipeline.process`).

Also :func:`load_backend`, the single place that turns the node's ``checkpoint`` /
``model_config`` / ``backend`` / ``device`` settings into a ready backend, so the ROS node and the
offline tools load models the same way and fail with the same messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends.base import Backend
from .backends.select import BACKENDS  # noqa: F401 - the node's choices: one list, select's
from .output_filter import NoFilter, OutputFilter
from .postprocess import postprocess
from .preprocess import resize_to_network
from .scheduler import Decision

OUTPUT_RESOLUTIONS = ("network", "input")


@dataclass
class LoadedBackend:
    backend: Backend
    trained: bool
    num_classes: int
    class_names: tuple[str, ...]
    # Human-readable lines: where the model came from, which backend, why (for logs/diagnostics).
    report: list[str] = field(default_factory=list)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    # Refuse what is not a device instead of letting the backend chain quietly fall back to the CPU.
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"parameter device: invalid value {device!r}; allowed: auto, cpu, cuda, cuda:N")
    return device


def _make_backend(model: Any, backend: str, device: str, cache_dir: str, fp16: bool,
                  threads: int, keyframe_interval: int = 5) -> tuple[Backend, list[str]]:
    """The one place a backend is constructed: the fallback chain of ``backends.select``
    (``keyframe_interval``: the K that ``auto`` ranks measured CPU backends at)."""
    from .backends.select import create_backend

    b, skipped = create_backend(model, backend, _resolve_device(device), cache_dir=cache_dir or None,
                                fp16=fp16, threads=threads, keyframe_interval=keyframe_interval)
    return b, [f"backend {backend!r} -> {b.describe()}"] + [f"skipped {s}" for s in skipped]


def resolve_path(path: str) -> Path:
    """A relative model/checkpoint path as given (cwd) if it exists, else relative to the installed
    package share folder (``ros2 launch`` and pip installs run from anywhere), else relative to the
    source checkout. Unresolved paths come back unchanged so the error names what the user wrote."""
    from .share import find

    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return find(p) or p


RANDOM = "random"  # checkpoint value asking for random (untrained) weights


def model_source(checkpoint: str, model_config: str) -> tuple[str, str]:
    """The one rule for which model a setting means, returned as (checkpoint, model_config):

    * both empty: the shipped trained checkpoint (``share.DEFAULT_CHECKPOINT``);
    * ``checkpoint`` a path: that checkpoint (``model_config`` is ignored);
    * ``checkpoint`` = ``"random"``: random weights of ``model_config`` (default: the tiny config);
    * ``checkpoint`` empty, ``model_config`` set: random weights of that config (explicitly asked).
    """
    from .share import default_checkpoint

    if checkpoint == RANDOM:
        return "", model_config or "config/model/tiny.yaml"
    if not checkpoint and not model_config:
        return default_checkpoint(), ""
    return checkpoint, model_config


def load_backend(checkpoint: str = "", model_config: str = "", backend: str = "auto",
                 device: str = "auto", threads: int = 0, warmup: bool = True, cache_dir: str = "",
                 fp16: bool = True, keyframe_interval: int = 5) -> LoadedBackend:
    """Build the model from ``checkpoint`` (preferred) or ``model_config`` (random weights).

    Raises ``CheckpointError`` / ``ConfigError`` / ``BackendError`` / ``ValueError`` with a message
    naming the offending path or setting.
    """
    from .model import ModelConfig, build_model, load_model

    if threads > 0:
        torch.set_num_threads(threads)
    report: list[str] = []
    checkpoint, model_config = model_source(checkpoint, model_config)
    if checkpoint:
        model, meta = load_model(resolve_path(checkpoint))
        trained = bool(meta.get("trained", False))
        report.append(f"checkpoint {checkpoint!r}" + ("" if trained else " (meta.trained is not true)"))
    elif model_config:
        cfg = ModelConfig.from_yaml(resolve_path(model_config))
        torch.manual_seed(0)  # untrained but reproducible outputs
        model = build_model(cfg)
        trained = False
        report.append(f"model_config {model_config!r} with random weights")
    else:
        raise ValueError("no model: the shipped checkpoint models/mila_street_lite.pt is not installed; "
                         "set 'checkpoint' (or checkpoint 'random' for untrained weights)")
    b, lines = _make_backend(model, backend, device, cache_dir, fp16, threads, keyframe_interval)
    report += lines
    if warmup:
        b.warmup()
    return LoadedBackend(b, trained, int(model.cfg.num_classes), tuple(model.cfg.class_names), report)


@dataclass
class FrameResult:
    """One processed frame: outputs (at the requested size from ``process``, the backend's at
    network resolution from ``infer``), what was done, and stage timings (s)."""

    outputs: dict[str, np.ndarray]
    is_keyframe: bool
    reset: str | None
    timings: dict[str, float]
    # The RGB image at output size (for overlays), i.e. the input or its network-size resize.
    rgb: np.ndarray


class Pipeline:
    """preprocess -> backend.step -> postprocess, holding the backend's stream state.

    ``output_resolution``: ``"network"`` (cheapest) or ``"input"`` (outputs match the input
    image pixel for pixel, as REP 118 consumers pairing with camera_info usually want).
    ``output_filter`` (``output_filter.make_filter``) smooths the outputs over time at network
    resolution, before anything is resized or coloured; it may be replaced between frames (a new
    filter starts with no history) and is reset with the stream.
    """

    def __init__(self, backend: Backend, output_resolution: str = "network",
                 output_filter: OutputFilter | None = None) -> None:
        self.backend = backend
        self.output_resolution = output_resolution
        self._state: Any = None
        self.output_filter: OutputFilter = output_filter or NoFilter()

    @property
    def output_resolution(self) -> str:
        return self._output_resolution

    @output_resolution.setter
    def output_resolution(self, value: str) -> None:
        if value not in OUTPUT_RESOLUTIONS:
            raise ValueError(f"output_resolution must be one of {list(OUTPUT_RESOLUTIONS)}, got {value!r}")
        self._output_resolution = value

    def reset(self) -> None:
        self._state = None
        self.output_filter.reset()

    def output_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        return tuple(input_size) if self._output_resolution == "input" else tuple(self.backend.input_size)

    def infer(self, rgb: np.ndarray, decision: Decision) -> FrameResult:
        """Preprocess and ``Backend.step`` only: ``outputs`` are the backend's, at network resolution
        (the node brings each subscribed topic to the output size itself, see ``outputs.py``).
        A reset in ``decision`` drops the stream state first; a non-keyframe without state
        (cannot happen with the scheduler, but can with a hand-made decision) is promoted to a
        keyframe rather than failing."""
        t0 = time.perf_counter()
        flt = self.output_filter  # read once: the node may swap it from another thread
        if decision.reset is not None:
            self._state = None
            flt.reset()
        is_key = decision.is_keyframe or self._state is None
        net_in = resize_to_network(rgb, tuple(self.backend.input_size))
        t1 = time.perf_counter()
        try:
            res = self.backend.step(net_in, self._state, is_key)
        except Exception:
            # A failed step leaves the state unknown: restart the stream on the next frame.
            flt.reset()
            self._state = None
            raise
        self._state = res.state
        if res.is_keyframe is not None:  # a backend fallback restarted the stream on this frame
            is_key = res.is_keyframe
        step = time.perf_counter() - t1
        timings = {"preprocess": t1 - t0}
        if "encoder" in res.timings:
            enc = float(res.timings["encoder"])
            timings.update(encoder=min(enc, step), decoder=max(0.0, step - enc))
        else:
            # ONNX Runtime / TensorRT run one fused graph per frame type: no encoder/decoder split.
            timings["inference"] = step
        outputs = res.outputs
        if not isinstance(flt, NoFilter):  # no "filter" stage in the latency tables unless one runs
            t2 = time.perf_counter()
            outputs = flt(outputs)
            timings["filter"] = time.perf_counter() - t2
        size = self.output_size(rgb.shape[:2])
        return FrameResult(outputs, is_key, decision.reset, timings,
                           rgb if size == tuple(rgb.shape[:2]) else net_in)

    def process(self, rgb: np.ndarray, decision: Decision,
                tasks: set[str] | frozenset[str] | None = None) -> FrameResult:
        """Run one frame (:meth:`infer`), outputs of ``tasks`` (default: all) at the output size."""
        res = self.infer(rgb, decision)
        t0 = time.perf_counter()
        # Resizing to input resolution is the costliest host work: only for tasks someone uses.
        wanted = res.outputs if tasks is None else {k: v for k, v in res.outputs.items() if k in tasks}
        res.outputs = postprocess(wanted, self.output_size(rgb.shape[:2]))
        res.timings["postprocess"] = time.perf_counter() - t0
        return res
