"""``mtl-perception-bag-from-video VIDEO BAG``: a video file (PyAV) -> a bag of sensor_msgs/Image.

Header stamps (and bag times) are ``--start-time`` (default: now) plus each frame's presentation
time, so a replay has the video's real timing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .bagio import read_video, write_image_bag

# current: rosbag2 metadata version 9 (Jazzy, Kilted); humble: version 8 that Humble's rosbag2 reads
ROSBAG2_FORMATS = ("current", "humble")


def convert(video: str | Path, bag: str | Path, topic: str = "/camera/image_raw", frame_id: str = "camera",
            width: int | None = None, max_frames: int | None = None, storage: str = "sqlite3",
            encoding: str = "rgb8", start_time_s: float | None = None, overwrite: bool = False,
            rosbag2_format: str = "current") -> int:
    """Convert; returns the number of frames written."""
    bag = Path(bag)
    if bag.exists():
        if not overwrite:
            raise FileExistsError(f"bag {str(bag)!r} exists (use --overwrite)")
        shutil.rmtree(bag) if bag.is_dir() else bag.unlink()
    start_ns = int((time.time() if start_time_s is None else start_time_s) * 1e9)

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        for t, rgb in read_video(video, width, max_frames):
            yield start_ns + int(round(t * 1e9)), rgb

    if rosbag2_format not in ROSBAG2_FORMATS:
        raise ValueError(f"--rosbag2-format: {rosbag2_format!r} not one of {list(ROSBAG2_FORMATS)}")
    return write_image_bag(bag, frames(), topic, frame_id, storage, encoding, ros1=storage == "ros1",
                           humble=rosbag2_format == "humble")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mtl-perception-bag-from-video", description=__doc__.split("\n\n")[0])
    ap.add_argument("video", help="input video file (anything FFmpeg decodes)")
    ap.add_argument("bag", help="output rosbag2 folder (or .bag file with --storage ros1)")
    ap.add_argument("--topic", default="/camera/image_raw")
    ap.add_argument("--frame-id", default="camera")
    ap.add_argument("--width", type=int, default=None, help="rescale to this width (keeps aspect ratio)")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--storage", choices=("sqlite3", "mcap", "ros1"), default="sqlite3")
    ap.add_argument("--encoding", choices=("rgb8", "bgr8"), default="rgb8")
    ap.add_argument("--start-time", type=float, default=None,
                    help="stamp of frame 0, epoch seconds (default now)")
    ap.add_argument("--rosbag2-format", choices=ROSBAG2_FORMATS, default="current",
                    help="current: metadata version 9 (Jazzy and newer); humble: version 8 with QoS "
                         "as a string, readable by ROS 2 Humble's rosbag2 (sqlite3 or mcap)")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    if a.storage == "ros1" and a.rosbag2_format != "current":
        ap.error("--rosbag2-format applies to rosbag2 storages (sqlite3, mcap), not ros1")
    try:
        n = convert(a.video, a.bag, a.topic, a.frame_id, a.width, a.max_frames, a.storage, a.encoding,
                    a.start_time, a.overwrite, a.rosbag2_format)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"mtl-perception-bag-from-video: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} frames to {a.bag} ({a.storage}, topic {a.topic})")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
