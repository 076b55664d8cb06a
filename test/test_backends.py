"""CPU backends: ONNX Runtime parity with the PyTorch FP32 reference over a stream, backend
choice, and the runtime fallback driven by real failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_perception.backends.base import BackendError, StepResult
from mtl_perception.backends.parity import ParityMeter
from mtl_perception.backends.select import FallbackBackend, create_backend
from mtl_perception.backends.torch_backend import TorchBackend
from mtl_perception.model import ModelConfig, build_model

pytest.importorskip("onnxruntime")
from mtl_perception.backends.ort_backend import OrtBackend  # noqa: E402

TINY = "config/model/tiny.yaml"
# Keyframe pattern of a K=3 stream plus an early extra keyframe, so both slots fill and swap.
FLAGS = [True, False, False, True, True, False, False, False, True, False]


def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml(TINY)).eval()


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    # One folder for the whole session (any test module): exports happen once, later users hit
    # the cache through the same ensure_onnx key check production uses.
    return tmp_path_factory.getbasetemp() / "onnx_cache"


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def ort_backend(model, onnx_cache):
    return OrtBackend(model, cache_dir=onnx_cache)


def frames(n: int, size=(64, 128), seed: int = 0) -> list[np.ndarray]:
    # Smooth moving pattern + noise: consecutive frames are related, as in video.
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for t in range(n):
        base = np.stack([np.sin((xx + 3 * t) / 9.0), np.cos((yy - 2 * t) / 7.0),
                         np.sin((xx + yy + t) / 13.0)], -1)
        img = 127.5 * (base + 1) + rng.normal(0, 20, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def run_stream(backend, imgs, flags) -> list[StepResult]:
    state, res = None, []
    for img, k in zip(imgs, flags):
        r = backend.step(img, state, k)
        state = r.state
        res.append(r)
    return res


def test_ort_matches_torch_fp32_over_a_stream(model, ort_backend):
    imgs = frames(len(FLAGS))
    ref = run_stream(TorchBackend(model, "cpu"), imgs, FLAGS)
    got = run_stream(ort_backend, imgs, FLAGS)
    meter = ParityMeter()
    for a, b in zip(ref, got):
        meter.add(a.outputs, b.outputs)
        assert set(b.outputs) == {"semantic", "depth", "normals"}
        assert b.outputs["semantic"].dtype == np.int32 and b.outputs["semantic"].shape == (64, 128)
        assert b.outputs["normals"].shape == (64, 128, 3)
        assert set(b.timings) == {"inference", "io"}
        # FP32 on both sides: far tighter than the parity thresholds.
        np.testing.assert_allclose(b.outputs["depth"], a.outputs["depth"], rtol=1e-4)
    assert meter.ok(), meter.summary()
    m = meter.metrics()
    assert m["semantic_agreement"] >= 0.999 and m["normals_deg_mean"] < 0.05


def test_ort_state_is_carried_and_is_a_value(ort_backend):
    imgs = frames(4, seed=1)
    r0 = ort_backend.step(imgs[0], None, True)
    r1 = ort_backend.step(imgs[1], r0.state, False)
    r1b = ort_backend.step(imgs[1], r0.state, False)  # same old state again: same result
    np.testing.assert_array_equal(r1.outputs["depth"], r1b.outputs["depth"])
    # The propagated past changes the output: a different keyframe -> a different non-keyframe.
    other = ort_backend.step(imgs[3], None, True)
    r1c = ort_backend.step(imgs[1], other.state, False)
    assert not np.array_equal(r1.outputs["depth"], r1c.outputs["depth"])
    assert r1.state.filled == {"key", "nonkey"} and r0.state.filled == {"key"}
    with pytest.raises(ValueError, match="keyframe"):
        ort_backend.step(imgs[0], None, False)


def test_ort_sessions_do_not_spin_between_runs(model, onnx_cache, monkeypatch):
    """No thread pool busy-waits between runs: with ORT's default spinning the pool of the graph
    that just ran busy-waits while the other one starts (keyframes 2-3x slower on 2 cores,
    docs/cpu_measurements.md). By default the workers block (spinning inside a run lost in the
    node under contention, docs/node_performance.md); ``spin_in_run=True`` lets them spin inside a
    run only (ORT stops the spinning when the run returns); ``spinning=True`` restores ORT's
    default."""
    keys = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning",
            "session.force_spinning_stop")

    def entries(b):  # noqa: ANN001, ANN202
        out = []
        for s in b.sessions.values():
            opts = s.get_session_options()
            assert opts.intra_op_num_threads == b.threads
            row = []
            for k in keys:
                try:
                    row.append(opts.get_session_config_entry(k))
                except RuntimeError:  # "does not have": unset, ORT's default (spin)
                    row.append(None)
            out.append(row)
        return out

    in_run, block, unset = ["1", "0", "1"], ["0", "0", None], [None, None, None]
    monkeypatch.delenv("MTL_PERCEPTION_ORT_SPIN_IN_RUN", raising=False)
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=2)) == [block, block]
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=1)) == [block, block]
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=2, spin_in_run=True)) == [in_run, in_run]
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=1, spin_in_run=True)) == [in_run, in_run]
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=2, spinning=True)) == [unset, unset]
    # the process-wide switch of the default (a machine the node has to itself)
    monkeypatch.setenv("MTL_PERCEPTION_ORT_SPIN_IN_RUN", "1")
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=2)) == [in_run, in_run]
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=1)) == [block, block]  # no workers
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=2, spin_in_run=False)) == [block, block]
    monkeypatch.setenv("MTL_PERCEPTION_ORT_SPIN_IN_RUN", "0")
    assert entries(OrtBackend(model, cache_dir=onnx_cache, threads=2)) == [block, block]


def test_ort_spinning_inside_a_run_gives_the_blocking_pools_outputs(model, onnx_cache):
    """Spinning changes when the workers wait, not how an op is split: a stream on 2 spinning
    threads gives exactly the outputs and states of 2 blocking ones."""
    spin = OrtBackend(model, cache_dir=onnx_cache, threads=2, spin_in_run=True)
    block = OrtBackend(model, cache_dir=onnx_cache, threads=2, spin_in_run=False)
    assert spin.spin_in_run and not block.spin_in_run
    states = [None, None]
    for i, img in enumerate(frames(6, seed=3)):
        res = [b.step(img, st, i % 3 == 0) for b, st in zip((spin, block), states)]
        for t in res[0].outputs:
            np.testing.assert_array_equal(res[0].outputs[t], res[1].outputs[t])
        states = [r.state for r in res]


def test_auto_on_cpu_picks_the_measured_fastest_and_gives_reasons(model, onnx_cache, monkeypatch):
    from mtl_perception.backends import cpu_choice
    from mtl_perception.backends.export import model_hash

    # Injected timings (the start-up measurement's ranking: test_split_backend.py): PyTorch fastest.
    fake = {"torch-cpu": 10.0, "torch-cpu+onnxruntime": 12.0, "onnxruntime": 14.0}
    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")
    monkeypatch.setattr(cpu_choice, "time_frames", lambda bs, size, *a, **k: ({
        n: {"key_ms": fake[n], "nonkey_ms": fake[n]} for n in bs}, {}))
    record = cpu_choice.speed_path(model_hash(model), (64, 128), torch.get_num_threads(), onnx_cache)
    record.unlink(missing_ok=True)
    try:
        b, skipped = create_backend(model, "auto", device="auto", cache_dir=onnx_cache)
        assert isinstance(b, FallbackBackend) and b.name == "torch-cpu"
        # the slower exact backends stay behind it as runtime fallbacks, fastest first
        assert [c.label for c in b.rest] == ["torch-cpu+onnxruntime", "onnxruntime"]
        if not torch.cuda.is_available():
            # INT8/BF16 need a measured choice (mtl-perception-quantize), absent here
            assert [s.split(":")[0] for s in skipped] == ["tensorrt", "torch-cuda", "onnxruntime-int8",
                                                          "torch-cpu-bf16"]
            assert all(len(s) > len("tensorrt: ") for s in skipped)
        d = b.diagnostics()
        assert d["backend"] == "torch-cpu" and d["backend_failures"] == "0"
        assert "fastest of 3 CPU backend(s)" in d["backend_reason"]
        b2, skipped2 = create_backend(model, "auto", device="cpu", cache_dir=onnx_cache)
        assert b2.name == "torch-cpu" and "device is 'cpu'" in skipped2[0]
    finally:
        record.unlink(missing_ok=True)  # the session-wide cache: no fake record for other tests


def test_named_backend_creation_failure_is_an_error(model, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")  # the ONNX cache cannot be created here: export really fails
    with pytest.raises(BackendError, match="onnxruntime.*ONNX export failed"):
        create_backend(model, "onnxruntime", device="cpu", cache_dir=not_a_dir)
    # a named backend keeps PyTorch CPU behind it as the last resort
    b, _ = create_backend(model, "onnxruntime", device="cpu", cache_dir=tmp_path / "cache")
    assert b.name == "onnxruntime" and [c.label for c in b.rest] == ["torch-cpu"]
    with pytest.raises(BackendError, match="invalid value"):
        create_backend(model, "tflite")


def test_runtime_failure_of_ort_falls_back_and_keeps_publishing(model, onnx_cache):
    b, _ = create_backend(model, "onnxruntime", device="cpu", cache_dir=onnx_cache)
    assert b.name == "onnxruntime"
    imgs = frames(6, seed=2)
    state = None
    for i in range(3):
        state = b.step(imgs[i], state, i == 0).state
    stale = state
    # A real ONNX Runtime failure: the run is aborted by the library ("terminate flag").
    b.active.run_options.terminate = True
    r = b.step(imgs[3], state, False)
    assert b.name == "torch-cpu" and b.failures == 1
    assert r.is_keyframe is True  # the redone frame restarted the stream
    assert set(r.outputs) == {"semantic", "depth", "normals"}
    r2 = b.step(imgs[4], r.state, False)  # the new backend's state carries on
    assert r2.is_keyframe is None
    r3 = b.step(imgs[5], stale, False)  # a state of the dead backend means a fresh stream
    assert r3.is_keyframe is True
    d = b.diagnostics()
    assert d["backend"] == "torch-cpu" and d["backend_failures"] == "1"
    assert "terminate" in d["backend_last_failure"].lower()


class _FailsOnStep(TorchBackend):
    """Test-only: a real TorchBackend that raises on its Nth step (wrapper logic only)."""

    def __init__(self, model, fail_at: int) -> None:
        super().__init__(model, "cpu")
        self.name = "flaky"
        self.calls = 0
        self.fail_at = fail_at

    def step(self, image, state, is_keyframe):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("injected")
        return super().step(image, state, is_keyframe)


def test_fallback_chain_exhausted_raises_and_counts(model):
    from mtl_perception.backends.select import Candidate

    b = FallbackBackend(_FailsOnStep(model, 2), "flaky", [], [])
    img = frames(1)[0]
    s = b.step(img, None, True).state
    with pytest.raises(BackendError, match="no backend left"):
        b.step(img, s, False)
    assert b.failures == 1 and b.name == "flaky"
    # With a candidate that cannot be created and one that can, the good one is used.
    def broken():
        raise BackendError("nope")
    b = FallbackBackend(_FailsOnStep(model, 1), "flaky", [Candidate("broken", broken),
                        Candidate("torch-cpu", lambda: TorchBackend(model, "cpu"))], [])
    r = b.step(img, None, True)
    assert b.name == "torch-cpu" and b.failures == 1 and "broken: BackendError: nope" in b.skipped[0]
    assert r.outputs["depth"].shape == (64, 128)
    b.warmup()


@pytest.mark.parametrize("propagation", ["none", "reuse"])
def test_ort_streams_models_that_store_little_or_nothing(propagation, onnx_cache):
    # "none" writes no slot at all: the stream has still started after its keyframe.
    cfg = ModelConfig.from_yaml(TINY)
    cfg.propagation.name = propagation
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    imgs = frames(4, seed=2)
    flags = [True, False, False, True]
    ref = run_stream(TorchBackend(m, "cpu"), imgs, flags)
    got = run_stream(OrtBackend(m, cache_dir=onnx_cache), imgs, flags)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.outputs["depth"], a.outputs["depth"], rtol=1e-4)
