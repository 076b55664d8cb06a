"""Which CPU backend ``auto`` runs: measured once (``mtl-perception-quantize``), cached as JSON.

The record lives next to the graphs (``mtl_<hash16>_<H>x<W>_cpu_choice.json``) and holds, per
candidate (PyTorch FP32, ONNX Runtime FP32, PyTorch BF16, ONNX Runtime INT8), whether it passed the
accuracy gates and its average frame time at the measured keyframe interval; ``choice`` is the
fastest that passed. ONNX Runtime FP32 is a candidate too: it ran 1.15-1.7x faster than PyTorch FP32
on every model measured here (docs/cpu_inference.md), and only the record can say so for a model.
Without a record ``auto`` keeps the documented rule: PyTorch FP32 (nothing reduced-precision runs
without gate evidence for this model).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from .base import Backend
from .export import default_cache_dir, model_hash, onnx_filename

CHOICE_FORMAT = 1
# What the record may name: the CPU chain entries it measured and gated.
CHOOSABLE = ("torch-cpu", "onnxruntime", "onnxruntime-int8", "torch-cpu-bf16")
NO_RECORD = "no measured CPU choice for this model and size (run mtl-perception-quantize); rule: PyTorch FP32"


def record_path(mhash: str, size: tuple[int, int], cache_dir: str | Path | None = None) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / onnx_filename(mhash, size, True).replace("_key.onnx", "_cpu_choice.json")


def time_backend(backend: Backend, clips: Sequence[np.ndarray], keyframe_interval: int) -> float:
    """Mean seconds per frame over ``clips`` streamed at ``keyframe_interval`` (after a warm-up)."""
    backend.warmup(2)
    total, n = 0.0, 0
    for clip in clips:
        state: Any = None
        for t, img in enumerate(clip):
            t0 = time.perf_counter()
            state = backend.step(img, state, t % keyframe_interval == 0).state
            total += time.perf_counter() - t0
            n += 1
    return total / max(1, n)


def write_choice(mhash: str, size: tuple[int, int], cache_dir: str | Path | None,
                 candidates: dict[str, dict[str, Any]], keyframe_interval: int) -> dict[str, Any]:
    """``candidates``: label -> {"passed": bool, "ms": float, "why": str}; returns the record."""
    ok = {k: v for k, v in candidates.items()
          if k in CHOOSABLE and v.get("passed") and v.get("ms") is not None}
    choice = min(ok, key=lambda k: ok[k]["ms"]) if ok else "torch-cpu"
    why = (f"fastest of {len(ok)} gate-passing CPU backend(s): {ok[choice]['ms']:.1f} ms/frame at "
           f"K = {keyframe_interval}" if ok else "no candidate passed the gates")
    rec = {"format": CHOICE_FORMAT, "model_sha256": mhash, "input_size": list(size), "choice": choice,
           "why": why, "keyframe_interval": keyframe_interval, "candidates": candidates}
    path = record_path(mhash, size, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(rec, indent=1).encode())
    return rec


def read_choice(model: Any, cache_dir: str | Path | None = None,
                input_size: tuple[int, int] | None = None) -> tuple[str, str]:
    """(label, why) of the recorded CPU choice for ``model``; ("torch-cpu", rule) without one."""
    size = tuple(int(v) for v in (input_size or model.cfg.input_size))
    mhash = model_hash(model)
    path = record_path(mhash, size, cache_dir)  # type: ignore[arg-type]
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return "torch-cpu", NO_RECORD
    if rec.get("format") != CHOICE_FORMAT or rec.get("model_sha256") != mhash:
        return "torch-cpu", NO_RECORD
    return str(rec["choice"]), f"measured ({path.name}): {rec['why']}"
