"""The node's raw-CDR image input (``node_input.parse_image_cdr``) against rclpy's own
serialisation, its rejections, and two per-frame publishing rules of the node, checked on a real
node in this process (tiny model, frames handed to the image callback as the raw subscription
delivers them):

* a frame arriving as CDR bytes gives the same outputs as the same frame as a message object;
* ~/latency is built and published only while it has a subscriber;
* the output images are written largest first (normals, then depth, then the colour images).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")

import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mtl_perception.backends.torch_backend import TorchBackend  # noqa: E402
from mtl_perception.imaging import REJECT_DATA, ImageError, fill_image_msg, image_msg_to_rgb  # noqa: E402
from mtl_perception.model import ModelConfig, build_model  # noqa: E402
from mtl_perception.node import PerceptionNode  # noqa: E402
from mtl_perception.node_input import parse_image_cdr  # noqa: E402
from mtl_perception.pipeline import LoadedBackend  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"
RNG = np.random.default_rng(3)


def _msg(encoding: str, h: int, w: int, frame_id: str, pad: int = 0) -> Image:
    channels = {"mono8": 1, "rgb8": 3, "bgra8": 4}[encoding]
    m = Image(height=h, width=w, encoding=encoding, step=w * channels + pad)
    m.data = RNG.integers(0, 256, m.step * h, dtype=np.uint8).tobytes()
    m.header.frame_id = frame_id
    m.header.stamp.sec, m.header.stamp.nanosec = -7, 123_456_789
    m.is_bigendian = 1 if pad else 0
    return m


@pytest.mark.parametrize("frame_id", ["", "a", "ab", "abc", "abcd", "camera_optical_frame", "kamera_ü"])
@pytest.mark.parametrize("encoding, pad", [("rgb8", 0), ("mono8", 3), ("bgra8", 2)])
def test_fields_and_pixels_match_rclpy(frame_id: str, encoding: str, pad: int) -> None:
    ref = _msg(encoding, 5, 7, frame_id, pad)
    raw = parse_image_cdr(serialize_message(ref))
    stamp = raw.header.stamp
    assert (stamp.sec, stamp.nanosec, raw.header.frame_id) == (-7, 123_456_789, frame_id)
    assert (raw.height, raw.width, raw.encoding, raw.is_bigendian, raw.step) == (
        ref.height, ref.width, ref.encoding, ref.is_bigendian, ref.step)
    assert bytes(raw.data) == bytes(ref.data)
    np.testing.assert_array_equal(image_msg_to_rgb(raw), image_msg_to_rgb(ref))


def test_big_endian_cdr_by_hand() -> None:
    """A 1x2 mono8 image from a big-endian writer: encapsulation 00 00, every integer big endian."""
    buf = (b"\x00\x00\x00\x00" + struct.pack(">iI", 3, 4) + struct.pack(">I", 2) + b"c\x00" + b"\x00\x00"
           + struct.pack(">II", 1, 2) + struct.pack(">I", 6) + b"mono8\x00" + b"\x01" + b"\x00"
           + struct.pack(">II", 2, 2) + b"\x0a\x0b")
    raw = parse_image_cdr(buf)
    assert (raw.header.stamp.sec, raw.header.stamp.nanosec, raw.header.frame_id) == (3, 4, "c")
    assert (raw.height, raw.width, raw.encoding, raw.is_bigendian, raw.step) == (1, 2, "mono8", 1, 2)
    assert bytes(raw.data) == b"\x0a\x0b"


@pytest.mark.parametrize("cut", [2, 10, 20, 40, -1])
def test_truncated_or_foreign_buffers_are_rejected_in_one_line(cut: int) -> None:
    data = serialize_message(_msg("rgb8", 4, 4, "cam"))
    with pytest.raises(ImageError) as e:
        parse_image_cdr(data[:cut])
    assert e.value.reason == REJECT_DATA and "\n" not in str(e.value)
    with pytest.raises(ImageError, match="encapsulation"):
        parse_image_cdr(b"\x00\x0a" + data[2:])  # not plain CDR (e.g. a delimited XCDR2 struct)


# -- on a node -------------------------------------------------------------------------------------
class _Pub:
    """Stands in for an output publisher with one subscriber; logs the topic of every write."""

    def __init__(self, topic: str, log: list[str]) -> None:
        self.topic, self.log, self.sent = topic, log, []

    def get_subscription_count(self) -> int:
        return 1

    def publish(self, data: bytes) -> None:
        self.log.append(self.topic)
        self.sent.append(data)


@contextmanager
def _node() -> Iterator[PerceptionNode]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    torch.manual_seed(0)
    backend = TorchBackend(build_model(ModelConfig.from_yaml(TINY)).eval(), "cpu")
    node = PerceptionNode(LoadedBackend(backend, True, 8, ()), context=ctx,
                          parameter_overrides=[Parameter("max_frame_gap_s", value=0.0)])
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


def _frame(n: int) -> Image:
    m = fill_image_msg(Image(), RNG.integers(0, 256, (48, 80, 3), dtype=np.uint8), "rgb8")
    m.header.frame_id = "cam"
    m.header.stamp.sec, m.header.stamp.nanosec = 5, n * 50_000_000
    return m


def _until(pred: Any, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.01)
    return pred()


def test_raw_frames_give_the_outputs_of_message_objects_and_images_go_largest_first() -> None:
    log: list[str] = []
    with _node() as node:
        node.pubs = {t: _Pub(t, log) for t in node.pubs}
        m = _frame(1)
        for i, as_bytes in enumerate((False, True)):
            node.scheduler.request_reset()  # both frames as the keyframe of a fresh stream
            node._on_image(serialize_message(m) if as_bytes else m)
            assert _until(lambda i=i: node.frames_out == i + 1), node.last_error
    first, second = (log[:len(log) // 2], log[len(log) // 2:])
    assert first == second == ["normals", "depth", "semantic/color", "normals/color", "semantic"]
    for topic in first:  # the same frame, the same bytes out, whichever way it came in
        a, b = node.pubs[topic].sent
        assert deserialize_message(a, Image) == deserialize_message(b, Image), topic
    sizes = [len(node.pubs[t].sent[0]) for t in first]
    assert sizes == sorted(sizes, reverse=True)


def test_latency_message_only_with_a_subscriber() -> None:
    with _node() as node:
        sent: list[Any] = []
        real_publish = node.latency_pub.publish
        node.latency_pub.publish = lambda msg: (sent.append(msg), real_publish(msg))
        node._on_image(_frame(1))
        assert _until(lambda: node.frames_out == 1), node.last_error
        assert sent == []  # nobody subscribes ~/latency: nothing built, nothing published
        listener = rclpy.create_node("latency_listener", context=node.context)
        listener.create_subscription(DiagnosticArray, "/mtl_perception/latency", lambda _m: None, 10)
        assert _until(lambda: node.latency_pub.get_subscription_count() == 1, 30)
        node._on_image(_frame(2))
        assert _until(lambda: node.frames_out == 2), node.last_error
        (msg,) = sent
        assert msg.header.stamp.nanosec == 100_000_000
        assert {kv.key for kv in msg.status[0].values} >= {"total_ms", "wait_ms", "keyframe"}
        listener.destroy_node()
