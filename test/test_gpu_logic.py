"""The CUDA/TensorRT logic that runs without a GPU: cache keys, the TensorRT version gate and
dtype map, device naming, FP32 pinning, encoder timing, the FP16 self-check and its FP32
switch, FP32 ILA logits under reduced precision, and the CPU fallback after a dead device."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.backends import cuda_util, export
from mtl_perception.backends import trt_backend as trt_b
from mtl_perception.backends.base import BackendError, StepResult
from mtl_perception.backends.cuda_util import (
    EncoderTimer,
    check_frames,
    fp16_or_fp32,
    host_model,
    match_input_dtypes,
    resolve_cuda_device,
    same_device,
    stream_parity,
    torch_dtype_for,
)
from mtl_perception.model import ModelConfig, build_model
from mtl_perception.model.ila import local_attention, reference_local_attention

TINY = "config/model/tiny.yaml"
ROOT = Path(__file__).resolve().parents[1]


def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml(TINY)).eval()


@pytest.fixture(scope="module")
def nonkey_onnx(tmp_path_factory):
    """The tiny model's non-keyframe graph, exported once for this module."""
    folder = tmp_path_factory.mktemp("onnx")
    return folder, export.ensure_onnx(tiny_model(), False, folder)


# -- defect 4: cache keys ------------------------------------------------------------------------
def test_onnx_key_covers_torch_version_and_exporter_code(tmp_path):
    k = export.onnx_key("m" * 64, (64, 128), True, 17)
    assert k["torch"] == torch.__version__ and k["exporter_sha256"] == export.exporter_code_hash()
    f = tmp_path / "g.onnx"
    f.write_bytes(b"graph")
    sha = export.file_sha256(f)
    export.write_sidecar(f, {**export.onnx_key("m" * 64, (64, 128), True, 17, torch_version="2.12.0"),
                             "onnx_sha256": sha})
    meta, why = export.check_sidecar(f, k, "onnx_sha256")
    assert meta is None and why.startswith("torch is '2.12.0'")
    export.write_sidecar(f, {**export.onnx_key("m" * 64, (64, 128), True, 17, exporter="0" * 64),
                             "onnx_sha256": sha})
    assert export.check_sidecar(f, k, "onnx_sha256")[1].startswith("exporter_sha256 is '000")
    export.write_sidecar(f, {**k, "onnx_sha256": sha})
    assert export.check_sidecar(f, k, "onnx_sha256")[1] == "ok"


def test_code_hash_follows_the_source_files(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    h = export.code_hash((a, b))
    assert export.code_hash((a, b)) == h
    b.write_text("y = 3\n")
    assert export.code_hash((a, b)) != h
    # The exporter and the model code it traces are covered.
    names = {p.name for p in export._EXPORTER_SOURCES}
    assert {"export.py", "ila.py", "network.py", "decoder.py"} <= names


def test_stale_onnx_is_exported_again_after_a_torch_or_code_change(nonkey_onnx, tmp_path, monkeypatch):
    import shutil

    _, art = nonkey_onnx
    for f in (art.path, art.path.with_suffix(".json")):
        shutil.copy(f, tmp_path / f.name)
    model = tiny_model()
    calls = []
    # The decision is under test, not the exporter: a stand-in writes the file.
    monkeypatch.setattr(export, "export_step",
                        lambda m, path, *a, **k: calls.append(1) or Path(path).write_bytes(b"x"))
    assert export.ensure_onnx(model, False, tmp_path).sha256 == art.sha256 and calls == []  # cached
    side = (tmp_path / art.path.name).with_suffix(".json")
    for field, stale in (("torch", "2.0.0"), ("exporter_sha256", "f" * 64)):
        side.write_text(json.dumps({**json.loads(side.read_text()), field: stale}))
        export.ensure_onnx(model, False, tmp_path)
        assert json.loads(side.read_text())[field] != stale
    assert len(calls) == 2


def test_engine_key_and_file_name_cover_builder_settings_and_gpu_name(tmp_path):
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    gh200 = {"gpu": "NVIDIA GH200 480GB", "compute_capability": "9.0"}
    k = trt_b.engine_key("ab" * 32, (256, 512), "fp16", "10.16.1.11", h100)
    assert k["builder"] == trt_b.builder_settings("fp16")
    assert k["builder"]["flags"] == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    assert k["builder"]["workspace"] == 4 << 30
    assert k["builder"]["fp32_layers"]["scopes"] == [r"/attend(_\d+)?/"]
    fp32 = trt_b.builder_settings("fp32")
    assert fp32["flags"] == [] and fp32["fp32_layers"] is None
    onnx = tmp_path / "mtl_x_256x512_key.onnx"
    p = trt_b.engine_path(tmp_path, onnx, k)
    assert re.fullmatch(r"mtl_x_256x512_key_abababab_fp16_trt10\.16\.1\.11_nvidia-h100-80gb-hbm3_sm90_"
                        r"[0-9a-f]{8}\.engine", p.name), p.name
    # Same compute capability, another GPU: another file, so neither overwrites the other.
    assert trt_b.engine_path(tmp_path, onnx, trt_b.engine_key("ab" * 32, (256, 512), "fp16", "10.16.1.11",
                                                                 gh200)) != p
    # Another workspace (or flag, or pinning rule): another key and another file.
    k2 = trt_b.engine_key("ab" * 32, (256, 512), "fp16", "10.16.1.11", h100,
                          trt_b.builder_settings("fp16", workspace=1 << 30))
    assert k2 != k and trt_b.engine_path(tmp_path, onnx, k2) != p
    # A cached engine built with other settings does not match the key.
    f = tmp_path / "e.engine"
    f.write_bytes(b"engine")
    export.write_sidecar(f, {**k2, "engine_sha256": export.file_sha256(f)})
    meta, why = export.check_sidecar(f, k, "engine_sha256")
    assert meta is None and why.startswith("builder is")


# -- defect 1: supported TensorRT ----------------------------------------------------------------
def test_tensorrt_version_gate_and_setup_pin_agree(monkeypatch):
    trt_b.check_tensorrt_version("10.16.1.11")
    trt_b.check_tensorrt_version("10.0.1")
    with pytest.raises(BackendError, match=re.escape(trt_b.TENSORRT_PIP)):
        trt_b.check_tensorrt_version("11.4.0.106")
    with pytest.raises(BackendError):
        trt_b.check_tensorrt_version("9.3.0")
    # import_tensorrt applies the gate (an 11.x install is a skip reason, not an AttributeError).
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0.106"))
    with pytest.raises(BackendError, match="not supported"):
        trt_b.import_tensorrt()
    # setup.py's gpu extra installs exactly the range the code accepts.
    gpu_extra = re.search(r'"gpu": \[([^\]]*)\]', (ROOT / "setup.py").read_text()).group(1)
    assert f'"{trt_b.TENSORRT_PIP}"' in gpu_extra


# -- defect 9: dtype map, .weight dtype ----------------------------------------------------------
@pytest.mark.parametrize("name,dtype", [
    ("FLOAT", torch.float32), ("HALF", torch.float16), ("BF16", torch.bfloat16), ("INT8", torch.int8),
    ("UINT8", torch.uint8), ("INT32", torch.int32), ("INT64", torch.int64), ("BOOL", torch.bool),
    ("FP8", torch.float8_e4m3fn)])
def test_trt_dtype_map(name, dtype):
    assert torch_dtype_for(name) is dtype
    assert torch_dtype_for(types.SimpleNamespace(name=name)) is dtype  # a trt.DataType member


@pytest.mark.parametrize("name", ["INT4", "FP4", "E8M0"])
def test_unbindable_trt_dtype_is_a_backend_error(name):
    with pytest.raises(BackendError, match=f"'key.features.semantic'.*{name}"):
        torch_dtype_for(types.SimpleNamespace(name=name), "key.features.semantic")


def test_inputs_are_cast_to_the_engine_dtype():
    inputs = {"key.weight": ((), torch.float16), "image": ((1, 3, 2, 2), torch.float32)}
    feed = {"key.weight": torch.full((), 1.0), "image": torch.rand(1, 3, 2, 2)}
    out = match_input_dtypes(feed, inputs)
    assert out["key.weight"].dtype == torch.float16 and float(out["key.weight"]) == 1.0
    assert out["image"] is feed["image"]  # already right: no copy
    with pytest.raises(BackendError, match="'image'"):
        match_input_dtypes({"image": torch.rand(1, 3, 4, 4)}, inputs)


# -- defect 2 and 9: device selection ------------------------------------------------------------
def test_cuda_device_resolution_and_comparison():
    assert resolve_cuda_device("cuda", current=1) == torch.device("cuda", 1)
    assert resolve_cuda_device("cuda:2", current=0) == torch.device("cuda", 2)
    with pytest.raises(BackendError):
        resolve_cuda_device("cpu")
    assert not same_device("cuda:0", "cuda:1")
    assert same_device("cuda", "cuda:0", current=0) and not same_device("cuda", "cuda:0", current=1)
    assert same_device("cpu", "cpu") and not same_device("cpu", "cuda:0")


# -- defect 3: zero buffers and the stream -------------------------------------------------------
def test_zero_slots_make_the_engine_stream_wait_for_their_fill():
    log = []
    eng = types.SimpleNamespace(inputs={"image": ((1,), "f"), "key.features.s": ((2,), "f"),
                                        "key.weight": ((), "f")})
    stream = types.SimpleNamespace(wait_stream=lambda s: log.append(("wait", s)))
    zeros = trt_b.zero_slots([eng], lambda shape, d: log.append(("zeros", shape)) or shape, stream, "default")
    assert list(zeros) == ["key.features.s"]
    assert log == [("zeros", (2,)), ("wait", "default")]  # the wait comes after every fill


# -- defect 5: FP32 pinning ----------------------------------------------------------------------
def test_pinning_rule():
    assert trt_b.pinned_fp32("SOFTMAX", "/semantic/attend/Softmax")
    assert trt_b.pinned_fp32("REDUCE", "/normals/ReduceL2")
    assert trt_b.pinned_fp32("UNARY", "/depth/Exp")
    assert trt_b.pinned_fp32("ACTIVATION", "/depth/Softplus", "SOFTPLUS")
    assert trt_b.pinned_fp32("ACTIVATION", "/se/Sigmoid", "SIGMOID")
    assert not trt_b.pinned_fp32("ACTIVATION", "/slow/relu/Relu", "RELU")
    assert trt_b.pinned_fp32("ELEMENTWISE", "/semantic/attend/Mul_3")
    assert trt_b.pinned_fp32("CONCATENATION", "/semantic/attend_1/Concat_3")  # 2nd call of the module
    assert not trt_b.pinned_fp32("ELEMENTWISE", "/semantic/attendance/Mul")
    assert trt_b.pinned_fp32("CONCATENATION", "/depth/attend/Concat_7")
    assert not trt_b.pinned_fp32("CONSTANT", "/semantic/attend/Constant_2")
    assert not trt_b.pinned_fp32("CONVOLUTION", "/slow/conv1/Conv")
    assert not trt_b.pinned_fp32("ELEMENTWISE", "/decoder/Add")


# ONNX op -> the TensorRT layer type the ONNX parser creates for it (as far as the rule cares).
_LAYER = {"Softmax": "SOFTMAX", "ReduceSum": "REDUCE", "ReduceL2": "REDUCE", "Exp": "UNARY", "Log": "UNARY",
          "Sqrt": "UNARY", "Sigmoid": "ACTIVATION", "Softplus": "ACTIVATION", "Relu": "ACTIVATION",
          "Constant": "CONSTANT", "Shape": "SHAPE"}


def test_every_ila_logit_layer_of_the_exported_graph_is_pinned(nonkey_onnx):
    """Walk back from each Softmax of the real exported graph to the embeddings (Conv outputs,
    slot inputs): every op on the logits path must be pinned, as must sigmoid/softplus."""
    import onnx

    art = nonkey_onnx[1]
    g = onnx.load(str(art.path)).graph
    producer = {o: n for n in g.node for o in n.output}

    def pinned(n) -> bool:
        act = n.op_type.upper() if n.op_type in ("Sigmoid", "Softplus", "Relu") else None
        return trt_b.pinned_fp32(_LAYER.get(n.op_type, "ELEMENTWISE"), n.name, act)

    softmaxes = [n for n in g.node if n.op_type == "Softmax"]
    # the tiny non-keyframe graph's 3 tasks x 2 sources, stacked into one product
    # (ila.stack_products): the Concat of their queries and keys is on the logits path too
    assert len(softmaxes) == 1
    for sm in softmaxes:
        todo, seen, ops = list(sm.input), set(), set()
        while todo:
            n = producer.get(todo.pop())
            if n is None or n.name in seen or n.op_type in ("Conv", "Constant", "Shape"):
                continue
            seen.add(n.name)
            ops.add(n.op_type)
            assert pinned(n), f"{n.op_type} {n.name} feeds the attention logits but stays FP16"
            todo += list(n.input)
        # the walk reached the query-key dot products (MatMul) and the halo gather, not just the
        # Softmax (a node count broke with each new export form: 851 -> 107 -> 71 -> 15 nodes)
        assert {"MatMul", "Gather", "Concat"} <= ops, ops
    for n in g.node:
        if n.op_type in ("Sigmoid", "Softplus"):
            assert pinned(n), n.name


# -- defect 8: ILA logits in FP32 -------------------------------------------------------------------
@pytest.mark.parametrize("grad", [False, True], ids=["inplace", "functional"])
def test_ila_logits_do_not_overflow_in_fp16(grad):
    """Dot products of ~1.6e5 (> FP16's 65504): FP16 logits would be inf and the softmax NaN."""
    g = torch.Generator().manual_seed(0)
    q = 150 + 100 * torch.rand(1, 4, 6, 7, generator=g)
    k = 150 + 100 * torch.rand(1, 4, 6, 7, generator=g)
    v = torch.randn(1, 8, 6, 7, generator=g)
    expected = reference_local_attention(q.double(), k.double(), v.double(), 5)
    with torch.set_grad_enabled(grad):
        out = local_attention(q.half(), k.half(), v.half(), 5)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # Inputs rounded to FP16 move these sharp logits a little: compare with the rounded inputs.
    expected = reference_local_attention(q.half().double(), k.half().double(), v.half().double(), 5)
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


def test_ila_softmax_runs_in_fp32_under_bf16_autocast(monkeypatch):
    seen = []
    real = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim: seen.append(x.dtype) or real(x, dim))
    q, k, v = (torch.randn(1, c, 5, 6).to(torch.bfloat16) for c in (2, 2, 4))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        local_attention(q, k, v, 3)
    assert seen == [torch.float32]


# -- defect 9: encoder timing with events ----------------------------------------------------------
def test_encoder_timer_uses_events_without_synchronising(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("synchronised the device"))
    made = []

    class Ev:
        def __init__(self) -> None:
            self.recorded = False
            made.append(self)

        def record(self) -> None:
            self.recorded = True

        def elapsed_time(self, end) -> float:  # ms, like torch.cuda.Event
            return {1: 4.0, 3: 1.5}[made.index(end)]

    t = EncoderTimer(cuda=True, event_factory=Ev)
    for _ in range(2):  # slow + fast encoder, say
        t.start()
        t.stop()
    assert all(e.recorded for e in made) and len(made) == 4
    assert t.seconds() == pytest.approx(0.0055)
    t.reset()
    assert t.seconds() == 0.0


def test_encoder_timer_on_cpu_sums_wall_time(monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 20.25])
    monkeypatch.setattr(cuda_util.time, "perf_counter", lambda: next(clock))
    t = EncoderTimer(cuda=False)
    for _ in range(2):
        t.start()
        t.stop()
    assert t.seconds() == pytest.approx(0.75)


# -- defect 6 and 8: FP16 self-check and the FP32 switch -----------------------------------------
def _fake_step(depth: float):
    def step(img, state, key):
        h, w = img.shape[:2]
        out = {"semantic": np.zeros((h, w), np.int32), "depth": np.full((h, w), depth, np.float32)}
        return StepResult(out, (state or 0) + 1)
    return step


@pytest.mark.parametrize("test_depth,keeps_fp16", [(2.0 * 1.001, True), (2.0 * 1.05, False)])
def test_fp16_check_switches_to_fp32_on_a_miss(test_depth, keeps_fp16):
    frames = [np.zeros((4, 4, 3), np.uint8)] * 4
    switched, notes = [], []
    kept = fp16_or_fp32(lambda: stream_parity(_fake_step(2.0), _fake_step(test_depth), frames),
                        lambda: switched.append(1), notes, "X")
    assert kept is keeps_fp16 and switched == ([] if keeps_fp16 else [1])
    # depth 0.1 % off passes (<= 1 %), 5 % off misses: the note carries the measured value.
    assert ("parity ok" if keeps_fp16 else "failed parity") in notes[0]
    assert f"depth rel {100 * abs(test_depth - 2.0) / 2.0:.3f}%" in notes[0]


def test_fp16_check_that_cannot_run_means_fp32():
    switched, notes = [], []

    def broken():
        raise RuntimeError("CUDA error: out of memory")

    assert not fp16_or_fp32(broken, lambda: switched.append(1), notes, "X")
    assert switched == [1] and "out of memory" in notes[0]


def test_self_check_frames_are_the_bundled_clip(monkeypatch):
    frames, source = check_frames((64, 128), 4)
    if cuda_util._bundled_clip() is not None:
        assert source == "bikes.mp4"
    assert len(frames) == 4 and all(f.shape == (64, 128, 3) and f.dtype == np.uint8 for f in frames)
    # Consecutive video frames are alike; uniform noise would differ by ~85 grey levels.
    assert np.abs(frames[0].astype(int) - frames[1]).mean() < 30
    monkeypatch.setattr(cuda_util, "_bundled_clip", lambda: None)
    frames, source = check_frames((64, 128), 2)
    assert source.startswith("synthetic") and np.abs(frames[0].astype(int) - frames[1]).mean() < 30


# -- defect 7: the CPU fallback after a dead device ------------------------------------------------
def test_cpu_fallback_recovers_after_the_device_dies(monkeypatch):
    """``meta`` stands in for a dead CUDA context: nothing can be copied off it. The device
    backend fails at run time; the CPU fallback must run from the host model it kept."""
    from mtl_perception.backends.select import create_backend
    from mtl_perception.backends.torch_backend import TorchBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = tiny_model()
    fb, skipped = create_backend(model, "torch", device="meta", fp16=False)
    assert fb.active_label == "torch-cuda" and fb.active.name == "torch-meta"
    assert all(p.device.type == "cpu" for p in model.parameters())  # the shared model stayed home
    img = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    r = fb.step(img, None, True)
    assert fb.failures == 1 and fb.active_label == "torch-cpu"
    ref = TorchBackend(tiny_model(), "cpu").step(img, None, True)
    np.testing.assert_array_equal(r.outputs["semantic"], ref.outputs["semantic"])
    np.testing.assert_allclose(r.outputs["depth"], ref.outputs["depth"], rtol=1e-5)


def test_host_model_copies_only_off_device():
    m = tiny_model()
    assert host_model(m) is m


# -- the one command for the first GPU -------------------------------------------------------------
def test_gpu_check_dry_run_lists_every_step_and_runs_nothing(capsys, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    monkeypatch.setattr(gc.subprocess, "run", lambda *a, **k: pytest.fail("dry run ran a command"))
    out_dir = tmp_path / "out"
    assert gc.main(["--dry-run", "--out", str(out_dir), "--venv", str(tmp_path / "v")]) == 0
    text = capsys.readouterr().out
    steps = re.findall(r"^\s+\d+\. (\w+)", text, re.M)
    assert steps == ["venv", "env", "tests", "build", "cache", "parity", "fallback", "latency"]
    for must in ("torch==2.13.0", ".[gpu,test]", "test/test_backends_gpu.py", "test/test_gpu_logic.py",
                 "256x512", "512x1024", "tensorrt-fp16", "tensorrt-fp32", "torch-cuda-fp16", "K=5",
                 "injected TensorRT execution failure", "gpu_check.md"):
        assert must in text, must
    assert not out_dir.exists()
    # The Makefile target runs this script.
    assert "bench/gpu_check.py" in (ROOT / "Makefile").read_text().split("gpu-check:")[1].split("\n\n")[0]


# -- what is built is what is keyed (a stand-in for the tensorrt module) -----------------------------
class _Enum:
    def __init__(self, name: str) -> None:
        self.name = name


class _Layer:
    def __init__(self, ltype: str, name: str, act: str | None = None) -> None:
        self.type, self.name, self._act = _Enum(ltype), name, act
        self.num_outputs, self.precision, self.out_types = 1, None, {}

    def set_output_type(self, j: int, dtype: object) -> None:
        self.out_types[j] = dtype


class _ActivationLayer(_Layer):
    @property
    def type(self) -> _Enum:  # like tensorrt's IActivationLayer.type: the activation, not the layer type
        return _Enum(self._act)

    @type.setter
    def type(self, value: _Enum) -> None:
        pass


def _fake_trt(layers: list[_Layer], record: dict) -> types.SimpleNamespace:
    class Network:
        num_layers = len(layers)

        def get_layer(self, i: int) -> _Layer:
            return layers[i]

    class Config:
        def set_memory_pool_limit(self, pool, size) -> None:
            record["workspace"] = size

        def set_flag(self, flag) -> None:
            record.setdefault("flags", []).append(flag)

        def __setattr__(self, k, v) -> None:
            record[k] = v

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags) -> Network:
            record["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network, config) -> bytes:
            return b"engine"

    class Parser:
        def __init__(self, network, logger) -> None:
            pass

        def parse(self, data) -> bool:
            return True

    class Monitor:
        def __init__(self) -> None:
            pass

    def logger(level: int) -> None:
        return None

    logger.WARNING = 0
    return types.SimpleNamespace(
        __version__="10.16.1.11", Logger=logger, Builder=Builder,
        OnnxParser=Parser, IProgressMonitor=Monitor, IActivationLayer=_ActivationLayer, float32="fp32",
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="ws"),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", PREFER_PRECISION_CONSTRAINTS="PREFER"))


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_build_engine_applies_exactly_the_keyed_settings(precision, monkeypatch, tmp_path):
    layers = [_Layer("CONVOLUTION", "/slow/conv1/Conv"), _Layer("ACTIVATION", "/slow/relu/Relu", "RELU"),
              _Layer("ACTIVATION", "/depth/Softplus", "SOFTPLUS"),
              _Layer("SOFTMAX", "/semantic/attend/Softmax"),
              _Layer("ELEMENTWISE", "/semantic/attend_1/Mul_2"), _Layer("ELEMENTWISE", "/decoder/Add")]
    record: dict = {}
    fake = _fake_trt(layers, record)
    monkeypatch.setattr(trt_b, "import_tensorrt", lambda: fake)
    onnx = tmp_path / "g.onnx"
    onnx.write_bytes(b"onnx")
    settings = trt_b.builder_settings(precision, workspace=123)
    assert trt_b.build_engine(onnx, precision, settings=settings, heartbeat_s=60) == b"engine"
    assert record["workspace"] == 123 and record["builder_optimization_level"] == 3
    assert record.get("flags", []) == (["FP16", "PREFER"] if precision == "fp16" else [])
    pinned = [lay.name for lay in layers if lay.precision == "fp32" and lay.out_types == {0: "fp32"}]
    expected = ["/depth/Softplus", "/semantic/attend/Softmax", "/semantic/attend_1/Mul_2"]
    assert pinned == (expected if precision == "fp16" else [])
