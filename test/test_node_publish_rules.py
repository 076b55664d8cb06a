"""~/latency is built and published only while it has a subscriber (issue 14), checked on a
real node in this process (tiny model, frames handed straight to the image callback)."""

from __future__ import annotations

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
from sensor_msgs.msg import Image  # noqa: E402

from mtl_perception.backends.torch_backend import TorchBackend  # noqa: E402
from mtl_perception.imaging import fill_image_msg  # noqa: E402
from mtl_perception.model import ModelConfig, build_model  # noqa: E402
from mtl_perception.node import PerceptionNode  # noqa: E402
from mtl_perception.pipeline import LoadedBackend  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"
RNG = np.random.default_rng(3)


# -- on a node -------------------------------------------------------------------------------------
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
