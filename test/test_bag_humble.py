"""bag-from-video --rosbag2-format humble, through the console script: the metadata Humble's
rosbag2 parses (version 8, offered_qos_profiles a YAML *string*, no keys newer than Humble), read
back with rosbags' own Reader, carrying the same messages as a current (version 9) bag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("rosbags", reason="rosbags not installed (pip install rosbags)")
av = pytest.importorskip("av", reason="PyAV not installed (pip install av)")

from rosbags.rosbag2 import Reader  # noqa: E402

N, FPS = 6, 10
SCRIPT = str(Path(sys.executable).parent / "mtl-perception-bag-from-video")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(N):
            img = np.full((48, 64, 3), 20 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _convert(video: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, str(video), str(out), "--start-time", "1000", *extra],
                          capture_output=True, text=True, timeout=120)


def _messages(bag: Path) -> list[tuple[int, bytes]]:
    with Reader(bag) as r:
        return [(t, bytes(raw)) for _c, t, raw in r.messages()]


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_humble_bag_metadata_and_read_back(video: Path, tmp_path: Path, storage: str) -> None:
    humble, current = tmp_path / "humble", tmp_path / "current"
    res = _convert(video, humble, "--storage", storage, "--rosbag2-format", "humble")
    assert res.returncode == 0, res.stderr
    assert _convert(video, current, "--storage", storage).returncode == 0

    info = yaml.safe_load((humble / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["version"] == 8 and info["storage_identifier"] == storage
    assert "custom_data" not in info and "ros_distro" not in info
    (topic,) = info["topics_with_message_count"]
    meta = topic["topic_metadata"]
    assert "type_description_hash" not in meta
    qos = meta["offered_qos_profiles"]
    assert isinstance(qos, str), "Humble's parser reads offered_qos_profiles as a string"
    (profile,) = yaml.safe_load(qos)
    assert (profile["reliability"], profile["durability"], profile["history"]) == (1, 2, 1)  # reliable
    assert topic["message_count"] == N and info["message_count"] == N
    # the current format keeps the list form: the option really changes the output
    cur = yaml.safe_load((current / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert cur["version"] == 9

    got, ref = _messages(humble), _messages(current)
    assert [t for t, _ in got] == [1000 * 10**9 + i * 10**9 // FPS for i in range(N)]
    assert got == ref  # byte-identical messages, only the metadata differs


def test_humble_format_with_ros1_storage_is_a_usage_error(video: Path, tmp_path: Path) -> None:
    res = _convert(video, tmp_path / "x.bag", "--storage", "ros1", "--rosbag2-format", "humble")
    assert res.returncode == 2 and "--rosbag2-format" in res.stderr
    assert "Traceback" not in res.stderr
