"""A stream reset clears the model state: after ``~/reset``, a resolution or frame_id change, a
stamp going backwards, a gap over ``max_frame_gap_s`` and a backend failure, the next output
equals what a fresh stream gives on the same frame (and differs from what the old state gives).

Checked on the :class:`Pipeline` driven by the :class:`KeyframeScheduler` (as the node and eval-bag
drive it), and end to end through a node process, against a fresh in-test pipeline built from the
same model (``model_config`` with random weights is seeded, so both processes hold equal weights).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from mtl_perception.pipeline import Pipeline, load_backend
from mtl_perception.scheduler import Decision, KeyframeScheduler

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "config/model/tiny.yaml")
H, W = 96, 160
K = 3
GAP = 1.0


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 6.0 + seed) * 70 + np.cos(yy / 4.0 + seed) * 50 + 128)[..., None]
    return np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def backend():
    return load_backend(model_config=TINY, backend="torch", device="cpu", warmup=False).backend


def _fresh(backend, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """The output of a new stream whose first frame is ``rgb``."""
    return Pipeline(backend).process(rgb, Decision(True, "start")).outputs


def _stream(backend) -> tuple[Pipeline, KeyframeScheduler, float]:
    """A pipeline and scheduler that have run three frames (key, non-key, non-key), t = 0.1 s."""
    pipe, sched = Pipeline(backend), KeyframeScheduler(K, GAP)
    for i in range(3):
        pipe.process(_rgb(i), sched.decide(i * 0.05, "cam", (H, W)))
    return pipe, sched, 0.1


# Per reason: how the next frame differs (stamp offset from the last one, frame_id, size).
CASES = {
    "requested": (0.05, "cam", (H, W)),
    "resolution_change": (0.05, "cam", (80, 144)),
    "frame_id_change": (0.05, "other_cam", (H, W)),
    "stamp_backwards": (-0.08, "cam", (H, W)),
    "frame_gap": (GAP + 0.5, "cam", (H, W)),
}


@pytest.mark.parametrize("reason", list(CASES))
def test_pipeline_reset_equals_fresh_stream(backend, reason: str) -> None:
    dt, frame_id, size = CASES[reason]
    x = _rgb(50, *size)
    pipe, sched, t = _stream(backend)
    if reason == "requested":
        sched.request_reset()
    d = sched.decide(t + dt, frame_id, size)
    assert d.reset == reason and d.is_keyframe
    got = pipe.process(x, d).outputs
    fresh = _fresh(backend, x)
    np.testing.assert_allclose(got["depth"], fresh["depth"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["normals"], fresh["normals"], rtol=1e-5, atol=1e-5)
    # the past matters: the same keyframe with the old state kept gives another output
    kept, _, _ = _stream(backend)
    old = kept.process(x, Decision(True, None)).outputs
    assert np.abs(old["depth"] - fresh["depth"]).max() > 1e-3


class _FailOnce:
    """A backend that raises on its ``fail_at``-th step (counting from 1), else delegates."""

    def __init__(self, inner, fail_at: int) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0
        self.input_size = inner.input_size

    def step(self, image, state, is_keyframe):  # noqa: ANN001, ANN201 - the Backend signature
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return self.inner.step(image, state, is_keyframe)


def test_pipeline_restarts_after_a_backend_failure(backend) -> None:
    pipe, sched = Pipeline(_FailOnce(backend, 4)), KeyframeScheduler(K, 0.0)
    for i in range(3):
        pipe.process(_rgb(i), sched.decide(i * 0.05, "cam", (H, W)))
    with pytest.raises(RuntimeError, match="device lost"):
        pipe.process(_rgb(3), sched.decide(0.15, "cam", (H, W)))  # a keyframe (4th frame, K=3)
    d = sched.decide(0.2, "cam", (H, W))
    assert not d.is_keyframe and d.reset is None  # the scheduler does not know
    x = _rgb(60)
    res = pipe.process(x, d)
    assert res.is_keyframe  # the stream restarted on this frame
    fresh = _fresh(backend, x)
    np.testing.assert_allclose(res.outputs["depth"], fresh["depth"], rtol=1e-5, atol=1e-5)


# -- end to end through the node process -----------------------------------------------------------
def test_node_resets_equal_fresh_stream(backend, tmp_path: Path) -> None:
    pytest.importorskip("rclpy", reason="rclpy not installed")
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger

    from mtl_perception.imaging import fill_image_msg, image_msg_to_array
    from mtl_perception.tools import harness

    dom = harness.next_domain_id()
    log = tmp_path / "node.log"
    params = {"model_config": TINY, "keyframe_interval": K, "max_frame_gap_s": GAP, "threads": 1,
              "backend": "torch", "input_reliability": "reliable", "input_depth": 10}
    node = harness.start_process(harness.node_command(params, remaps={"image": "/cam/image"}), dom, log)
    client = harness.Client(dom, "test_reset")
    depth = client.collect("/mtl_perception/depth", Image, client.qos(reliable=True, depth=50))
    pub = client.publisher("/cam/image", Image, client.qos(reliable=True, depth=10))
    stamp = [100.0]

    def send(rgb: np.ndarray, t: float, frame_id: str = "cam") -> np.ndarray:
        """Publish one frame and wait for its depth output (so no frame is dropped)."""
        msg = fill_image_msg(Image(), rgb, "rgb8")
        msg.header.frame_id = frame_id
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(round(t * 1e9), 10**9)
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        stamp[0] = t
        found: list = []

        def arrived() -> bool:
            found[:] = [m for m in depth if (m.header.stamp.sec, m.header.stamp.nanosec) == key]
            return bool(found)

        pub.publish(msg)
        assert client.spin_until(arrived, 60), f"no output for stamp {t}; log:\n{log.read_text()[-3000:]}"
        return image_msg_to_array(found[0])

    try:
        assert client.spin_until(lambda: client.node.count_subscribers("/cam/image") > 0
                                 and pub.get_subscription_count() > 0, 90), log.read_text()[-3000:]
        assert client.spin_until(lambda: False, 1.0) is False  # let discovery settle both ways
        for n, (reason, (dt, frame_id, size)) in enumerate(CASES.items()):
            for i in range(3):  # a running stream with a non-keyframe in its memory
                send(_rgb(10 * n + i), stamp[0] + 0.05)
            x = _rgb(100 + n, *size)
            if reason == "requested":
                assert client.call(Trigger, "/mtl_perception/reset", Trigger.Request()).success
            got = send(x, stamp[0] + dt, frame_id)
            fresh = _fresh(backend, x)["depth"]
            err = float(np.abs(got - fresh).max())
            assert err < 1e-3, f"{reason}: output differs from a fresh stream by {err}"
    finally:
        client.close()
        rc = harness.stop_process(node, signal.SIGINT)
    assert rc == 0, log.read_text()[-3000:]
