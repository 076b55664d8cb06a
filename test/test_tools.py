"""bag-from-video, eval-bag and replay as real processes / entry points on tiny data."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="rosbags not installed (pip install rosbags)")
av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")

from mtl_perception.tools import bag_from_video, eval_bag  # noqa: E402
from mtl_perception.tools.bagio import read_bag  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "config/model/tiny.yaml")
FPS = 10
N = 12


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A 12-frame 96x160 MPEG-4 clip written with PyAV."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        for i in range(N):
            img = np.zeros((96, 160, 3), np.uint8)
            img[:, :, 0] = (np.arange(160) * 1.5 + i * 10).astype(np.uint8)
            img[20:60, 10 + i * 5: 40 + i * 5] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def bag(video: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bag") / "clip_bag"
    rc = subprocess.run([str(Path(sys.executable).parent / "mtl-perception-bag-from-video"), str(video),
                         str(out), "--topic", "/cam/image_raw", "--frame-id", "cam_optical",
                         "--start-time", "1000"], capture_output=True, text=True, timeout=120)
    assert rc.returncode == 0, rc.stderr
    return out


@pytest.mark.parametrize("storage", ["sqlite3", "mcap", "ros1"])
def test_bag_from_video_storages(video: Path, tmp_path: Path, storage: str) -> None:
    out = tmp_path / ("clip.bag" if storage == "ros1" else "clip")
    n = bag_from_video.convert(video, out, "/cam/image_raw", "cam_optical", width=80, storage=storage,
                               encoding="bgr8", start_time_s=1000.0)
    assert n == N
    msgs = [m.deserialize() for m in read_bag(out, "/cam/image_raw")]
    assert len(msgs) == N
    m = msgs[0]
    assert (m.height, m.width, m.encoding, m.step) == (48, 80, "bgr8", 240)
    assert m.header.frame_id == "cam_optical" and m.header.stamp.sec == 1000
    stamps = [x.header.stamp.sec + x.header.stamp.nanosec * 1e-9 for x in msgs]
    assert np.allclose(np.diff(stamps), 1 / FPS, atol=1e-3)
    with pytest.raises(FileExistsError):
        bag_from_video.convert(video, out, storage=storage)


def test_eval_bag_writes_outputs_and_report(bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc = eval_bag.main([str(bag), "--topic", "/cam/image_raw", "--out", str(out), "--model-config", TINY,
                        "--keyframe-interval", "3", "--threads", "1", "--video", "--device", "cpu"])
    assert rc == 0
    assert len(list((out / "depth").glob("*.npy"))) == N
    depth = np.load(out / "depth" / "000000.npy")
    assert depth.shape == (96, 160) and np.isfinite(depth).all()  # output_resolution: input
    assert len(list((out / "semantic").glob("*.png"))) == N
    rows = list(csv.DictReader(open(out / "frames.csv")))
    assert [r["keyframe"] for r in rows] == ["1" if i % 3 == 0 else "0" for i in range(N)]
    assert "keyframe" in (out / "latency.txt").read_text()
    assert (out / "outputs.mp4").stat().st_size > 0


def test_eval_bag_errors_name_the_problem(bag: Path, tmp_path: Path, capsys) -> None:
    assert eval_bag.main([str(bag), "--topic", "/nope", "--out", str(tmp_path), "--model-config", TINY]) == 1
    assert "/cam/image_raw" in capsys.readouterr().err  # lists the topics the bag has
    assert eval_bag.main([str(tmp_path / "missing"), "--topic", "/x", "--out", str(tmp_path),
                          "--model-config", TINY]) == 1
    assert "missing" in capsys.readouterr().err


# Deadlines, not timing assertions: on a loaded 2-core machine a node takes tens of seconds to
# start (imports, warm-up) and to stop, so every wait is generous and each process gets a minute
# to exit before it would be killed.
DEADLINE_S = 180.0


def test_replay_into_running_node(bag: Path, tmp_path: Path, domain_id: int) -> None:
    pytest.importorskip("rclpy", reason="rclpy not installed")
    from sensor_msgs.msg import Image

    from mtl_perception.tools import harness

    node = harness.start_process(harness.node_command({"model_config": TINY, "threads": 1},
                                                      remaps={"image": "/replayed"}),
                                 domain_id, tmp_path / "node.log")
    client = harness.Client(domain_id, "test_replay")
    depth = client.collect("/mtl_perception/depth", Image)
    replay = None
    try:
        stamps = {(m.deserialize().header.stamp.sec, m.deserialize().header.stamp.nanosec)
                  for m in read_bag(bag, "/cam/image_raw")}
        # wait until the node subscribes, then replay (loop, so a late start still sees frames)
        assert client.spin_until(lambda: client.node.count_subscribers("/replayed") > 0, DEADLINE_S), \
            (tmp_path / "node.log").read_text()
        replay = harness.start_process([harness.console_script("mtl-perception-replay"), str(bag), "--topic",
                                        "/cam/image_raw", "--loop", "--rate", "2", "--ros-args", "-r",
                                        "/cam/image_raw:=/replayed"], domain_id, tmp_path / "replay.log")
        assert client.spin_until(lambda: len(depth) >= 5, DEADLINE_S), (tmp_path / "replay.log").read_text()
        assert all((m.header.stamp.sec, m.header.stamp.nanosec) in stamps for m in depth)
        assert depth[0].header.frame_id == "cam_optical"
    finally:
        client.close()
        # Stop both before asserting, so a failed assertion never leaves the node running.
        rc_replay = harness.stop_process(replay, timeout=60) if replay is not None else 0
        rc_node = harness.stop_process(node, signal.SIGINT, timeout=60)
        assert rc_replay == 0, (tmp_path / "replay.log").read_text()
        assert rc_node == 0, (tmp_path / "node.log").read_text()
