"""GPU backends (TensorRT FP16/FP32, PyTorch CUDA): parity with the PyTorch FP32 reference over
a stream, the engine cache key, rebuilds and the runtime fallback. They skip, with the reason,
without CUDA or the tensorrt package; the key/CLI checks that need neither always run."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from mtl_perception.backends.base import BackendError
from mtl_perception.backends.parity import ParityMeter
from mtl_perception.backends.torch_backend import TorchBackend
from mtl_perception.backends.trt_backend import engine_key, engine_path, main
from mtl_perception.model import ModelConfig, build_model

TINY = "config/model/tiny.yaml"
FLAGS = [True, False, False, True, True, False, False, False, True, False]
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA (no GPU on this machine)")
needs_trt = pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs CUDA and the tensorrt package")


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "onnx_cache"


def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml(TINY)).eval()


def frames(n, size=(64, 128), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def parity(ref, test, imgs=None) -> ParityMeter:
    imgs = imgs or frames(len(FLAGS))
    meter, sa, sb = ParityMeter(), None, None
    for img, k in zip(imgs, FLAGS):
        a, b = ref.step(img, sa, k), test.step(img, sb, k)
        sa, sb = a.state, b.state
        meter.add(a.outputs, b.outputs)
    return meter


def test_engine_file_name_is_readable_and_per_key(tmp_path):
    # What invalidates a cached engine is tested by behaviour in test_engine_cache.py.
    gpu = {"gpu": "NVIDIA H100", "compute_capability": "9.0"}
    k = engine_key("ab" * 32, (256, 512), "fp16", "10.3.0", gpu)
    p = engine_path(tmp_path, tmp_path / "mtl_x_256x512_key.onnx", k)
    assert p.name.startswith("mtl_x_256x512_key_abababab_fp16_trt10.3.0_nvidia-h100_sm90_")
    assert engine_path(tmp_path, tmp_path / "mtl_x_256x512_key.onnx", {**k, "tensorrt": "10.4.0"}) != p


@pytest.mark.skipif(HAS_TRT and HAS_CUDA, reason="checks the message without TensorRT/CUDA")
def test_build_engine_cli_fails_cleanly_without_tensorrt(capsys):
    assert main(["--model-config", TINY]) == 2
    assert "cannot build engines" in capsys.readouterr().err
    from mtl_perception.backends.trt_backend import TrtBackend

    with pytest.raises(BackendError):
        TrtBackend(tiny_model(), device="cuda:0")


@needs_cuda
@pytest.mark.parametrize("fp16", [False, True])
def test_torch_cuda_matches_cpu_fp32(fp16):
    m = tiny_model()
    ref = TorchBackend(tiny_model(), "cpu")
    meter = parity(ref, TorchBackend(m, "cuda", fp16=fp16))
    assert meter.ok(), meter.summary()


@needs_trt
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_matches_torch_fp32(fp16, onnx_cache):
    from mtl_perception.backends.trt_backend import TrtBackend

    b = TrtBackend(tiny_model(), "cuda:0", fp16=fp16, cache_dir=onnx_cache, verify=False)
    meter = parity(TorchBackend(tiny_model(), "cuda:0"), b)
    print(f"tensorrt {'fp16' if fp16 else 'fp32'}: {meter.summary()}")
    assert meter.ok(), meter.summary()
    r = b.step(frames(1)[0], None, True)
    assert all(t.is_cuda for t in r.state.tensors.values())  # the state stays on the GPU


@needs_trt
def test_stale_or_broken_engine_is_rebuilt_and_runtime_failure_falls_back(onnx_cache, tmp_path):
    from mtl_perception.backends.select import create_backend
    from mtl_perception.backends.trt_backend import TrtBackend

    b = TrtBackend(tiny_model(), "cuda:0", fp16=False, cache_dir=onnx_cache, verify=False)
    ef = b.engine_files[True]
    side = ef.path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "tensorrt": "0.0.0"}))
    b2 = TrtBackend(tiny_model(), "cuda:0", fp16=False, cache_dir=onnx_cache, verify=False)
    assert b2.engine_files[True].rebuilt and "tensorrt" in b2.engine_files[True].reason
    ef.path.write_bytes(b"\0" * 64)  # garbage engine: sha mismatch -> rebuilt, never loaded
    b3 = TrtBackend(tiny_model(), "cuda:0", fp16=False, cache_dir=onnx_cache, verify=False)
    assert b3.engine_files[True].rebuilt
    # Runtime failure: the context loses its engine -> execution fails -> next backend.
    fb, _ = create_backend(tiny_model(), "tensorrt", device="cuda:0", cache_dir=onnx_cache, fp16=False)
    img = frames(1)[0]
    s = fb.step(img, None, True).state
    fb.active.engines = {}
    r = fb.step(img, s, False)
    assert fb.failures == 1 and fb.name.startswith("torch-cuda") and r.is_keyframe


# -- the defects of issue 10 that need a GPU (skip here; run by `make gpu-check`) ----------------
needs_two_gpus = pytest.mark.skipif(not (HAS_CUDA and torch.cuda.device_count() >= 2),
                                    reason="needs two CUDA devices")


@needs_trt
def test_fp16_network_pins_what_the_docs_say(onnx_cache):
    """Defect 5: on the parsed TensorRT network, every attention layer, softmax, reduce, unary
    and sigmoid/softplus activation is set to FP32; convolutions are not."""
    from mtl_perception.backends.export import ensure_onnx
    from mtl_perception.backends.trt_backend import import_tensorrt, parse_network, pin_network, pinned_fp32

    trt = import_tensorrt()
    art = ensure_onnx(tiny_model(), False, onnx_cache)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_network(trt, art.path, builder, logger)
    pinned = set(pin_network(trt, network))
    seen = {"SOFTMAX": 0, "SIGMOID": 0, "SOFTPLUS": 0, "attend": 0}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        ltype = layer.type.name
        act = None
        if ltype == "ACTIVATION":
            layer.__class__ = trt.IActivationLayer
            act = layer.type.name
        want = pinned_fp32(ltype, layer.name, act)
        assert (layer.name in pinned) == want, layer.name
        if want:
            assert layer.precision_is_set and layer.precision == trt.float32, layer.name
            assert all(layer.get_output_type(j) == trt.float32 for j in range(layer.num_outputs))
        for k in seen:
            seen[k] += k in (ltype, act) or (k == "attend" and "/attend" in layer.name)
        if ltype == "CONVOLUTION":
            assert not layer.precision_is_set
    assert all(seen.values()), seen  # the graph has each kind, so the rule was exercised


@needs_trt
def test_tensorrt_fp16_self_check_on_real_frames_and_switch_to_fp32(onnx_cache, monkeypatch):
    """Defect 6: the self-check runs (verify=True) on the bundled clip; a miss means FP32."""
    from mtl_perception.backends import parity
    from mtl_perception.backends.trt_backend import TrtBackend

    b = TrtBackend(tiny_model(), "cuda:0", fp16=True, cache_dir=onnx_cache, verify=True)
    print("; ".join(b.notes))
    assert any(n.startswith("FP16 self-check on ") for n in b.notes)
    assert b.precision == ("fp16" if any("FP16 parity ok" in n for n in b.notes) else "fp32")
    monkeypatch.setattr(parity, "MAX_DEPTH_REL", -1.0)  # nothing can pass now
    b2 = TrtBackend(tiny_model(), "cuda:0", fp16=True, cache_dir=onnx_cache, verify=True)
    assert b2.precision == "fp32" and b2.name == "tensorrt-fp32"
    assert any("failed parity" in n for n in b2.notes)


@needs_cuda
def test_torch_cuda_fp16_self_check_and_switch_to_fp32(monkeypatch):
    """Defect 8: torch-cuda FP16 gets the same check; a miss means FP32."""
    from mtl_perception.backends import parity

    b = TorchBackend(tiny_model(), "cuda:0", fp16=True)
    print("; ".join(b.notes))
    assert b.fp16 and b.name == "torch-cuda-fp16" and any("FP16 parity ok" in n for n in b.notes)
    monkeypatch.setattr(parity, "MIN_SEMANTIC_AGREEMENT", 1.1)
    b2 = TorchBackend(tiny_model(), "cuda:0", fp16=True)
    assert not b2.fp16 and b2.name == "torch-cuda"


@needs_cuda
def test_cuda_backend_leaves_the_shared_model_on_the_host_and_cpu_fallback_runs():
    """Defect 7: a CUDA failure at run time falls back to PyTorch CPU without touching CUDA."""
    from mtl_perception.backends.select import create_backend

    model = tiny_model()
    fb, _ = create_backend(model, "torch", device="cuda:0", fp16=False)
    assert fb.active.name == "torch-cuda"
    assert all(p.device.type == "cpu" for p in model.parameters())

    def dead(*_a, **_k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    fb.active.step = dead
    img = frames(1)[0]
    r = fb.step(img, None, True)
    assert fb.active_label == "torch-cpu" and fb.failures == 1
    ref = TorchBackend(tiny_model(), "cpu").step(img, None, True)
    np.testing.assert_array_equal(r.outputs["semantic"], ref.outputs["semantic"])


@needs_cuda
def test_torch_cuda_encoder_time_from_events():
    """Defect 9: the encoder time is measured (events) and is part of the frame time."""
    b = TorchBackend(tiny_model(), "cuda:0")
    img = frames(1)[0]
    b.step(img, None, True)
    t = b.step(img, None, True).timings
    assert 0.0 < t["encoder"] and t["decoder"] >= 0.0


@needs_two_gpus
def test_second_gpu_scopes_every_cuda_object():
    """Defect 2: on cuda:1 the state, outputs and engines live on device 1; the current device
    is not changed, and parity holds there."""
    from mtl_perception.backends.trt_backend import TrtBackend

    before = torch.cuda.current_device()
    tb = TorchBackend(tiny_model(), "cuda:1")
    assert next(tb.model.parameters()).device == torch.device("cuda", 1)
    assert parity(TorchBackend(tiny_model(), "cpu"), tb).ok()
    if HAS_TRT:
        b = TrtBackend(tiny_model(), "cuda:1", fp16=False, verify=False)
        r = b.step(frames(1)[0], None, True)
        assert all(t.device == torch.device("cuda", 1) for t in r.state.tensors.values())
        assert parity(TorchBackend(tiny_model(), "cuda:1"), b).ok()
    assert torch.cuda.current_device() == before


@needs_trt
def test_engine_file_names_the_gpu(onnx_cache):
    """Defect 4: the engine file name carries this GPU's name."""
    from mtl_perception.backends.trt_backend import TrtBackend

    b = TrtBackend(tiny_model(), "cuda:0", fp16=False, cache_dir=onnx_cache, verify=False)
    slug = torch.cuda.get_device_name(0).lower().replace(" ", "-")
    assert all(slug.split("-")[-1] in ef.path.name for ef in b.engine_files.values())
