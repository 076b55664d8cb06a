"""Node behaviours by value, through a real node process (and, for inference errors, a node in this
process whose backend fails once):

* depth is published in metres (a hand-pinned head gives a known constant);
* more than 255 classes are published as ``mono16`` ids equal to the model's argmax;
* ``output_resolution`` and ``overlay_alpha`` changed at run time change the next outputs;
* latest-frame dropping is counted: frames in = out + dropped (+ rejected + errors);
* /diagnostics is WARN for untrained weights and ERROR after an inference error;
* after a backend failure the next output equals a fresh stream's (the node restarts the stream).

With ``keyframe_interval: 1`` and ``multi_frame`` every frame is a keyframe without sources, so each
output equals the model applied to that frame alone: the expected values are computed in this
process from the same checkpoint.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")
pytest.importorskip("diagnostic_msgs.msg", reason="diagnostic_msgs not installed")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mtl_perception.imaging import fill_image_msg, image_msg_to_array, make_palette  # noqa: E402
from mtl_perception.model import ModelConfig, build_model  # noqa: E402
from mtl_perception.model.checkpoint import save_model  # noqa: E402
from mtl_perception.pipeline import Pipeline, load_backend  # noqa: E402
from mtl_perception.postprocess import resize_labels  # noqa: E402
from mtl_perception.preprocess import resize_rgb  # noqa: E402
from mtl_perception.scheduler import Decision  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402
from mtl_perception.tools.harness import Client, kv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "model" / "tiny.yaml"
H, W = 96, 160
NODE = "/mtl_perception"
CLASSES = 300
BIAS = 1.5
DEPTH_M = math.log1p(math.exp(BIAS)) + 1e-3  # softplus + 1 mm, by hand: 1.7024 m


def _rgb(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = (np.sin(xx / 5.0 + seed) * 70 + np.cos(yy / 6.0) * 50 + 128)[..., None]
    return np.clip(base + rng.integers(0, 40, (H, W, 3)), 0, 255).astype(np.uint8)


def _checkpoint(path: Path) -> Path:
    """300 classes, depth head pinned to a constant, marked untrained."""
    cfg = ModelConfig.from_yaml(TINY)
    cfg.num_classes = CLASSES
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    last = m.decoders["depth"].head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(BIAS)
    save_model(m, path, meta={"trained": False})
    return path


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.ckpt = _checkpoint(tmp / "c300.pt")
        self.log = tmp / "node.log"
        dom = harness.next_domain_id()
        params = {"checkpoint": str(self.ckpt), "keyframe_interval": 1, "max_frame_gap_s": 0.0, "threads": 1,
                  "backend": "torch", "input_reliability": "reliable", "input_depth": 10,
                  "output_depth": 50, "diagnostics_period_s": 0.2,
                  "executor_threads": 2}  # the non-default executor: every behaviour below holds on it too
        self.proc = harness.start_process(harness.node_command(params, remaps={"image": "/cam/image"}),
                                          dom, self.log)
        self.client = Client(dom, "test_behaviour")
        q = self.client.qos(reliable=True, depth=50)
        self.out = {n: self.client.collect(f"{NODE}/{n}", Image, q) for n in ("semantic", "semantic/color",
                                                                               "depth")}
        self.diag = self.client.collect("/diagnostics", DiagnosticArray)
        self.pub = self.client.publisher("/cam/image", Image, self.client.qos(reliable=True, depth=10))
        self.t_ns = 5 * 10**9
        backend = load_backend(checkpoint=str(self.ckpt), backend="torch", device="cpu", warmup=False).backend
        self.pipeline = Pipeline(backend)

    def msg(self, rgb: np.ndarray) -> Image:
        self.t_ns += 50_000_000
        m = fill_image_msg(Image(), rgb, "rgb8")
        m.header.frame_id = "cam"
        m.header.stamp.sec, m.header.stamp.nanosec = divmod(self.t_ns, 10**9)
        return m

    def by_stamp(self, name: str, m: Image) -> Image | None:
        key = (m.header.stamp.sec, m.header.stamp.nanosec)
        return next((o for o in self.out[name] if (o.header.stamp.sec, o.header.stamp.nanosec) == key), None)

    def send(self, rgb: np.ndarray, names=("semantic", "semantic/color", "depth")) -> dict[str, Image]:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        m = self.msg(rgb)
        self.pub.publish(m)
        ok = self.client.spin_until(lambda: all(self.by_stamp(n, m) is not None for n in names), 60)
        assert ok, f"no outputs for the frame; log:\n{self.log.read_text()[-3000:]}"
        return {n: self.by_stamp(n, m) for n in names}

    def status(self) -> DiagnosticStatus | None:
        for arr in reversed(self.diag):
            for st in arr.status:
                if st.name.startswith(f"{NODE}: "):
                    return st
        return None

    def expected_ids(self, rgb: np.ndarray) -> np.ndarray:
        return self.pipeline.process(rgb, Decision(True, "start")).outputs["semantic"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("behaviour"))
    try:
        assert r.client.spin_until(lambda: r.client.node.count_subscribers("/cam/image") > 0
                                   and r.pub.get_subscription_count() > 0, 90), r.log.read_text()[-3000:]
        r.send(_rgb(0))  # first frame through (start-up, first allocations)
        yield r
    finally:
        r.client.close()
        rc = harness.stop_process(r.proc, signal.SIGTERM)
        assert rc == 0, r.log.read_text()[-3000:]


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_depth_published_in_metres(rig: Rig) -> None:
    out = rig.send(_rgb(1))
    d = image_msg_to_array(out["depth"])
    assert out["depth"].encoding == "32FC1"
    np.testing.assert_allclose(d, DEPTH_M, rtol=1e-5)


def test_mono16_ids_for_more_than_255_classes(rig: Rig) -> None:
    rgb = _rgb(2)
    out = rig.send(rgb)
    assert out["semantic"].encoding == "mono16"
    ids = image_msg_to_array(out["semantic"]).astype(np.int64)
    ref = rig.expected_ids(rgb)
    assert ref.max() > 255  # the case mono8 cannot carry
    assert _agree(ids, ref) > 0.999  # (argmax near-ties may differ between thread counts)


def test_output_resolution_changes_at_run_time(rig: Rig) -> None:
    res = rig.client.set_parameters(NODE, {"output_resolution": "input"})
    assert res[0].successful, res[0].reason
    try:
        rgb = _rgb(3)
        out = rig.send(rgb)
        d = image_msg_to_array(out["depth"])
        assert d.shape == (H, W)
        np.testing.assert_allclose(d, DEPTH_M, rtol=1e-5)
        ids = image_msg_to_array(out["semantic"]).astype(np.int64)
        assert _agree(ids, resize_labels(rig.expected_ids(rgb), (H, W))) > 0.999
    finally:
        res = rig.client.set_parameters(NODE, {"output_resolution": "network"})
    assert res[0].successful
    assert image_msg_to_array(rig.send(_rgb(4))["depth"]).shape == (64, 128)


def test_overlay_alpha_changes_at_run_time(rig: Rig) -> None:
    palette = make_palette(CLASSES).astype(np.float64)
    for alpha in (0.3, 0.0):
        res = rig.client.set_parameters(NODE, {"overlay_alpha": alpha})
        assert res[0].successful, res[0].reason
        rgb = _rgb(5)
        out = rig.send(rgb)
        ids = image_msg_to_array(out["semantic"]).astype(np.int64)
        colour = image_msg_to_array(out["semantic/color"]).astype(np.float64)
        cam = resize_rgb(rgb, (64, 128)).astype(np.float64)
        # alpha is the palette's weight and the camera image gets the rest; 0 means palette only
        expected = palette[ids] * alpha + cam * (1 - alpha) if alpha > 0 else palette[ids]
        # the node resizes the camera image within 2 levels of PIL's resize (test_pipeline_resize.py),
        # weighted 1 - alpha in the blend; + 1 for the blend's rounding
        assert np.abs(colour - expected).max() <= 1.0 + 2 * (1 - alpha), alpha


def test_dropped_frames_are_counted(rig: Rig) -> None:
    def counts() -> dict[str, int]:
        st = rig.status()
        v = kv(st) if st is not None else {}
        keys = ("frames_in", "frames_out", "dropped_frames", "rejected_messages", "inference_errors")
        return {k: int(v.get(k, -1)) for k in keys}

    rig.send(_rgb(6))
    n0 = len(rig.diag)
    assert rig.client.spin_until(lambda: len(rig.diag) > n0 + 1, 20)
    before = counts()
    burst = [rig.msg(_rgb(10 + i)) for i in range(8)]
    for m in burst:  # back to back: the node cannot keep up, its one-slot mailbox drops
        rig.pub.publish(m)

    def settled() -> bool:
        c = counts()
        return (c["frames_in"] == before["frames_in"] + len(burst)
                and c["frames_in"] == c["frames_out"] + c["dropped_frames"] + c["rejected_messages"]
                + c["inference_errors"])

    assert rig.client.spin_until(settled, 60), (before, counts())
    after = counts()
    assert after["dropped_frames"] > before["dropped_frames"]
    assert rig.by_stamp("depth", burst[-1]) is not None  # the newest frame is never the one dropped


def test_diagnostics_warn_for_untrained_weights(rig: Rig) -> None:
    n0 = len(rig.diag)
    assert rig.client.spin_until(lambda: len(rig.diag) > n0 + 2, 20,
                                 lambda: rig.pub.publish(rig.msg(_rgb(7))), 0.2)
    st = rig.status()
    assert st.level == DiagnosticStatus.WARN, (st.level, st.message)
    assert "UNTRAINED" in st.message
    assert kv(st)["inference_errors"] == "0"


def test_executor_threads_chooses_the_executor(rig: Rig) -> None:
    assert "executor: MultiThreadedExecutor (executor_threads: 2)" in rig.log.read_text()


# -- inference errors: a node in this process whose backend fails once ---------------------------------
def test_backend_failure_restarts_stream_and_reports_error(tmp_path: Path) -> None:
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from mtl_perception.backends.torch_backend import TorchBackend
    from mtl_perception.node import PerceptionNode
    from mtl_perception.pipeline import LoadedBackend

    class FailOnce(TorchBackend):
        calls = 0

        def step(self, image, state, is_keyframe):  # noqa: ANN001, ANN201
            FailOnce.calls += 1
            if FailOnce.calls == 4:
                raise RuntimeError("device lost")
            return super().step(image, state, is_keyframe)

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_yaml(TINY)).eval()
    ref = Pipeline(TorchBackend(model, "cpu"))
    dom = harness.next_domain_id()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=dom)
    node = PerceptionNode(LoadedBackend(FailOnce(model, "cpu"), True, 8, ()), context=ctx,
                          parameter_overrides=[Parameter("keyframe_interval", value=3),
                                               Parameter("max_frame_gap_s", value=0.0),
                                               Parameter("input_reliability", value="reliable"),
                                               Parameter("input_depth", value=10),
                                               Parameter("diagnostics_period_s", value=0.2)])
    ex = MultiThreadedExecutor(num_threads=4, context=ctx)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    client = Client(dom, "test_failure")
    try:
        depth = client.collect(f"{NODE}/depth", Image, client.qos(reliable=True, depth=50))
        diag = client.collect("/diagnostics", DiagnosticArray)
        pub = client.publisher("/image", Image, client.qos(reliable=True, depth=10))
        assert client.spin_until(lambda: client.node.count_subscribers("/image") > 0
                                 and pub.get_subscription_count() > 0, 60)
        stamp = [10**10]

        def send(rgb: np.ndarray, expect_output: bool = True) -> np.ndarray | None:
            stamp[0] += 50_000_000
            m = fill_image_msg(Image(), rgb, "rgb8")
            m.header.frame_id = "cam"
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp[0], 10**9)
            key = divmod(stamp[0], 10**9)
            n_err = node.errors
            pub.publish(m)

            def hit() -> Image | None:
                return next((o for o in depth if (o.header.stamp.sec, o.header.stamp.nanosec) == key), None)

            if expect_output:
                assert client.spin_until(lambda: hit() is not None, 60)
                return image_msg_to_array(hit())
            assert client.spin_until(lambda: node.errors > n_err, 60)
            return None

        for i in range(3):  # key, non-key, non-key
            send(_rgb(20 + i))
        assert send(_rgb(23), expect_output=False) is None  # the 4th step raises
        x = _rgb(24)
        got = send(x)  # a non-keyframe for the scheduler: the node must restart the stream on it
        fresh = ref.process(x, Decision(True, "start")).outputs["depth"]
        np.testing.assert_allclose(got, fresh, rtol=1e-4, atol=1e-4)

        def error_status() -> bool:
            sts = [s for a in diag for s in a.status if s.name.startswith(f"{NODE}: ")]
            return bool(sts) and sts[-1].level == DiagnosticStatus.ERROR

        assert client.spin_until(error_status, 20)
        st = [s for a in diag for s in a.status if s.name.startswith(f"{NODE}: ")][-1]
        assert "1 inference errors" in st.message and "device lost" in kv(st)["last_error"]
    finally:
        client.close()
        ex.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spin.join(5)
