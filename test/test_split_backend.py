"""The split backend (PyTorch FP32 keyframes + ONNX Runtime FP32 non-keyframes) streams like PyTorch
FP32 on every frame, converting the stream state when the frame type switches; and ``auto`` on the
CPU runs the fastest exact backend of a start-up measurement, cached next to the graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtl_perception.backends import cpu_choice
from mtl_perception.backends.export import graph_spec, model_hash
from mtl_perception.backends.select import SPLIT, create_backend
from mtl_perception.backends.torch_backend import TorchBackend
from mtl_perception.model import ModelConfig, build_model

pytest.importorskip("onnxruntime")
from mtl_perception.backends import split_backend  # noqa: E402
from mtl_perception.backends.ort_backend import OrtBackend  # noqa: E402
from mtl_perception.backends.slots import SlotState  # noqa: E402

TINY = "config/model/tiny.yaml"
SIZE = (64, 128)


def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml(TINY)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("split_cache")


@pytest.fixture(scope="module")
def ort(model, cache):
    return OrtBackend(model, cache_dir=cache, threads=1)


@pytest.fixture(scope="module")
def split(model, ort):
    return split_backend.SplitBackend(model, TorchBackend(model, "cpu"), ort)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    # A moving smooth pattern plus noise: consecutive frames are related, as in video.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    out = []
    for t in range(n):
        base = np.stack([np.sin((xx + 3 * t) / 9.0), np.cos((yy - 2 * t) / 7.0),
                         np.sin((xx + yy + t) / 13.0)], -1)
        out.append(np.clip(127.5 * (base + 1) + rng.normal(0, 20, (*SIZE, 3)), 0, 255).astype(np.uint8))
    return out


def stream(backend, imgs, flags, resets=()):
    state, out = None, []
    for i, (img, k) in enumerate(zip(imgs, flags)):
        if i in resets:
            state = None
        r = backend.step(img, state, k)
        state = r.state
        out.append(r)
    return out


def assert_same(ref, got, where):
    # Both FP32: ~1e-6 relative apart (the ONNX parity); a lost or stale slot moves outputs by
    # orders of magnitude more (checked below).
    np.testing.assert_allclose(got.outputs["depth"], ref.outputs["depth"], rtol=1e-4, atol=1e-5,
                               err_msg=where)
    np.testing.assert_allclose(got.outputs["normals"], ref.outputs["normals"], atol=1e-4, err_msg=where)
    agree = (got.outputs["semantic"] == ref.outputs["semantic"]).mean()
    assert agree >= 0.999, f"{where}: semantic agreement {agree}"


K3 = [i % 3 == 0 for i in range(10)]
# what an adaptive policy may ask: keyframes back to back, long and short gaps
IRREGULAR = [True, False, True, True, False, False, False, False, True, False, False]


@pytest.mark.parametrize("flags,resets", [(K3, ()), (K3, (4,)), (IRREGULAR, (9,)), ([True] * 4, ())],
                         ids=["K3", "K3-reset", "adaptive-reset", "K1"])
def test_split_streams_like_pytorch_fp32_on_every_frame(model, split, flags, resets):
    imgs = frames(len(flags))
    if resets:  # a reset lands on a keyframe (the node restarts a stream that way)
        flags = [f or i in resets for i, f in enumerate(flags)]
    ref = stream(TorchBackend(model, "cpu"), imgs, flags, resets)
    got = stream(split, imgs, flags, resets)
    for i, (a, b, k) in enumerate(zip(ref, got, flags)):
        assert_same(a, b, f"frame {i} ({'key' if k else 'non-key'})")
        # routing: keyframes ran on PyTorch (encoder/decoder timings), non-keyframes on ORT
        assert ("encoder" in b.timings) == k and ("inference" in b.timings) == (not k), (i, b.timings)
        assert b.state.on_key == k


def test_the_parity_test_would_see_a_lost_slot(model, split):
    """The keyframe after non-keyframes really reads the converted non-keyframe slot: without it
    the outputs move far beyond the tolerance above (so a missing conversion fails the test)."""
    imgs = frames(4)
    st = stream(split, imgs[:3], [True, False, False])[-1].state
    assert isinstance(st.inner, SlotState) and st.inner.filled == {"key", "nonkey"}
    good = split.step(imgs[3], st, True)
    lost = split.step(imgs[3], split_backend.SplitState(SlotState(started=True), False), True)
    gap = np.abs(good.outputs["depth"] - lost.outputs["depth"]).max()
    assert gap > 1e-2 * np.abs(good.outputs["depth"]).max()


def test_conversion_carries_exactly_the_slots_a_step_reads(model, ort):
    imgs = frames(3)
    s = ort.step(imgs[0], None, True).state
    s = ort.step(imgs[1], s, False).state
    key_reads = graph_spec(model, True).reads  # multi-frame ILA: the keyframe reads the non-key slot only
    assert [r.slot for r in key_reads] == ["nonkey"]
    st = split_backend.slots_to_stream(s, key_reads, torch.channels_last)
    assert st.keyframe is None and st.nonkey is not None and not st.empty
    for n, t in zip(key_reads[0].names(), split_backend.memory_to_tensors(st.nonkey, key_reads[0])):
        assert torch.equal(t, torch.from_numpy(s.tensors[n]))
    # and back: the non-keyframe graph reads both slots; values bit-identical, C-ordered arrays
    nk_reads = graph_spec(model, False).reads
    as_torch = split_backend.slots_to_stream(s, nk_reads, torch.channels_last)
    back = split_backend.stream_to_slots(as_torch, nk_reads)
    assert back.filled == {"key", "nonkey"} and back.started and set(back.tensors) == set(s.tensors)
    for n, v in s.tensors.items():
        assert back.tensors[n].flags.c_contiguous and np.array_equal(back.tensors[n], v), n


def test_named_split_backend_and_its_fallback(model, cache):
    b, _ = create_backend(model, "torch+onnxruntime", device="cpu", cache_dir=cache, threads=1)
    assert b.name == SPLIT and [c.label for c in b.rest] == ["torch-cpu", "onnxruntime"]
    imgs = frames(4)
    ref = stream(TorchBackend(model, "cpu"), imgs, [True, False, False, True])
    got = stream(b, imgs, [True, False, False, True])  # through FallbackBackend's state tagging
    for i, (x, y) in enumerate(zip(ref, got)):
        assert_same(x, y, f"frame {i}")


# -- auto on the CPU: the start-up measurement ------------------------------------------------------
FAKE = {"torch-cpu": (54.0, 51.0), "onnxruntime": (96.0, 31.0), SPLIT: (54.5, 31.5),
        "onnxruntime-int8": (117.0, 22.0), "torch-cpu-bf16": (38.0, 34.0)}


def fake_timer(calls):
    def time_frames(backends, size, *a, **kw):
        calls.append(sorted(backends))
        for b in backends.values():  # really created (and stepping works)
            assert b.step(np.zeros((*size, 3), np.uint8), None, True).outputs
        return {k: {"key_ms": FAKE[k][0], "nonkey_ms": FAKE[k][1]} for k in backends}, {}
    return time_frames


def test_auto_runs_the_fastest_measured_exact_backend_and_caches_it(model, cache, monkeypatch):
    calls: list = []
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    monkeypatch.setattr(cpu_choice, "time_frames", fake_timer(calls))
    mh = model_hash(model)
    path = cpu_choice.speed_path(mh, SIZE, 1, cache)
    path.unlink(missing_ok=True)
    b, skipped = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    # (54.5 + 4 x 31.5) / 5 = 36.1 < ORT (96 + 4 x 31) / 5 = 44.0 < PyTorch (54 + 4 x 51) / 5 = 51.6
    assert b.name == SPLIT and [c.label for c in b.rest] == ["onnxruntime", "torch-cpu"]
    assert calls == [sorted(cpu_choice.FP32)]  # no quantize record: no reduced precision timed
    assert [s.split(":")[0] for s in skipped] == ["tensorrt", "torch-cuda", "onnxruntime-int8",
                                                  "torch-cpu-bf16"]
    reason = b.diagnostics()["backend_reason"]
    assert path.name in reason and "1 threads" in reason
    assert "36.1 ms/frame" in reason and "onnxruntime 44.0" in reason
    rec = json.loads(path.read_text())
    assert rec["candidates"]["onnxruntime"] == {"key_ms": 96.0, "nonkey_ms": 31.0} and rec["threads"] == 1
    # K = 1 ranks by the keyframe: PyTorch FP32 first
    assert create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1,
                          keyframe_interval=1)[0].name == "torch-cpu"
    assert len(calls) == 1  # read from the cache, not timed again
    # another thread count is another measurement (and file)
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=2)
    assert len(calls) == 2 and cpu_choice.speed_path(mh, SIZE, 2, cache).exists()
    # a record for another CPU / library version is not trusted: timed again
    rec["cpu"] = "another CPU"
    path.write_text(json.dumps(rec))
    create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert len(calls) == 3


def test_auto_takes_a_gate_passing_reduced_precision_backend_only_when_faster(model, cache, monkeypatch):
    calls: list = []
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    monkeypatch.setattr(cpu_choice, "time_frames", fake_timer(calls))
    # BF16 needs a CPU with native BF16 to be created; the timings are fake, so let it be
    # created (emulated) anywhere and test the ranking on any CPU.
    from mtl_perception.backends import bf16_backend

    monkeypatch.setattr(bf16_backend, "native_bf16", lambda: (True, "test"))
    mh = model_hash(model)
    cpu_choice.speed_path(mh, SIZE, 1, cache).unlink(missing_ok=True)
    # quantize record: BF16 passed the gates, INT8 missed
    cpu_choice.write_choice(mh, SIZE, cache, {
        "torch-cpu": {"passed": True, "ms": 50.0, "why": ""},
        "torch-cpu-bf16": {"passed": True, "ms": 35.0, "why": "agree 99.9 %"},
        "onnxruntime-int8": {"passed": False, "ms": 20.0, "why": "missed"}}, 5)
    b, skipped = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert calls == [sorted([*cpu_choice.FP32, "torch-cpu-bf16"])]  # INT8 missed its gates: not timed
    # BF16 (38 + 4 x 34) / 5 = 34.8 beats the split's 36.1
    assert b.active_label == "torch-cpu-bf16"
    assert [c.label for c in b.rest] == [SPLIT, "onnxruntime", "torch-cpu"]
    assert "gates passed: agree 99.9 %" in b.diagnostics()["backend_reason"]
    assert any(s.startswith("onnxruntime-int8") and "missed the accuracy gates (missed)" in s
               for s in skipped)
    # slower BF16 (a new measurement): the split runs, BF16 stays behind it as a fallback
    FAKE_SLOW = dict(FAKE, **{"torch-cpu-bf16": (40.0, 40.0)})
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    monkeypatch.setattr(cpu_choice, "time_frames", lambda backends, size, *a, **k: ({
        n: dict(zip(("key_ms", "nonkey_ms"), FAKE_SLOW[n])) for n in backends}, {}))
    cpu_choice.speed_path(mh, SIZE, 1, cache).unlink()
    b, _ = create_backend(model, "auto", device="cpu", cache_dir=cache, threads=1)
    assert b.active_label == SPLIT and "torch-cpu-bf16" in [c.label for c in b.rest]
    cpu_choice.record_path(mh, SIZE, cache).unlink()
    cpu_choice.speed_path(mh, SIZE, 1, cache).unlink()

