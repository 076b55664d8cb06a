"""Two namespaced instances side by side (the multi-camera launch, without launch): one on raw
images at network resolution, one on compressed images with camera_info at input resolution."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ros-rclpy wheel) not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs (ros-sensor-msgs wheel) not installed")

from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from mtl_perception.imaging import encode_compressed, image_msg_to_array  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402
from mtl_perception.tools.harness import Client, make_image_msg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = str(ROOT / "config/perception.yaml")
TINY = str(ROOT / "config/model/tiny.yaml")


def test_two_namespaced_instances(domain_id: int, tmp_path: Path) -> None:
    common = {"model_config": TINY, "threads": 1, "backend": "torch"}
    a = harness.start_process(harness.node_command(common, namespace="/cam_a", params_file=PARAMS_FILE,
                                                   remaps={"image": "/cam_a/image_raw"}),
                              domain_id, tmp_path / "a.log")
    b = harness.start_process(harness.node_command(
        {**common, "backend": "onnxruntime", "cache_dir": str(tmp_path / "cache"),
         "use_compressed": True, "use_camera_info": True, "output_resolution": "input",
         "overlay_alpha": 0.5, "keyframe_interval": 2},
        namespace="/cam_b", name="perception_b", params_file=PARAMS_FILE,
        remaps={"image": "/cam_b/image_raw", "camera_info": "/cam_b/camera_info"}),
        domain_id, tmp_path / "b.log")
    client = Client(domain_id, "test_multi")
    try:
        be = client.qos(reliable=False, depth=1)
        pub_a = client.publisher("/cam_a/image_raw", Image, be)
        pub_b = client.publisher("/cam_b/image_raw/compressed", CompressedImage, be)
        pub_info = client.publisher("/cam_b/camera_info", CameraInfo, be)
        out_a = client.collect("/cam_a/mtl_perception/depth", Image)
        out_b = client.collect("/cam_b/perception_b/depth", Image)
        col_b = client.collect("/cam_b/perception_b/semantic/color", Image)
        info_b = client.collect("/cam_b/perception_b/camera_info", CameraInfo)
        state = {"t": 5 * 10**9}

        def tick() -> None:
            state["t"] += 10**8
            ma = make_image_msg(96, 160, state["t"], "cam_a_optical", encoding="bgr8", seed=1)
            pub_a.publish(ma)
            rgb = image_msg_to_array(make_image_msg(96, 160, 0, seed=2))
            mb = CompressedImage(format="jpeg", data=encode_compressed(rgb))
            mb.header.frame_id = "cam_b_optical"
            mb.header.stamp.sec, mb.header.stamp.nanosec = divmod(state["t"], 10**9)
            pub_b.publish(mb)
            info = CameraInfo(width=160, height=96, k=[100.0, 0, 80, 0, 100.0, 48, 0, 0, 1],
                              p=[100.0, 0, 80, 0, 0, 100.0, 48, 0, 0, 0, 1, 0])
            info.header = mb.header
            pub_info.publish(info)

        # A deadline, not a speed check: node b exports its ONNX graph before it logs a line, which
        # takes minutes on a loaded 2-core machine.
        ok = client.spin_until(lambda: len(out_a) >= 2 and len(out_b) >= 2 and col_b and info_b, 300, tick)
        assert ok, ((tmp_path / "a.log").read_text()[-2000:], (tmp_path / "b.log").read_text()[-2000:])
        assert out_a[-1].header.frame_id == "cam_a_optical"
        assert (out_a[-1].height, out_a[-1].width) == (64, 128)  # network resolution
        assert out_b[-1].header.frame_id == "cam_b_optical"
        assert (out_b[-1].height, out_b[-1].width) == (96, 160)  # input resolution
        assert np.isfinite(image_msg_to_array(out_b[-1])).all()
        assert col_b[-1].encoding == "rgb8" and (col_b[-1].height, col_b[-1].width) == (96, 160)
        info = info_b[-1]
        assert info.header.frame_id == "cam_b_optical" and (info.width, info.height) == (160, 96)
        assert {(m.header.stamp.sec, m.header.stamp.nanosec) for m in info_b} & {
            (m.header.stamp.sec, m.header.stamp.nanosec) for m in out_b}
        # instance b really runs on ONNX Runtime, with its graphs exported into its own cache
        assert "-> onnxruntime on cpu" in (tmp_path / "b.log").read_text()
        assert list((tmp_path / "cache").glob("*.onnx"))
    finally:
        client.close()
        rcs = (harness.stop_process(a, signal.SIGINT, timeout=60),
               harness.stop_process(b, signal.SIGTERM, timeout=60))
    assert rcs == (0, 0)


def test_scale_camera_info() -> None:
    from mtl_perception.node_publish import scale_camera_info

    info = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 400.0, 240, 0, 0, 1],
                      p=[500.0, 0, 320, 10.0, 0, 400.0, 240, 0, 0, 0, 1, 0])
    out = scale_camera_info(info, 240, 320)
    assert (out.width, out.height) == (320, 240)
    np.testing.assert_allclose(out.k, [250, 0, 160, 0, 200, 120, 0, 0, 1])
    np.testing.assert_allclose(out.p, [250, 0, 160, 5, 0, 200, 120, 0, 0, 0, 1, 0])
    assert info.width == 640  # the input is not modified
