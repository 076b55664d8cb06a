"""ROS conventions of the node, through the real process started the way the launch file starts it
(launch_args helpers, the shipped params file, no model parameter, from another directory):
the shipped trained model by default, no inference until an output has a subscriber, latched class
names for late joiners, camera_info republished by default from the image's sibling topic."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheel) not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs (ros-sensor-msgs wheel) not installed")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import GetParameters  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from mtl_perception.launch_args import node_parameters, remappings  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402
from mtl_perception.tools.harness import Client, kv, make_image_msg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models/mila_street_lite.pt"
IMAGE = "/front/image_raw"
NODE = "/front/mtl_perception"
H, W = 96, 160


def _shipped_class_names() -> list[str]:
    # read straight from the file, independently of the node's loading code
    return list(torch.load(SHIPPED, map_location="cpu", weights_only=True)["model_config"]["class_names"])


class Rig:
    def __init__(self, domain_id: int, tmp: Path) -> None:
        # what `ros2 launch mtl_perception camera.launch.py image:=/front/image_raw namespace:=front
        # threads:=1` passes: the params file + only the given overrides, camera_info derived
        params_file, overrides = node_parameters(str(ROOT / "config/perception.yaml"), threads="1")
        cmd = harness.node_command(overrides, namespace="/front", params_file=params_file,
                                   remaps=dict(remappings(IMAGE)))
        self.log = tmp / "node.log"
        self.proc = harness.start_process(cmd, domain_id, self.log, cwd=tmp)  # not the checkout
        self.domain_id = domain_id
        self.client = Client(domain_id, "conventions")
        self.pub = self.client.publisher(IMAGE, Image, self.client.qos(reliable=False, depth=1))
        self.info_pub = self.client.publisher("/front/camera_info", CameraInfo, self.client.qos(depth=1))
        self.diag = self.client.collect("/diagnostics", DiagnosticArray)
        self.stamp_ns = 10**9
        self.sent: set[tuple[int, int]] = set()

    def tick(self) -> None:
        self.stamp_ns += 50_000_000
        msg = make_image_msg(H, W, self.stamp_ns, "front_optical", seed=self.stamp_ns % 7)
        self.sent.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
        self.pub.publish(msg)
        info = CameraInfo(width=W, height=H, k=[100.0, 0, 80, 0, 100.0, 48, 0, 0, 1],
                          p=[100.0, 0, 80, 0, 0, 100.0, 48, 0, 0, 0, 1, 0])
        info.header = msg.header
        self.info_pub.publish(info)

    def spin(self, pred, timeout: float = 30.0) -> bool:
        assert self.proc.poll() is None, f"node exited: {self.log.read_text()[-2000:]}"
        return self.client.spin_until(pred, timeout, self.tick, 0.1)

    def status(self, after: int = 0) -> dict[str, str] | None:
        for arr in reversed(self.diag[after:]):
            for st in arr.status:
                if st.name.startswith(f"{NODE}: "):
                    return {**kv(st), "_message": st.message}
        return None

    def fresh_status(self) -> dict[str, str]:
        """A /diagnostics status published after this call (so it reflects what happened before)."""
        n = len(self.diag)
        assert self.spin(lambda: self.status(n) is not None and len(self.diag) > n + 1, 15)
        return self.status(n)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(harness.next_domain_id(), tmp_path_factory.mktemp("conventions"))
    try:
        assert r.spin(lambda: r.status() is not None, 90), r.log.read_text()[-3000:]
        yield r
    finally:
        r.client.close()
        assert harness.stop_process(r.proc, signal.SIGTERM) == 0, r.log.read_text()[-3000:]


def test_no_inference_until_an_output_has_a_subscriber(rig: Rig) -> None:
    # images flow for a few diagnostics periods, but nobody listens to an output: nothing is read
    st = rig.fresh_status()
    st = rig.fresh_status()
    assert st["inference_active"] == "false" and st["output_subscribers"] == "0", st
    assert st["frames_in"] == "0" and st["frames_out"] == "0" and st["activations"] == "0", st
    assert st["_message"].startswith("idle")
    # the first subscriber starts it
    got: list = []
    sub = rig.client.node.create_subscription(Image, f"{NODE}/depth", got.append, rig.client.qos())
    assert rig.spin(lambda: len(got) >= 3), rig.log.read_text()[-2000:]
    st = rig.fresh_status()
    assert st["inference_active"] == "true" and st["activations"] == "1" and int(st["frames_out"]) >= 3
    # the last one leaving stops it: frames_in stands still while images keep coming
    rig.client.node.destroy_subscription(sub)
    n = len(rig.diag)
    assert rig.spin(lambda: (rig.status(n) or {}).get("inference_active") == "false", 15)
    frozen = rig.fresh_status()["frames_in"]
    st = rig.fresh_status()
    assert st["frames_in"] == frozen and st["inference_active"] == "false", st
    # and a new subscriber restarts it (counted)
    got2 = rig.client.collect(f"{NODE}/semantic", Image)
    assert rig.spin(lambda: len(got2) >= 2)
    assert rig.fresh_status()["activations"] == "2"


def test_default_is_the_shipped_trained_model(rig: Rig) -> None:
    st = rig.fresh_status()
    assert st["weights"] == "trained", st
    assert "UNTRAINED" not in rig.log.read_text()
    assert f"/models/{SHIPPED.name}'" in rig.log.read_text()  # the log names the file it loaded


def test_class_names_latched_for_late_joiners(rig: Rig) -> None:
    names = _shipped_class_names()
    # a participant that appears long after the node published (transient-local durability)
    late = Client(rig.domain_id, "late_joiner")
    try:
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        got = late.collect(f"{NODE}/class_names", String, latched)
        assert late.spin_until(lambda: len(got) >= 1, 20)
        late.spin_until(lambda: False, 0.5)
        assert len(got) == 1  # published once, delivered from the writer's history
        info = json.loads(got[0].data)
        assert [c["name"] for c in info["classes"]] == names
        assert [c["id"] for c in info["classes"]] == list(range(len(names)))
        assert info["semantic_encoding"] == "mono8"
        # Cityscapes colours of road, sidewalk, building (the palette ~/semantic/color uses)
        assert [c["color"] for c in info["classes"][:3]] == [[128, 64, 128], [244, 35, 232], [70, 70, 70]]
        # the same table as read-only parameters
        req = GetParameters.Request(names=["class_names", "class_palette"])
        values = late.call(GetParameters, f"{NODE}/get_parameters", req).values
        assert list(values[0].string_array_value) == names
        assert list(values[1].integer_array_value)[:6] == [128, 64, 128, 244, 35, 232]
        res = late.set_parameters(NODE, {"class_names": ["x"] * len(names)})
        assert not res[0].successful  # read-only
    finally:
        late.close()


def test_camera_info_republished_by_default_from_sibling_topic(rig: Rig) -> None:
    infos = rig.client.collect(f"{NODE}/camera_info", CameraInfo)
    assert rig.spin(lambda: len(infos) >= 2), rig.log.read_text()[-2000:]
    info = infos[-1]
    assert (info.header.stamp.sec, info.header.stamp.nanosec) in rig.sent
    # scaled from 160x96 to the shipped model's network size 384x192: fx, cx by 2.4; fy, cy by 2
    assert (info.width, info.height) == (384, 192)
    assert list(info.k) == pytest.approx([240.0, 0, 192.0, 0, 200.0, 96.0, 0, 0, 1], abs=1e-3)


def test_frames_lost_before_the_callback_are_counted(domain_id: int, tmp_path: Path, monkeypatch) -> None:
    """UDP-only transport and a burst of 2.8 MB best-effort frames: the socket buffers cannot hold
    them, DDS loses most, and the message-lost event must count them. Frames published after the
    burst reveal the gaps, so every frame either reached the callback or was reported lost.
    This node runs on the code's defaults (no params file): camera_info is republished too."""
    monkeypatch.setitem(harness.ROS_ENV, "FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")  # the node process
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")  # this process' participant
    node = harness.start_process(harness.node_command({"threads": 1, "diagnostics_period_s": 0.5},
                                                      remaps={"image": "/burst/image"}),
                                 domain_id, tmp_path / "node.log")
    client = Client(domain_id, "burst")
    try:
        diag = client.collect("/diagnostics", DiagnosticArray)
        lat = client.collect("/mtl_perception/latency", DiagnosticArray)
        pub = client.publisher("/burst/image", Image, client.qos(reliable=False, depth=1))
        info_pub = client.publisher("/camera_info", CameraInfo, client.qos(depth=1))
        infos = client.collect("/mtl_perception/camera_info", CameraInfo)
        small = make_image_msg(48, 64, 10**9)

        def status() -> dict[str, str]:
            return [kv(s) for a in diag for s in a.status if s.name == "/mtl_perception: perception"][-1]

        def warm() -> None:
            pub.publish(small)
            info_pub.publish(CameraInfo(width=64, height=48))

        assert client.spin_until(lambda: len(lat) >= 2 and len(infos) >= 1, 90, warm, 0.1), \
            (tmp_path / "node.log").read_text()[-2000:]
        client.spin_until(lambda: False, 1.2)
        base = status()
        big = make_image_msg(720, 1280, 2 * 10**9)
        for i in range(20):
            big.header.stamp.nanosec = i
            pub.publish(big)
        for _ in range(5):
            client.spin_until(lambda: False, 0.2)
            pub.publish(small)
        client.spin_until(lambda: False, 2.0)
        last = status()
        got = int(last["frames_in"]) - int(base["frames_in"])
        lost = int(last["lost_frames"]) - int(base["lost_frames"])
        assert lost >= 1, (got, lost)
        # nothing counted twice (exactly 25 = got + lost in every run here; a frame replaced in the
        # reader's keep-last-1 history before the callback would be in neither count)
        assert got + lost <= 25 and got >= 1, (got, lost)
        assert f"{last['lost_frames']} lost" in next(s.message for a in reversed(diag) for s in a.status
                                      if s.name == "/mtl_perception: perception")
    finally:
        client.close()
        assert harness.stop_process(node, signal.SIGINT) == 0
