"""msg <-> numpy, palettes, pre/postprocessing, latency stats and the shared pipeline (no ROS)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mtl_perception import imaging
from mtl_perception.diagnostics import LatencyStats, RateMeter
from mtl_perception.imaging import ImageError, decode_image, fill_image_msg, image_msg_to_array
from mtl_perception.postprocess import postprocess, unit_normals
from mtl_perception.preprocess import resize_rgb
from mtl_perception.scheduler import KeyframeScheduler

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("enc, arr", [
    ("rgb8", RGB), ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
def test_decode_colour_encodings_with_padded_step(enc: str, arr: np.ndarray) -> None:
    h, w, c = arr.shape
    step = w * c + 3  # row padding must be skipped
    data = np.zeros((h, step), np.uint8)
    data[:, : w * c] = arr.reshape(h, w * c)
    out = decode_image(h, w, enc, step, data.tobytes())
    np.testing.assert_array_equal(out, RGB)


def test_decode_mono() -> None:
    g = RGB[:, :, 0]
    out = decode_image(6, 5, "mono8", 5, g.tobytes())
    assert out.shape == (6, 5, 3) and (out[:, :, 2] == g).all()


@pytest.mark.parametrize("h, w, enc, step, n, reason", [
    (6, 5, "yuv422", 10, 60, "unknown_encoding"),
    (6, 5, "16UC1", 10, 60, "unknown_encoding"),
    (0, 5, "rgb8", 15, 0, "bad_size"),
    (10**6, 10**6, "rgb8", 3 * 10**6, 10, "bad_size"),
    (6, 5, "rgb8", 14, 90, "bad_step"),
    (6, 5, "rgb8", 15, 89, "truncated_data"),
])
def test_decode_rejects_malformed(h, w, enc, step, n, reason) -> None:
    with pytest.raises(ImageError) as e:
        decode_image(h, w, enc, step, bytes(n))
    assert e.value.reason == reason


def test_fill_and_read_back_roundtrip() -> None:
    for arr, enc in [(RGB, "rgb8"), (RGB[:, :, 0], "mono8"), (RGB[:, :, 0].astype(np.uint16) * 300, "mono16"),
                     (RNG.random((6, 5)).astype(np.float32), "32FC1"),
                     (RNG.random((6, 5, 3)).astype(np.float32), "32FC3")]:
        msg = fill_image_msg(SimpleNamespace(), arr, enc)
        assert isinstance(msg.data, bytes) and msg.step * msg.height == len(msg.data)
        np.testing.assert_array_equal(image_msg_to_array(msg), arr)
    with pytest.raises(ValueError):
        fill_image_msg(SimpleNamespace(), RGB, "mono8")


def test_compressed_roundtrip_and_garbage() -> None:
    png = imaging.encode_compressed(RGB, "png")
    np.testing.assert_array_equal(imaging.compressed_to_rgb("png", png), RGB)
    jpg = imaging.encode_compressed(RGB)
    assert imaging.compressed_to_rgb("rgb8; jpeg compressed bgr8", jpg).shape == RGB.shape
    with pytest.raises(ImageError) as e:
        imaging.compressed_to_rgb("jpeg", b"not a jpeg")
    assert e.value.reason == "decode_failed"
    with pytest.raises(ImageError):
        imaging.compressed_to_rgb("tiff", png)


def test_palettes_and_colourising() -> None:
    pal = imaging.make_palette(300)
    assert pal.shape == (300, 3) and len({tuple(c) for c in pal}) == 300
    ids = np.array([[0, 1], [2, 299]])
    assert imaging.colorize_semantic(ids, pal).shape == (2, 2, 3)
    over = imaging.colorize_semantic(ids, pal, np.zeros((2, 2, 3), np.uint8), 0.5)
    assert (over <= pal[ids] // 2 + 1).all()
    n = np.zeros((2, 2, 3), np.float32)
    n[..., 2] = -1
    assert (imaging.colorize_normals(n)[..., 2] == 0).all()
    d = np.array([[1.0, 2.0], [np.nan, 50.0]], np.float32)
    c = imaging.colorize_depth(d)
    assert (c[1, 0] == 0).all() and c[0, 0].sum() > c[1, 1].sum()


def test_resize_and_postprocess() -> None:
    assert resize_rgb(RGB, (6, 5)) is RGB
    ro = np.frombuffer(RGB.tobytes(), np.uint8).reshape(RGB.shape)
    assert resize_rgb(ro, (6, 5)).flags.writeable
    assert resize_rgb(RGB, (12, 10)).shape == (12, 10, 3)
    normals = RNG.normal(size=(4, 8, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    depth = RNG.uniform(1, 5, (4, 8)).astype(np.float32)
    depth[0, 0] = -1.0
    out = postprocess({"semantic": RNG.integers(0, 5, (4, 8)).astype(np.int32), "depth": depth,
                       "normals": normals}, (8, 16))
    assert out["semantic"].shape == (8, 16) and out["semantic"].dtype == np.int32
    assert set(np.unique(out["semantic"])) <= set(range(5))
    assert out["depth"].dtype == np.float32 and np.isnan(out["depth"][0, 0])
    ok = np.isfinite(out["normals"]).all(axis=2)
    np.testing.assert_allclose(np.linalg.norm(out["normals"][ok], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("layout", ["interleaved", "planar view"])
def test_unit_normals_by_hand(layout: str) -> None:
    """(3, 4, 0) -> (0.6, 0.8, 0); a scaled unit vector -> itself; a zero or 1e-7 vector -> NaN
    (norm <= 1e-6); the same values whether the array is contiguous (H, W, 3) or a view of a
    planar (3, H, W) output (what the ONNX Runtime backend hands over)."""
    vecs = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, -2.5], [0.0, 0.0, 0.0]],
                     [[1e-7, 0.0, 0.0], [-1.0, 2.0, -2.0], [0.0, 1e-3, 0.0]]], np.float32)
    want = np.array([[[0.6, 0.8, 0.0], [0.0, 0.0, -1.0], [np.nan] * 3],
                     [[np.nan] * 3, [-1 / 3, 2 / 3, -2 / 3], [0.0, 1.0, 0.0]]], np.float32)
    n = vecs if layout == "interleaved" else np.ascontiguousarray(vecs.transpose(2, 0, 1)).transpose(1, 2, 0)
    got = unit_normals(n)
    assert got.dtype == np.float32 and got.shape == (2, 3, 3) and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)  # NaN where NaN
    assert not np.shares_memory(got, n)


def test_latency_stats_and_rates() -> None:
    st = LatencyStats(window=10)
    for i in range(20):
        st.add(i % 5 == 0, {"preprocess": 0.001, "encoder": 0.010 if i % 5 == 0 else 0.002, "decoder": 0.003})
    s = st.summary()
    assert s["keyframe"]["total"].count == 4 and s["non_keyframe"]["total"].count == 10
    assert s["keyframe"]["total"].p50 == pytest.approx(14.0)
    assert "keyframe" in st.table()
    r = RateMeter(window_s=5)
    for i in range(11):
        r.tick(100.0 + i * 0.1)
    assert r.rate(101.0) == pytest.approx(10.0)


def test_pipeline_shared_path() -> None:
    from mtl_perception.pipeline import Pipeline, load_backend

    # backend named: auto on the CPU would time the CPU backends (and export ONNX) first
    loaded = load_backend(model_config=str(ROOT / "config/model/tiny.yaml"), backend="torch", device="cpu",
                          warmup=False)
    assert not loaded.trained and loaded.num_classes == 8
    pipe = Pipeline(loaded.backend, "input")
    sched = KeyframeScheduler(interval=2)
    keys = []
    for i in range(4):
        rgb = RNG.integers(0, 256, (96, 160, 3), dtype=np.uint8)
        res = pipe.process(rgb, sched.decide(i * 0.1, "cam", (96, 160)))
        keys.append(res.is_keyframe)
        assert res.outputs["depth"].shape == (96, 160) and res.outputs["normals"].shape == (96, 160, 3)
        assert set(res.timings) == {"preprocess", "encoder", "decoder", "postprocess"}
    assert keys == [True, False, True, False]
    # only the tasks someone listens to are postprocessed (the node passes its subscribed ones)
    res = pipe.process(rgb, sched.decide(0.5, "cam", (96, 160)), tasks={"depth"})
    assert set(res.outputs) == {"depth"} and res.outputs["depth"].shape == (96, 160)
    assert pipe.process(rgb, sched.decide(0.6, "cam", (96, 160)), tasks=set()).outputs == {}
    pipe.output_resolution = "network"
    assert pipe.output_size((96, 160)) == (64, 128)
    with pytest.raises(ValueError):
        pipe.output_resolution = "big"


def test_load_backend_errors_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtl_perception import share
    from mtl_perception.model import CheckpointError, ConfigError
    from mtl_perception.pipeline import load_backend

    with pytest.raises(ConfigError, match="nope.yaml"):
        load_backend(model_config=str(tmp_path / "nope.yaml"))
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_backend(checkpoint=str(tmp_path / "nope.pt"))
    # No parameters means the shipped checkpoint; an install without it says so, never random weights.
    monkeypatch.setattr(share, "default_checkpoint", lambda: "")
    with pytest.raises(ValueError, match="mila_street_lite.pt is not installed"):
        load_backend()


def test_colorize_semantic_paints_unknown_ids_black() -> None:
    pal = imaging.make_palette(3)
    ids = np.array([[0, 2], [255, -1]])
    out = imaging.colorize_semantic(ids, pal)
    assert (out[0, 0] == pal[0]).all() and (out[0, 1] == pal[2]).all()
    assert (out[1] == 0).all()  # ignore label and out-of-range ids are black, not the last class
