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


def test_engine_key_names_everything_that_invalidates_an_engine(tmp_path):
    gpu = {"gpu": "NVIDIA H100", "compute_capability": "9.0"}
    k = engine_key("ab" * 32, (256, 512), "fp16", "10.3.0", gpu)
    assert {"onnx_sha256", "input_size", "precision", "tensorrt", "gpu", "compute_capability"} <= set(k)
    p = engine_path(tmp_path, tmp_path / "mtl_x_256x512_key.onnx", k)
    assert p.name == "mtl_x_256x512_key_abababab_fp16_trt10.3.0_sm90.engine"
    assert engine_path(tmp_path, tmp_path / "m.onnx", {**k, "tensorrt": "10.4.0"}) != p


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
