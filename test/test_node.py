"""The node as a real process (its console script) over real Fast DDS on a private domain.

One node process serves the whole module (start-up costs seconds); tests run in file order and
each only asserts on what it caused, so a later test does not depend on an earlier one's counts.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheel) not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs (ros-sensor-msgs wheel) not installed")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs (ros-diagnostic-msgs wheel) not installed")
pytest.importorskip("std_srvs.srv", reason="std_srvs (ros-std-srvs wheel) not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from mtl_perception.imaging import image_msg_to_array  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402
from mtl_perception.tools.harness import Client, kv, make_image_msg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "config/model/tiny.yaml")
H, W = 96, 160  # camera size; the tiny network runs at 64x128
NODE = "/mtl_perception"
FRAME_ID = "cam_test"


class Rig:
    """The node process + a probe client + a frame source with increasing stamps."""

    def __init__(self, domain_id: int, log: Path) -> None:
        cmd = harness.node_command({"model_config": TINY, "keyframe_interval": 3, "max_frame_gap_s": 0.0,
                                    "threads": 1, "backend": "torch"},
                                   remaps={"image": "/cam/image_raw"})
        self.proc = harness.start_process(cmd, domain_id, log)
        self.log = log
        self.client = Client(domain_id, "test_node")
        self.pub = self.client.publisher("/cam/image_raw", Image, self.client.qos(reliable=False, depth=1))
        self.stamp_ns = 1_000_000_000
        self.seq = 0
        self.out = {name: self.client.collect(f"{NODE}/{name}", Image)
                    for name in ("semantic", "semantic/color", "depth", "normals", "normals/color")}
        self.latency = self.client.collect(f"{NODE}/latency", DiagnosticArray)
        self.diag = self.client.collect("/diagnostics", DiagnosticArray)
        self.sent: set[tuple[int, int]] = set()

    def send(self, msg: Image | None = None) -> None:
        if msg is None:
            self.stamp_ns += 50_000_000
            self.seq += 1
            msg = make_image_msg(H, W, self.stamp_ns, FRAME_ID, seed=self.seq)
        self.sent.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
        self.pub.publish(msg)

    def spin_until(self, pred, timeout: float = 30.0, send: bool = True) -> bool:
        assert self.proc.poll() is None, f"node exited: {self.log.read_text()[-2000:]}"
        return self.client.spin_until(pred, timeout, self.send if send else None, period=0.1)

    def frames(self) -> list[dict[str, str]]:
        return [kv(m.status[0]) for m in self.latency]

    def node_status(self) -> dict[str, str] | None:
        for arr in reversed(self.diag):
            for st in arr.status:
                if st.name.startswith(f"{NODE}: "):
                    return kv(st)
        return None


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from mtl_perception.tools.harness import next_domain_id

    r = Rig(next_domain_id(), tmp_path_factory.mktemp("node") / "node.log")
    try:
        ok = r.spin_until(lambda: all(len(v) >= 2 for v in r.out.values()) and len(r.latency) >= 2, 60)
        assert ok, f"no outputs from the node; log:\n{r.log.read_text()[-3000:]}"
        yield r
    finally:
        r.client.close()
        rc = harness.stop_process(r.proc, signal.SIGTERM)
        assert rc == 0, f"node exit code {rc} on SIGTERM; log:\n{r.log.read_text()[-3000:]}"


def _stamp(msg) -> tuple[int, int]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def test_outputs_keep_header_and_are_valid(rig: Rig) -> None:
    expected = {"semantic": ("mono8", 1), "semantic/color": ("rgb8", 3), "depth": ("32FC1", 1),
                "normals": ("32FC3", 3), "normals/color": ("rgb8", 3)}
    for name, (enc, _ch) in expected.items():
        msg = rig.out[name][-1]
        assert msg.encoding == enc, name
        assert (msg.height, msg.width) == (64, 128), name  # output_resolution: network (default)
        assert msg.header.frame_id == FRAME_ID
        assert _stamp(msg) in rig.sent, f"{name} stamp {_stamp(msg)} was never sent"
    sem = image_msg_to_array(rig.out["semantic"][-1])
    assert sem.max() < 8
    depth = image_msg_to_array(rig.out["depth"][-1])
    assert np.isfinite(depth).all() and (depth > 0).all()
    normals = image_msg_to_array(rig.out["normals"][-1])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=2), 1.0, atol=1e-3)
    # the same input frame produced every output: the stamps of one frame line up across topics
    stamps = [{_stamp(m) for m in rig.out[n]} for n in expected]
    assert set.intersection(*stamps)
    lat = rig.frames()[-1]
    assert float(lat["total_ms"]) > 0 and lat["keyframe"] in ("true", "false")
    assert _stamp(rig.latency[-1]) in rig.sent


def _check_pattern(frames: list[dict[str, str]], k: int) -> None:
    """Among frames processed with interval k, keyframes are exactly k processed frames apart."""
    frames = [f for f in frames if f["keyframe_interval"] == str(k) and not f["reset"]]
    keys = [int(f["index"]) for f in frames if f["keyframe"] == "true"]
    assert len(keys) >= 2, frames
    first = keys[0]
    for f in frames:
        i = int(f["index"])
        if i >= first:
            assert (f["keyframe"] == "true") == ((i - first) % k == 0), (k, [(g["index"], g["keyframe"])
                                                                            for g in frames])


def test_keyframe_interval_runtime_change(rig: Rig) -> None:
    assert rig.spin_until(lambda: sum(f["keyframe"] == "true" for f in rig.frames()) >= 3)
    _check_pattern(rig.frames(), 3)
    res = rig.client.set_parameters(NODE, {"keyframe_interval": 2})
    assert res[0].successful, res[0].reason
    n0 = len(rig.latency)
    assert rig.spin_until(lambda: sum(f["keyframe"] == "true" and f["keyframe_interval"] == "2"
                                      for f in rig.frames()[n0:]) >= 3)
    _check_pattern(rig.frames()[n0:], 2)
    # invalid values are rejected with a reason; the old value stays
    for bad in (0, 101):
        res = rig.client.set_parameters(NODE, {"keyframe_interval": bad})
        assert not res[0].successful and res[0].reason
    res = rig.client.set_parameters(NODE, {"keyframe_interval": "three"})
    assert not res[0].successful
    n1 = len(rig.latency)
    assert rig.spin_until(lambda: len(rig.latency) >= n1 + 2)
    assert rig.frames()[-1]["keyframe_interval"] == "2"
    # read-only parameters cannot change at run time
    res = rig.client.set_parameters(NODE, {"model_config": "other.yaml"})
    assert not res[0].successful


def test_reset_service_starts_on_keyframe(rig: Rig) -> None:
    resp = rig.client.call(Trigger, f"{NODE}/reset", Trigger.Request())
    assert resp.success
    n0 = len(rig.latency)
    assert rig.spin_until(lambda: any(f["reset"] == "requested" for f in rig.frames()[n0:]))
    f = next(f for f in rig.frames()[n0:] if f["reset"] == "requested")
    assert f["keyframe"] == "true" and f["index"] == "0"


def test_default_executor_is_single_threaded(rig: Rig) -> None:
    # inference has its own thread; the short callbacks run on one executor thread by default
    assert "executor: SingleThreadedExecutor (executor_threads: 1)" in rig.log.read_text()


def test_diagnostics(rig: Rig) -> None:
    n0 = len(rig.diag)
    assert rig.spin_until(lambda: len(rig.diag) > n0 and rig.node_status() is not None, 10)
    st = rig.node_status()
    for key in ("input_fps", "output_fps", "dropped_frames", "rejected_messages", "keyframe_interval",
                "backend", "device", "keyframe.latency_p50_ms", "keyframe.latency_p95_ms",
                "keyframe.latency_max_ms", "non_keyframe.latency_p50_ms", "non_keyframe.latency_p95_ms",
                "non_keyframe.encoder_p50_ms", "weights"):
        assert key in st, key
    assert st["backend"].startswith("torch") and st["device"] == "cpu"
    assert st["weights"] == "UNTRAINED"
    assert float(st["keyframe.latency_p50_ms"]) > 0


def test_malformed_storm_leaves_node_serving(rig: Rig) -> None:
    good = make_image_msg(H, W, rig.stamp_ns + 10**9, FRAME_ID)
    bad = []
    m = make_image_msg(H, W, 0, FRAME_ID)
    m.step = W  # wrong step (< width * 3)
    bad.append(m)
    m = make_image_msg(H, W, 0, FRAME_ID)
    m.data = bytes(m.data[:100])  # truncated
    bad.append(m)
    m = make_image_msg(H, W, 0, FRAME_ID)
    m.height = m.width = 0
    m.step = 0
    m.data = b""
    bad.append(m)  # zero size
    m = make_image_msg(H, W, 0, FRAME_ID)
    m.height, m.width, m.step = 10**6, 10**6, 3 * 10**6  # huge, data absent
    bad.append(m)
    m = make_image_msg(H, W, 0, FRAME_ID)
    m.encoding = "yuv422_yuy2"
    bad.append(m)
    m = make_image_msg(H, W, 0, FRAME_ID)
    m.encoding = "16UC1"
    bad.append(m)
    for b in bad:
        b.header.stamp.sec = rig.stamp_ns // 10**9
    for _ in range(3):
        for b in bad:
            rig.pub.publish(b)
            rig.client.spin_until(lambda: False, 0.02)
    # stamps going backwards: a valid frame with an old stamp resets the stream
    back = make_image_msg(H, W, 1_000_000, FRAME_ID, seed=99)
    rig.client.spin_until(lambda: False, 0.3)
    n0 = len(rig.latency)
    rig.pub.publish(back)
    assert rig.client.spin_until(lambda: any(f["reset"] == "stamp_backwards" for f in rig.frames()[n0:]),
                                 10, lambda: rig.pub.publish(back), 0.3)
    # a fresh stamp afterwards goes on serving
    rig.stamp_ns = good.header.stamp.sec * 10**9
    n1 = len(rig.out["depth"])
    assert rig.spin_until(lambda: len(rig.out["depth"]) >= n1 + 3)
    n2 = len(rig.diag)
    assert rig.spin_until(lambda: len(rig.diag) > n2 + 1, 10)
    st = rig.node_status()
    for reason in ("rejected.bad_step", "rejected.truncated_data", "rejected.bad_size",
                   "rejected.unknown_encoding"):
        assert int(st.get(reason, 0)) >= 1, (reason, st)
    assert int(st["rejected_messages"]) >= 6
    assert int(st["resets.stamp_backwards"]) >= 1
    assert rig.proc.poll() is None


def test_startup_failures_name_the_culprit(domain_id: int, tmp_path: Path) -> None:
    cases = {
        "missing_config.yaml": {"model_config": str(tmp_path / "missing_config.yaml")},
        "no_such.pt": {"checkpoint": str(tmp_path / "no_such.pt")},
        "keyframe_interval": {"model_config": TINY, "keyframe_interval": 0},
        "output_resolution": {"model_config": TINY, "output_resolution": "huge"},
    }
    procs = {k: subprocess.Popen(harness.node_command(p), env=harness.ros_env(domain_id),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k, p in cases.items()}
    deadline = time.monotonic() + 120
    for needle, proc in procs.items():
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        assert proc.returncode == 1, (needle, out.decode()[-2000:])
        assert needle in out.decode(), (needle, out.decode()[-2000:])
