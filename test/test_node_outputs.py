"""The node's output path by value: per-topic images at input resolution against reference
resizes of the network-resolution result (torch ``nearest-exact`` / ``bilinear``), no work for
topics nobody subscribed, and the hand-built CDR bytes against rclpy's own (de)serialisation."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_perception import outputs as outputs_mod
from mtl_perception.image_cdr import image_cdr
from mtl_perception.imaging import make_palette
from mtl_perception.outputs import FrameOutputs

NET = (16, 24)
RNG = np.random.default_rng(7)


def _net_outputs() -> dict[str, np.ndarray]:
    n = RNG.normal(size=(*NET, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    return {"semantic": RNG.integers(0, 6, NET).astype(np.int32),
            "depth": RNG.uniform(0.5, 40.0, NET).astype(np.float32), "normals": n}


def _nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x)).double()
    t = t[None, None] if x.ndim == 2 else t.permute(2, 0, 1)[None]
    r = F.interpolate(t, size=size, mode="nearest-exact")[0]
    return (r[0] if x.ndim == 2 else r.permute(1, 2, 0)).numpy().astype(x.dtype)


def _bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, np.float64))
    t = t[None, None] if x.ndim == 2 else t.permute(2, 0, 1)[None]
    r = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0]
    return (r[0] if x.ndim == 2 else r.permute(1, 2, 0)).numpy()


@pytest.mark.parametrize("size", [(40, 60), (33, 50)])
def test_input_resolution_topics_equal_reference_resizes_of_network_result(size: tuple[int, int]) -> None:
    net = _net_outputs()
    net["depth"][0, 0] = -1.0  # invalid -> NaN after the resize
    palette = make_palette(6)
    overlay = RNG.integers(0, 256, (*size, 3)).astype(np.uint8)
    fo = FrameOutputs(net, size, palette, overlay, alpha=0.3)
    # ids: nearest-exact of the network ids
    np.testing.assert_array_equal(fo.get("semantic"), _nearest(net["semantic"], size))
    # colours: the palette of the nearest ids, then 0.3 palette + 0.7 image (hand formula)
    pal = palette[_nearest(net["semantic"], size)].astype(np.float64)
    want = np.floor(pal * 0.3 + overlay * 0.7 + 1e-9).astype(np.uint8)
    np.testing.assert_array_equal(fo.get("semantic/color"), want)
    # depth: bilinear of the metres (upsampling: PIL and torch agree), NaN where the source was <= 0
    ref = _bilinear(net["depth"], size)
    ref[ref <= 0] = np.nan
    got = fo.get("depth")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4, equal_nan=True)
    assert np.isnan(got[0, 0])
    # normals: bilinear, then renormalised to unit length
    rn = _bilinear(net["normals"], size)
    rn /= np.linalg.norm(rn, axis=2, keepdims=True)
    np.testing.assert_allclose(fo.get("normals"), rn, atol=2e-5)
    # normals colour: the network-resolution colours, bilinearly resized (uint8 rounding: +-1)
    col = ((np.clip(net["normals"], -1, 1) + 1) * 127.5).astype(np.uint8)
    diff = np.abs(fo.get("normals/color").astype(int) - np.rint(_bilinear(col, size)).astype(int))
    assert diff.max() <= 1


def test_network_resolution_is_the_backend_output_without_copies() -> None:
    net = _net_outputs()
    net["normals"][2, 3] = 0.0  # cannot be normalised -> NaN
    fo = FrameOutputs(net, NET, make_palette(6))
    assert fo.get("semantic") is net["semantic"]
    assert fo.get("depth") is net["depth"]  # all valid: published straight from the backend's array
    norm = np.linalg.norm(net["normals"], axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.where(norm > 1e-6, net["normals"] / norm, np.nan)
    np.testing.assert_allclose(fo.get("normals"), want, atol=1e-7, equal_nan=True)
    assert np.isnan(fo.get("normals")[2, 3]).all()
    np.testing.assert_array_equal(fo.get("semantic/color"), make_palette(6)[net["semantic"]])
    # (n + 1) * 127.5 truncated, by hand; the NaN normal (zero vector) is black
    want_col = np.floor((np.nan_to_num(want, nan=-1.0) + 1.0) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(fo.get("normals/color"), want_col)
    assert fo.get("normals/color")[2, 3].tolist() == [0, 0, 0]


def _spy(monkeypatch: pytest.MonkeyPatch, calls: list[str], name: str) -> None:
    real = getattr(outputs_mod, name)

    def wrapped(*a: object, **k: object) -> object:
        calls.append(name)
        return real(*a, **k)

    monkeypatch.setattr(outputs_mod, name, wrapped)


def test_only_the_asked_topic_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("resize_float", "resize_labels", "resize_to_network", "unit_normals", "valid_depth",
                 "colorize_semantic", "colorize_normals"):
        _spy(monkeypatch, calls, name)
    fo = FrameOutputs(_net_outputs(), (40, 60), make_palette(6))
    fo.get("semantic/color")
    assert sorted(calls) == ["colorize_semantic", "resize_labels"]  # no float resize, no normals
    calls.clear()
    fo.get("semantic/color")
    assert calls == []  # cached
    fo.get("normals/color")
    assert sorted(calls) == ["colorize_normals", "resize_to_network", "unit_normals"]  # no float resize
    assert set(fo.timings) == {"postprocess", "resize", "colour"}


class _Pub:
    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.sent: list[bytes] = []

    def get_subscription_count(self) -> int:
        return self.subscribers

    def publish(self, data: bytes) -> None:
        self.sent.append(data)


def test_node_publishes_and_computes_only_subscribed_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PerceptionNode._publish_outputs`` on a stand-in node: only ``~/depth`` has a subscriber,
    at input resolution; nothing of the other four topics is computed or published."""
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from mtl_perception.imaging import image_msg_to_array
    from mtl_perception.node import PerceptionNode
    from mtl_perception.pipeline import FrameResult

    calls: list[str] = []
    for name in ("resize_float", "resize_labels", "resize_to_network", "unit_normals", "colorize_semantic",
                 "colorize_normals"):
        _spy(monkeypatch, calls, name)
    net = _net_outputs()
    size = (40, 60)
    stub = types.SimpleNamespace(
        encodings={"semantic": "mono8", "semantic/color": "rgb8", "depth": "32FC1", "normals": "32FC3",
                   "normals/color": "rgb8"},
        pubs={t: _Pub(1 if t == "depth" else 0) for t in ("semantic", "semantic/color", "depth", "normals",
                                                            "normals/color")},
        palette=make_palette(6), overlay_alpha=0.0, _camera_info=None, info_pub=None)
    stub._wanted = lambda t: PerceptionNode._wanted(stub, t)
    header = types.SimpleNamespace(stamp=types.SimpleNamespace(sec=12, nanosec=345), frame_id="cam")
    result = FrameResult(net, False, None, {}, np.zeros((*size, 3), np.uint8))
    timings = PerceptionNode._publish_outputs(stub, header, result)
    assert {t: len(p.sent) for t, p in stub.pubs.items()} == {
        "semantic": 0, "semantic/color": 0, "depth": 1, "normals": 0, "normals/color": 0}
    assert calls == ["resize_float"]  # the depth resize, nothing for the unsubscribed topics
    msg = deserialize_message(stub.pubs["depth"].sent[0], Image)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == (12, 345, "cam")
    np.testing.assert_allclose(image_msg_to_array(msg), _bilinear(net["depth"], size), rtol=1e-5)
    assert timings["serialize"] >= 0 and timings["colour"] == 0.0


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "abcd", "camera_optical_frame", "kamera_ü"])
@pytest.mark.parametrize("encoding, shape, dtype", [
    ("mono8", (3, 5), np.uint8), ("rgb8", (1, 1, 3), np.uint8), ("mono16", (3, 3), np.uint16),
    ("32FC1", (4, 7), np.float32), ("32FC3", (2, 3, 3), np.float32)])
def test_image_cdr_matches_rclpy_serialisation(frame_id: str, encoding: str, shape: tuple,
                                               dtype: type) -> None:
    pytest.importorskip("rclpy")
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from mtl_perception.imaging import fill_image_msg

    arr = (RNG.normal(size=shape) * 100).astype(dtype)
    ref_msg = fill_image_msg(Image(), arr, encoding)
    ref_msg.header.frame_id = frame_id
    ref_msg.header.stamp.sec, ref_msg.header.stamp.nanosec = -3, 999_999_999
    ours = image_cdr(-3, 999_999_999, frame_id, arr, encoding)
    assert deserialize_message(ours, Image) == ref_msg  # every field, data included
    ref = serialize_message(ref_msg)
    assert len(ours) == len(ref)
    # rclpy leaves its alignment padding uninitialised: the bytes may differ only there (ours: 0)
    diff = [i for i in range(len(ref)) if ours[i] != ref[i]]
    assert all(ours[i] == 0 for i in diff) and len(diff) <= 9
    assert ours[-arr.nbytes:] == arr.tobytes()


def test_normals_colour_by_hand() -> None:
    """(n + 1) * 127.5 truncated per component; a non-finite component is 0 (the rest kept)."""
    from mtl_perception.imaging import colorize_normals

    n = np.array([[[np.inf, 0.0, 0.0], [np.nan, 0.5, -0.5], [1.0, -1.0, 0.0], [2.0, -3.0, -np.inf]]],
                 np.float32)
    assert colorize_normals(n).tolist() == [[[0, 127, 127], [0, 191, 63], [255, 0, 127], [255, 0, 0]]]
