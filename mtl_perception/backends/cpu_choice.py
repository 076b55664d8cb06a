"""Which CPU backend ``auto`` runs: two records, both JSON next to the graphs, keyed by model hash.

* ``mtl_<hash16>_<H>x<W>_cpu_choice.json`` (``mtl-perception-quantize``): per candidate (PyTorch
  FP32, ONNX Runtime FP32, PyTorch BF16, ONNX Runtime INT8) whether it passed the accuracy gates
  and its average frame time; ``choice`` is the fastest that passed. Only this record lets a
  reduced-precision backend run (gate evidence for this model).
* ``mtl_<hash16>_<H>x<W>_cpu_speed_<T>t.json`` (the node's first start with ``backend: auto`` on
  the CPU): keyframe and non-keyframe ms of the exact FP32 backends (PyTorch, ONNX Runtime, the
  PyTorch + ONNX Runtime split) and of the reduced-precision ones the first record passed, timed
  together at start-up with the node's thread count ``T`` (:func:`time_frames`). FP32 backends
  need no gates, so the fastest of this record runs. Why at start-up and not in the quantize CLI:
  docs/cpu_inference.md (Split backend).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from .base import Backend
from .export import default_cache_dir, model_hash, onnx_filename  # noqa: F401 - select.py hashes through it

CHOICE_FORMAT = 1
# What the record may name: the CPU chain entries it measured and gated.
CHOOSABLE = ("torch-cpu", "onnxruntime", "onnxruntime-int8", "torch-cpu-bf16")
NO_RECORD = "no measured CPU choice for this model and size (run mtl-perception-quantize); rule: PyTorch FP32"
# Why a reduced-precision backend is not a candidate of auto: it has no accuracy-gate evidence.
NO_GATES = "no accuracy-gate record for this model and size (run mtl-perception-quantize)"
# Exact (FP32) CPU backends ``auto`` times at start-up; the reduced-precision ones join when the
# quantize record says they passed the gates.
FP32 = ("torch-cpu", "onnxruntime", "torch-cpu+onnxruntime")
REDUCED = ("onnxruntime-int8", "torch-cpu-bf16")
SPEED_FORMAT = 1
# The node's default K (and the gates'): the average frame the ranking compares.
RANK_INTERVAL = 5


def record_path(mhash: str, size: tuple[int, int], cache_dir: str | Path | None = None) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / onnx_filename(mhash, size, True).replace("_key.onnx", "_cpu_choice.json")


def time_backend(backend: Backend, clips: Sequence[np.ndarray], keyframe_interval: int,
                 clock: Callable[[], float] = time.perf_counter) -> float:
    """Mean seconds per frame over ``clips`` streamed at ``keyframe_interval`` (after a warm-up);
    ``clock``: wall time, or e.g. ``time.process_time`` for benchmarks under load."""
    backend.warmup(2)
    total, n = 0.0, 0
    for clip in clips:
        state: Any = None
        for t, img in enumerate(clip):
            t0 = clock()
            state = backend.step(img, state, t % keyframe_interval == 0).state
            total += clock() - t0
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


def choice_of(rec: dict[str, Any] | None, mhash: str, size: tuple[int, int],
              cache_dir: str | Path | None = None) -> tuple[str, str]:
    """(label, why) of a quantize record as :func:`read_record` returned it."""
    if rec is None:
        return "torch-cpu", NO_RECORD
    return str(rec["choice"]), f"measured ({record_path(mhash, size, cache_dir).name}): {rec['why']}"


def read_record(mhash: str, size: tuple[int, int],
                cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The quantize CLI's record (None when absent, unreadable or for another model)."""
    try:
        rec = json.loads(record_path(mhash, size, cache_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != CHOICE_FORMAT or rec.get("model_sha256") != mhash:
        return None
    return rec

# -- start-up speed record (FP32 + gate-passing reduced precision) ------------------------------
def gate_passing(rec: dict[str, Any] | None) -> dict[str, str]:
    """Reduced-precision labels that passed the gates in a quantize record -> their gate line."""
    if not rec:
        return {}
    cands = rec.get("candidates") or {}
    return {k: str(v.get("why", "")) for k, v in cands.items()
            if k in REDUCED and isinstance(v, dict) and v.get("passed")}


def speed_path(mhash: str, size: tuple[int, int], threads: int, cache_dir: str | Path | None = None) -> Path:
    p = record_path(mhash, size, cache_dir)
    return p.with_name(p.name.replace("_cpu_choice.json", f"_cpu_speed_{threads}t.json"))


def speed_env(threads: int) -> dict[str, Any]:
    """What the speed record is only valid for: the same threads, libraries, CPU and ONNX Runtime
    thread pools (spinning inside a run or blocking: up to 1.6x apart, docs/cpu_threads.md;
    records from before that setting lack the key and are timed again), INT8 kernel (the exact
    one, on CPUs without VNNI, is 1.2-1.3x slower: :mod:`.cpu_features`) and exporter code (a
    package update that changes the graphs, e.g. the stacked ILA products, changes their speed)."""
    import torch

    from .cpu_features import cpu_model, int8_kernel
    from .export import exporter_code_hash
    from .ort_backend import default_spin_in_run

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = ""
    return {"threads": threads, "torch": torch.__version__, "onnxruntime": ort, "cpu": cpu_model(),
            "ort_spin_in_run": default_spin_in_run(threads), "ort_int8_kernel": int8_kernel(),
            "exporter_sha256": exporter_code_hash()}


def timing_enabled() -> bool:
    """``MTL_PERCEPTION_CPU_TIMING=0`` skips the start-up timing (a record already cached is still
    used): for tests and short-lived tools whose start-up must stay cheap."""
    return os.environ.get("MTL_PERCEPTION_CPU_TIMING", "1").strip() != "0"


def quant_sha(quant: dict[str, Any] | None) -> str:
    """Fingerprint of the quantize record the speed record was taken with: a new record (another
    BF16 recipe, a new INT8 pair) makes the timing stale."""
    return hashlib.sha256(json.dumps(quant or {}, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Pause after each timed step, outside the timed window: PyTorch's OpenMP workers busy-wait ~9 ms
# after a parallel region, and an ONNX Runtime step taking its turn inside that window lost 14-16 %
# (docs/cpu_threads.md, "Spinning inside a run"); in the node no other backend runs between frames.
SETTLE_S = 0.012


def time_frames(backends: dict[str, Backend], size: tuple[int, int], keyframes: int = 4, interval: int = 4,
                settle_s: float = SETTLE_S) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """(median wall ms per keyframe and non-keyframe of each backend, label -> error of those that
    failed while timed), on ``keyframes`` x ``interval`` frames of one stream each. The backends
    take turns frame by frame, so a load that changes during the measurement hits all alike; one
    that raises is dropped (it would fail the node the same way), the others go on. After each
    step ``settle_s`` passes untimed, so the previous backend's thread pool is idle when the next
    one starts (``SETTLE_S``)."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(3)]
    failed: dict[str, str] = {}
    live = dict(backends)

    def guarded(label: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any run-time failure removes the candidate
            failed[label] = f"failed while timed: {type(e).__name__}: {e}"
            live.pop(label, None)
            return None

    for label, b in list(live.items()):
        guarded(label, lambda b=b: b.warmup(2))
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in live}
    states: dict[str, Any] = dict.fromkeys(live)
    for t in range(keyframes * interval):
        key = t % interval == 0
        for label, b in list(live.items()):
            t0 = time.perf_counter()
            img, st = imgs[t % len(imgs)], states[label]
            res = guarded(label, lambda b=b, img=img, st=st, key=key: b.step(img, st, key))
            t1 = time.perf_counter()
            time.sleep(settle_s)
            if res is None:
                continue
            states[label] = res.state
            times[label][0 if key else 1].append(t1 - t0)
    return ({k: {"key_ms": 1e3 * float(np.median(tk)), "nonkey_ms": 1e3 * float(np.median(tn))}
             for k, (tk, tn) in times.items() if k in live}, failed)


def _parts(backend: Backend) -> list[Backend]:
    """The backends a composite one runs on (the split: its keyframe and non-keyframe parts)."""
    parts = getattr(backend, "parts", None)
    return list(parts.values()) if isinstance(parts, dict) else []


def release(made: dict[str, Backend], keep: Backend) -> list[str]:
    """Close every backend the start-up timing made except ``keep`` and the parts ``keep`` runs on,
    then forget them all; returns the labels released. Why: each one holds its ONNX Runtime
    sessions (graph, weights, arena) or hooks on the shared model until closed and unreferenced,
    and only one of them serves. A composite (the split) is released part by part, so a part
    that ``keep`` is, or runs on, stays open."""
    kept = {id(keep), *(id(p) for p in _parts(keep))}
    closed: set[int] = set()
    released = []
    for label, b in made.items():
        if id(b) in kept:
            continue
        for unit in _parts(b) or [b]:
            if id(unit) not in kept and id(unit) not in closed:
                unit.close()
                closed.add(id(unit))
        released.append(label)
    made.clear()
    return released


def average_ms(entry: dict[str, Any], k: int = RANK_INTERVAL) -> float:
    """A backend's average frame at keyframe interval ``k``."""
    return (float(entry["key_ms"]) + (k - 1) * float(entry["nonkey_ms"])) / k


def write_speed(mhash: str, size: tuple[int, int], threads: int, cache_dir: str | Path | None,
                timed: dict[str, dict[str, float]], errors: dict[str, str],
                quant_sha: str = "") -> dict[str, Any]:
    """``timed``: label -> key/non-key ms; ``errors``: label -> why it could not be created or
    failed while timed; ``quant_sha``: :func:`quant_sha` of the quantize record used."""
    cands: dict[str, dict[str, Any]] = {k: dict(v) for k, v in timed.items()}
    cands.update({k: {"error": v} for k, v in errors.items()})
    rec = {"format": SPEED_FORMAT, "model_sha256": mhash, "input_size": list(size), **speed_env(threads),
           "quant_sha": quant_sha,
           "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "candidates": cands}
    path = speed_path(mhash, size, threads, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(rec, indent=1).encode())
    return rec


def read_speed(mhash: str, size: tuple[int, int], threads: int,
               cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The speed record, or None when absent, unreadable, or taken for other threads, library
    versions or another CPU (then ``auto`` measures again)."""
    try:
        rec = json.loads(speed_path(mhash, size, threads, cache_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("format") != SPEED_FORMAT or rec.get("model_sha256") != mhash \
            or rec.get("input_size") != list(size) or not isinstance(rec.get("candidates"), dict):
        return None
    if any(rec.get(k) != v for k, v in speed_env(threads).items()):
        return None
    return rec


def rank(rec: dict[str, Any], k: int = RANK_INTERVAL) -> list[str]:
    """Timed labels of a speed record, fastest average frame at ``k`` first."""
    timed = {n: c for n, c in rec["candidates"].items() if "key_ms" in c and "nonkey_ms" in c}
    return sorted(timed, key=lambda n: average_ms(timed[n], k))


def speed_why(rec: dict[str, Any], path_name: str, k: int = RANK_INTERVAL) -> str:
    """One line for ``backend_reason``: the ranking with each average, the winner's split."""
    order = rank(rec, k)
    if not order:
        return f"measured ({path_name}): no CPU backend could be timed"
    c = rec["candidates"]
    best = c[order[0]]
    rest = "; ".join(f"{n} {average_ms(c[n], k):.1f}" for n in order[1:])
    return (f"measured ({path_name}, {rec.get('threads')} threads): fastest of {len(order)} CPU backend(s) "
            f"at K = {k}: {order[0]} {average_ms(best, k):.1f} ms/frame (key {best['key_ms']:.1f}, "
            f"non-key {best['nonkey_ms']:.1f})" + (f"; {rest}" if rest else ""))
