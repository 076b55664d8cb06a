"""The start-up timing of the CPU backends (backends/cpu_choice.py time_frames, select.py): real
timing of scripted backends, a backend failing while timed, an unwritable cache, stale records
(creation errors, a new quantize record) and the switch that turns the timing off."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.backends import cpu_choice
from mtl_perception.backends.base import Backend, StepResult
from mtl_perception.backends.export import model_hash
from mtl_perception.backends.select import create_backend
from mtl_perception.model import ModelConfig, build_model

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 128)


class Scripted(Backend):
    """Sleeps ``key_s`` on keyframes and ``non_s`` otherwise; raises from step ``fail_at`` on."""

    name = "scripted"

    def __init__(self, key_s: float, non_s: float, fail_at: int | None = None) -> None:
        super().__init__(SIZE, ("semantic",), 2)
        self.key_s, self.non_s, self.fail_at, self.steps = key_s, non_s, fail_at, 0

    @property
    def device(self) -> str:
        return "cpu"

    def step(self, image: np.ndarray, state: object, is_keyframe: bool) -> StepResult:
        self.steps += 1
        if self.fail_at is not None and self.steps >= self.fail_at:
            raise RuntimeError("engine lost")
        time.sleep(self.key_s if is_keyframe else self.non_s)
        return StepResult({"semantic": np.zeros(SIZE, np.int32)}, state=self.steps)


def test_time_frames_separates_keyframes_and_drops_a_failing_backend() -> None:
    slow_key = Scripted(0.030, 0.002)
    slow_non = Scripted(0.002, 0.030)
    broken = Scripted(0.001, 0.001, fail_at=5)  # survives the 2 warm-up frames, fails while timed
    timed, failed = cpu_choice.time_frames({"a": slow_key, "b": slow_non, "c": broken}, SIZE,
                                           keyframes=2, interval=3)
    assert set(timed) == {"a", "b"} and set(failed) == {"c"}
    assert "engine lost" in failed["c"] and "failed while timed" in failed["c"]
    # sleeps are lower bounds: each bucket is at least its sleep, and the other bucket is not it
    assert timed["a"]["key_ms"] >= 30 and timed["a"]["nonkey_ms"] < 30
    assert timed["b"]["nonkey_ms"] >= 30 and timed["b"]["key_ms"] < 30
    assert slow_key.steps == 2 + 2 * 3  # warm-up + keyframes x interval, one stream


def test_time_frames_pauses_untimed_between_turns(monkeypatch) -> None:
    """After each step the next backend waits ``settle_s`` (the previous one's thread pool goes
    idle, docs/cpu_threads.md), and the wait is not part of any step's time."""
    clock = {"t": 0.0}
    log: list[tuple[str, float]] = []
    monkeypatch.setattr(cpu_choice.time, "perf_counter", lambda: clock["t"])
    monkeypatch.setattr(cpu_choice.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))

    class Clocked(Scripted):
        def __init__(self, label: str, key_s: float, non_s: float) -> None:
            super().__init__(key_s, non_s)
            self.label = label

        def step(self, image, state, is_keyframe):  # noqa: ANN001, ANN201
            log.append((self.label, clock["t"]))
            clock["t"] += self.key_s if is_keyframe else self.non_s  # a step of exactly this long
            return StepResult({"semantic": np.zeros(SIZE, np.int32)}, state=self.steps)

    a, b = Clocked("a", 0.030, 0.010), Clocked("b", 0.020, 0.005)
    timed, _ = cpu_choice.time_frames({"a": a, "b": b}, SIZE, keyframes=2, interval=3, settle_s=0.25)
    assert timed == {"a": {"key_ms": pytest.approx(30.0), "nonkey_ms": pytest.approx(10.0)},
                     "b": {"key_ms": pytest.approx(20.0), "nonkey_ms": pytest.approx(5.0)}}
    turns = log[4:]  # after the warm-up (2 frames each, back to back)
    assert [n for n, _ in turns] == ["a", "b"] * 6
    steps = {"a": (0.030, 0.010), "b": (0.020, 0.005)}
    for i, ((n, t0), (_, t1)) in enumerate(zip(turns, turns[1:])):
        took = steps[n][0] if (i // 2) % 3 == 0 else steps[n][1]
        assert t1 - t0 == pytest.approx(took + 0.25)  # the step, then the pause before the next turn
    assert cpu_choice.SETTLE_S >= 0.010  # longer than PyTorch's OpenMP workers busy-wait (~9 ms)


def test_speed_record_is_timed_again_when_the_ort_pools_change(tmp_path, monkeypatch) -> None:
    """A record timed with spinning ONNX Runtime pools does not rank blocking ones (up to 1.6x
    apart), nor does a record from before the setting existed (no key)."""
    monkeypatch.setenv("MTL_PERCEPTION_ORT_SPIN_IN_RUN", "1")
    timed = {"onnxruntime": {"key_ms": 20.0, "nonkey_ms": 10.0}}
    rec = cpu_choice.write_speed("ab" * 32, SIZE, 2, tmp_path, timed, {})
    assert rec["ort_spin_in_run"] is True  # switched on, 2 threads
    assert cpu_choice.read_speed("ab" * 32, SIZE, 2, tmp_path)["candidates"] == timed
    monkeypatch.delenv("MTL_PERCEPTION_ORT_SPIN_IN_RUN")  # the default: blocking pools
    assert cpu_choice.read_speed("ab" * 32, SIZE, 2, tmp_path) is None
    monkeypatch.setenv("MTL_PERCEPTION_ORT_SPIN_IN_RUN", "1")
    path = cpu_choice.speed_path("ab" * 32, SIZE, 2, tmp_path)
    old = json.loads(path.read_text())
    del old["ort_spin_in_run"]
    path.write_text(json.dumps(old))
    assert cpu_choice.read_speed("ab" * 32, SIZE, 2, tmp_path) is None


def test_speed_record_is_timed_again_after_the_exporter_code_changes(tmp_path, monkeypatch) -> None:
    """Graphs exported by other code (a package update: e.g. ILA's products stacked) run at
    other speeds, so their timing is not reused."""
    from mtl_perception.backends import export

    timed = {"onnxruntime": {"key_ms": 20.0, "nonkey_ms": 10.0}}
    monkeypatch.setattr(export, "exporter_code_hash", lambda: "1" * 64)
    cpu_choice.write_speed("ab" * 32, SIZE, 2, tmp_path, timed, {})
    assert cpu_choice.read_speed("ab" * 32, SIZE, 2, tmp_path)["candidates"] == timed
    monkeypatch.setattr(export, "exporter_code_hash", lambda: "2" * 64)
    assert cpu_choice.read_speed("ab" * 32, SIZE, 2, tmp_path) is None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig.from_yaml(ROOT / "config/model/tiny.yaml")
    cfg.input_size = SIZE
    return build_model(cfg).eval()


def fake(ms: dict[str, float], calls: list):
    def time_frames(backends, size, *a, **k):
        calls.append(sorted(backends))
        return {n: {"key_ms": ms[n], "nonkey_ms": ms[n]} for n in backends}, {}
    return time_frames


MS = {"torch-cpu": 10.0, "onnxruntime": 20.0, "torch-cpu+onnxruntime": 15.0}


def test_unwritable_cache_still_starts_on_the_timed_choice(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    calls: list = []
    monkeypatch.setattr(cpu_choice, "time_frames", fake(MS, calls))
    def unwritable(*a, **k):  # the graphs were written elsewhere; only the record's write fails
        raise PermissionError("read-only cache")

    monkeypatch.setattr(cpu_choice, "write_speed", unwritable)
    b, _ = create_backend(model, "auto", device="cpu", cache_dir=tmp_path / "cache", threads=1)
    assert b.name == "torch-cpu" and len(calls) == 1


def test_stale_records_are_timed_again(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    calls: list = []
    monkeypatch.setattr(cpu_choice, "time_frames", fake(MS, calls))
    cache = tmp_path / "cache"
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    path = cpu_choice.speed_path(model_hash(model), SIZE, 1, cache)
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert len(calls) == 1  # cached
    # a candidate that could not be created last time is not excluded for good
    rec = json.loads(path.read_text())
    rec["candidates"]["onnxruntime"] = {"error": "OSError: disk full"}
    path.write_text(json.dumps(rec))
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert len(calls) == 2 and "key_ms" in json.loads(path.read_text())["candidates"]["onnxruntime"]
    # a new quantize record (another recipe, a new INT8 pair) makes the timing stale
    cpu_choice.write_choice(model_hash(model), SIZE, cache, {
        "torch-cpu": {"passed": True, "ms": 10.0, "why": ""},
        "onnxruntime-int8": {"passed": False, "ms": 5.0, "why": "missed"}}, 5)
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert len(calls) == 3
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert len(calls) == 3


def test_timing_switched_off_uses_a_record_or_the_rule(model, tmp_path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(cpu_choice, "time_frames", fake({**MS, "onnxruntime": 5.0}, calls))
    cache = tmp_path / "cache"
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "0")
    b, _ = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert b.name == "torch-cpu" and calls == []  # no record: the documented rule
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    b, skipped = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert b.name == "onnxruntime"
    # reduced precision is skipped for want of gate evidence (not by a "PyTorch FP32" rule)
    assert [s for s in skipped if s.startswith("onnxruntime-int8")] == [
        f"onnxruntime-int8: BackendError: {cpu_choice.NO_GATES}"]
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "0")
    b, _ = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert b.name == "onnxruntime" and len(calls) == 1  # the cached record still counts
    # INT8 passes its gates after the timing (a new quantize record), timing still off: the node
    # starts on the record it has and says why INT8 was not ranked (no KeyError at start-up)
    cpu_choice.write_choice(model_hash(model), SIZE, cache, {
        "torch-cpu": {"passed": True, "ms": 10.0, "why": ""},
        "onnxruntime-int8": {"passed": True, "ms": 5.0, "why": "agree 99.5 %"}}, 5)
    b, skipped = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert b.name == "onnxruntime" and len(calls) == 1
    assert [s for s in skipped if s.startswith("onnxruntime-int8")] == [
        "onnxruntime-int8: BackendError: not in the CPU speed record (timed before it passed the gates; "
        "start-up timing off)"]


def test_load_backend_ranks_at_the_streams_keyframe_interval(tmp_path, monkeypatch) -> None:
    from mtl_perception.pipeline import load_backend

    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    calls: list = []

    def time_frames(backends, size, *a, **k):  # PyTorch: cheap keyframes; ORT: cheap non-keyframes
        calls.append(sorted(backends))
        ms = {"torch-cpu": (10.0, 30.0), "onnxruntime": (60.0, 20.0), "torch-cpu+onnxruntime": (40.0, 40.0)}
        return {n: {"key_ms": ms[n][0], "nonkey_ms": ms[n][1]} for n in backends}, {}

    monkeypatch.setattr(cpu_choice, "time_frames", time_frames)
    tiny = str(ROOT / "config/model/tiny.yaml")
    kw = {"model_config": tiny, "backend": "auto", "device": "cpu", "threads": 1, "warmup": False,
          "cache_dir": str(tmp_path)}
    # K = 1: every frame a keyframe -> PyTorch (10 ms); K = 10: (60 + 9 x 20) / 10 = 24 < 28 -> ORT
    assert load_backend(**kw, keyframe_interval=1).backend.name == "torch-cpu"
    assert load_backend(**kw, keyframe_interval=10).backend.name == "onnxruntime"
    assert len(calls) == 1  # one timing, ranked twice


@pytest.mark.parametrize(("requested", "cores", "expected"),
                         [(0, 2, 2), (0, 1, 1), (0, 3, 2), (0, 8, 7), (3, 2, 3), (1, 16, 1)])
def test_node_default_threads_use_both_of_two_cores_and_leave_one_of_more(requested: int, cores: int,
                                                                          expected: int) -> None:
    pytest.importorskip("rclpy")
    from mtl_perception.node import inference_threads

    assert inference_threads(requested, cores) == expected


def test_node_default_threads_count_the_cores_this_process_may_use(monkeypatch) -> None:
    """Under ``taskset -c 0,1`` on an 8-core machine the default is 2 threads, not 7."""
    pytest.importorskip("rclpy")
    import os

    from mtl_perception.node import inference_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert inference_threads(0) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert inference_threads(0) == 7
