"""The keyframe policy switched live through a real node process: ``keyframe_policy`` and its
parameters, the per-frame ``keyframe_reason`` on ~/latency, and the keyframe rate and reasons in
/diagnostics. ~/latency is an output, so subscribing to it makes the node run inference."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mtl_perception.imaging import fill_image_msg  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402
from mtl_perception.tools.harness import Client, kv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "config" / "model" / "tiny.yaml")
NODE = "/mtl_perception"
H, W = 64, 128


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (H // 8, W // 8, 3)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 8, 0), 8, 1)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.log = tmp / "node.log"
        dom = harness.next_domain_id()
        params = {"model_config": TINY, "keyframe_interval": 100, "max_frame_gap_s": 0.0, "threads": 1,
                  "backend": "torch", "input_reliability": "reliable", "input_depth": 10,
                  "output_depth": 50, "diagnostics_period_s": 0.2}
        self.proc = harness.start_process(harness.node_command(params, remaps={"image": "/cam/image"}),
                                          dom, self.log)
        self.client = Client(dom, "test_keyframe_node")
        self.latency = self.client.collect(f"{NODE}/latency", DiagnosticArray,
                                           self.client.qos(reliable=True, depth=50))
        self.diag = self.client.collect("/diagnostics", DiagnosticArray)
        self.pub = self.client.publisher("/cam/image", Image, self.client.qos(reliable=True, depth=10))
        self.t_ns = 5 * 10**9

    def send(self, rgb: np.ndarray) -> dict[str, str]:
        """Publish one frame and wait for its ~/latency record (keyframe, keyframe_reason)."""
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        self.t_ns += 50_000_000
        m = fill_image_msg(Image(), rgb, "rgb8")
        m.header.frame_id = "cam"
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(self.t_ns, 10**9)
        self.pub.publish(m)
        key = (m.header.stamp.sec, m.header.stamp.nanosec)

        def found() -> dict[str, str] | None:
            for arr in self.latency:
                if (arr.header.stamp.sec, arr.header.stamp.nanosec) == key:
                    return kv(arr.status[0])
            return None

        assert self.client.spin_until(lambda: found() is not None, 60), self.log.read_text()[-3000:]
        return found()  # type: ignore[return-value]

    def status(self, pred) -> dict[str, str]:
        """The newest /diagnostics values of the node once ``pred`` holds for them."""
        def newest() -> dict[str, str] | None:
            for arr in reversed(self.diag):
                for st in arr.status:
                    if st.name.startswith(f"{NODE}: "):
                        return kv(st)
            return None

        ok = self.client.spin_until(lambda: newest() is not None and pred(newest()), 30)
        assert ok, (newest(), self.log.read_text()[-2000:])
        return newest()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("keyframe_node"))
    try:
        assert r.client.spin_until(lambda: r.client.node.count_subscribers("/cam/image") > 0
                                   and r.pub.get_subscription_count() > 0, 90), r.log.read_text()[-3000:]
        yield r
    finally:
        r.client.close()
        rc = harness.stop_process(r.proc, signal.SIGTERM)
        assert rc == 0, r.log.read_text()[-3000:]


def test_policy_switch_live(rig: Rig) -> None:
    a, b = _scene(1), _scene(2)
    first = rig.send(a)
    assert first["keyframe"] == "true" and first["keyframe_reason"] == "reset"
    # fixed, K = 100: a cut is ignored
    assert [rig.send(x)["keyframe"] for x in (a, a, b)] == ["false"] * 3
    res = rig.client.set_parameters(NODE, {"keyframe_policy": "adaptive", "keyframe_min_interval": 1,
                                           "keyframe_max_interval": 100, "keyframe_target_rate": 0.05})
    assert all(r.successful for r in res), [r.reason for r in res]
    assert [rig.send(b)["keyframe"] for _ in range(3)] == ["false"] * 3  # still scene
    cut = rig.send(a)
    assert cut["keyframe"] == "true" and cut["keyframe_reason"] == "drift"
    st = rig.status(lambda v: v.get("keyframes.drift") == "1")
    assert st["keyframe_policy"] == "adaptive" and st["keyframe_min_interval"] == "1"
    assert st["keyframe_last_reasons"] == "reset,drift"
    assert st["keyframe_rate"] == f"{2 / 8:.3f}"  # 2 keyframes among the 8 processed frames
    # a change the budget cannot meet (rate 0.05 needs max >= 20) is refused; the policy stays
    res = rig.client.set_parameters(NODE, {"keyframe_max_interval": 10})
    assert not res[0].successful and "keyframe_target_rate" in res[0].reason
    st = rig.status(lambda v: True)
    assert st["keyframe_max_interval"] == "100" and st["keyframe_policy"] == "adaptive"
    # back to fixed, K = 2
    res = rig.client.set_parameters(NODE, {"keyframe_policy": "fixed", "keyframe_interval": 2})
    assert all(r.successful for r in res), [r.reason for r in res]
    got = [rig.send(a) for _ in range(4)]
    assert [g["keyframe"] for g in got] == ["false", "true", "false", "true"]
    assert {g["keyframe_reason"] for g in got if g["keyframe"] == "true"} == {"interval"}
