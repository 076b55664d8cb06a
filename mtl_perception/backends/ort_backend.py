"""ONNX Runtime backend (CPU): the two exported step graphs, with the stream slots as arrays.

ILA is exported in a tiled form that ONNX Runtime runs well (one halo gather, two batched MatMuls:
``model/ila.py``). FP32 ONNX Runtime is about as fast as PyTorch eager here, so it comes after
PyTorch CPU in the ``auto`` chain and serves as the runtime fallback; its INT8 graphs
(:mod:`.quantize`) are the fast CPU path (figures: bench/latency.py, docs/cpu_inference.md).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import MultiTaskVideoNet
from . import slots
from .base import Backend, BackendError, StepResult, reduce_outputs_host
from .export import OnnxArtifact, ensure_onnx, model_hash

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}


class OrtBackend(Backend):
    """``step`` = one ``InferenceSession.run`` of the keyframe or the non-keyframe graph.

    Timings: the graphs fuse encoder and decoder, so the run is reported as ``inference``
    (plus ``io`` for the host-side layout work), never split into a made-up encoder/decoder.
    ``spinning``: let idle worker threads busy-wait between runs (ORT's default; off) and
    ``spin_in_run``: let them busy-wait inside a run only (None: :func:`default_spin_in_run`, off
    unless switched on); both explained at :func:`session_options`.
    """

    name = "onnxruntime"

    def __init__(self, model: MultiTaskVideoNet, cache_dir: str | Path | None = None,
                 input_size: tuple[int, int] | None = None, threads: int = 0,
                 providers: list[str] | None = None,
                 artifacts: dict[bool, OnnxArtifact] | None = None, spinning: bool = False,
                 spin_in_run: bool | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendError(f"onnxruntime is not installed ({e})") from None
        size = tuple(int(v) for v in (input_size or model.cfg.input_size))
        super().__init__(size, model.tasks, model.cfg.num_classes)  # type: ignore[arg-type]
        # ``artifacts``: graphs to run instead of the cached FP32 export (e.g. quantized ones).
        try:
            self.artifacts: dict[bool, OnnxArtifact] = artifacts or {
                k: ensure_onnx(model, k, cache_dir, size, mhash=model_hash(model)) for k in (True, False)}  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - any export failure means "no ORT backend"
            raise BackendError(f"ONNX export failed: {type(e).__name__}: {e}") from e
        if threads <= 0:
            threads = torch.get_num_threads()
        if spin_in_run is None:
            spin_in_run = default_spin_in_run(threads)
        self.spin_in_run = spin_in_run and not spinning
        opts = session_options(threads, spinning, spin_in_run)
        self.providers = providers or ["CPUExecutionProvider"]
        try:
            self.sessions = {k: ort.InferenceSession(str(a.path), opts, providers=self.providers)
                             for k, a in self.artifacts.items()}
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BackendError(f"onnxruntime cannot load the graphs: {e}") from e
        # Public so a caller (or a test) can abort a run: ``run_options.terminate = True``.
        self.run_options = ort.RunOptions()
        self._inputs = {k: {i.name: i for i in s.get_inputs()} for k, s in self.sessions.items()}
        self._outputs = {k: [o.name for o in s.get_outputs()] for k, s in self.sessions.items()}
        self._zeros: dict[str, np.ndarray] = {}
        for ins in self._inputs.values():
            for n, i in ins.items():
                if n != "image" and not n.endswith(".weight"):
                    self._zeros[n] = np.zeros(i.shape, _ORT_TYPES.get(i.type, np.float32))
        self.threads = threads

    @property
    def device(self) -> str:
        return f"cpu ({self.threads} threads, {self.providers[0]})"

    def step(self, image: np.ndarray, state: slots.SlotState | None, is_keyframe: bool) -> StepResult:
        slots.check_start(state, is_keyframe)
        t0 = time.perf_counter()
        art = self.artifacts[is_keyframe]
        x = np.ascontiguousarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / np.float32(255.0)
        # A graph that ignores the frame (reuse: non-keyframes decode the keyframe's features)
        # loses its image input at export.
        feed = {"image": np.ascontiguousarray(x)} if "image" in self._inputs[is_keyframe] else {}
        feed.update(slots.feeds(art.spec, state, set(self._inputs[is_keyframe]),
                                self._zeros.__getitem__, lambda v: np.array(v, np.float32)))
        t1 = time.perf_counter()
        values = self.sessions[is_keyframe].run(self._outputs[is_keyframe], feed, self.run_options)
        t2 = time.perf_counter()
        out = dict(zip(self._outputs[is_keyframe], values))
        # the reduction every backend does, in NumPy: no OpenMP pool between two ORT runs
        host = reduce_outputs_host({t: out[t] for t in self.tasks})
        new_state = slots.advance(art.spec, state, out)
        t3 = time.perf_counter()
        return StepResult(host, new_state, {"inference": t2 - t1, "io": (t1 - t0) + (t3 - t2)})

    def describe(self) -> str:
        files = ", ".join(a.path.name for a in self.artifacts.values())
        return f"{self.name} on {self.device} [{files}]"


# "1" / "0": the default of ``spin_in_run`` for every ONNX Runtime backend of the process (the node's
# included), e.g. "1" on a machine the node has to itself.
SPIN_ENV = "MTL_PERCEPTION_ORT_SPIN_IN_RUN"


def default_spin_in_run(threads: int) -> bool:
    """The backend's default for ``spin_in_run``: off (blocking pools), unless
    ``MTL_PERCEPTION_ORT_SPIN_IN_RUN`` is "1" (on from 2 threads; 1 thread has no workers to spin)
    or "0".

    Spinning inside a run made the default model's INT8 graphs 4-5 % faster back to back and 12-38 %
    at camera rate model-only, on a quiet 2-core machine (docs/cpu_threads.md, "Spinning inside a
    run"). Through the node it was off by default again (docs/node_performance.md, "Threads on the
    2-core target"): quiet, both cores, it gained ~3 % e2e (21.6-22.0 vs 22.2-22.7 ms p50), next to
    a nice-0 process busy half the time it lost (296-300 vs 300 of 300 frames, e2e 33-35 vs 27 ms)
    and next to one busy on a whole core it collapsed (178-181 vs 273-279 frames processed): two
    spinning workers and a busy process on 2 cores. A robot's CPU is rarely idle."""
    env = os.environ.get(SPIN_ENV, "").strip()
    if env == "1":
        return threads > 1
    return False


def session_options(threads: int, spinning: bool = False, spin_in_run: bool = False,
                    precise_int8: bool | None = None) -> Any:
    """The backend's ``SessionOptions``: full graph optimisation, ``threads`` intra-op threads, and
    worker threads that block when idle (unless ``spinning``: ONNX Runtime's default, idle workers
    busy-wait on for ~40 ms of CPU after each run). ``spin_in_run``: workers busy-wait between the
    ops of a run and stop when it returns (``session.force_spinning_stop``). ``precise_int8``
    (None: :func:`.cpu_features.needs_precise_int8`, i.e. on x86 CPUs without VNNI): INT8 ops run
    ONNX Runtime's u8 x u8 kernel, whose sums do not saturate (``session.x64quantprecision``; no
    effect on float ops).

    Why no spinning between runs: the backend holds two sessions (keyframe, non-keyframe), each
    with its own thread pool; with ORT's default the pool of the graph that just ran keeps its
    threads busy-waiting while the other graph starts, so on 2 cores the first frame after a
    switch ran 2-3x slower (``bench/small.yaml`` 256x512 keyframe 207-379 -> 94-112 ms, default
    model 56-64 -> 25-31 ms).

    Why ``spin_in_run`` exists (off by default, it loses under contention:
    :func:`default_spin_in_run`): with blocking workers every parallelised op wakes a sleeping
    thread, and ops of a few microseconds (ILA's gathers and transposes, SE, layout) ran slower on 2
    threads than on 1 (``bench/ort_profile.py --scaling 1 2``). The keyframe penalty it seemed to
    have (17.1 -> 28.4 ms, first measured under load 3-6) is CPU contention, not the pools: it comes
    back with one nice-0 busy loop next to a quiet run and is absent without, keyframes-only streams
    (one warm pool every frame) lose the same, and the other session's workers are idle after a run
    (``session.force_spinning_stop``: 0.1 ms of CPU in the 100 ms after it). PyTorch's OpenMP
    workers busy-wait ~9 ms after a parallel region; an ONNX Runtime step right after a PyTorch one
    (the ``auto`` start-up timing's turns) lost 16 % with spinning, 14 % without, hence the pause
    between turns in ``cpu_choice.time_frames``.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if precise_int8 is None:
        from .cpu_features import needs_precise_int8

        precise_int8 = needs_precise_int8()[0]
    if precise_int8:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_in_run else "0")
        if spin_in_run:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def session_for(path: str | Path, threads: int = 0, spinning: bool = False) -> Any:
    """A plain CPU session with the backend's options (benchmarks of sub-graphs, e.g. ILA alone)."""
    import onnxruntime as ort

    opts = session_options(threads or torch.get_num_threads(), spinning)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
