"""rosbag2 I/O: write a generated clip as a bag, read an image topic back as RGB frames.

Topics written (all stamped with the frame time, frame_id `camera_optical`):
    /camera/image_raw     sensor_msgs/msg/Image rgb8      - what the node's replay tool plays
    /camera/camera_info   sensor_msgs/msg/CameraInfo
    /labels/semantic      sensor_msgs/msg/Image mono8     - class ids, 255 = ignore
    /labels/depth         sensor_msgs/msg/Image 32FC1     - metres, 0 = invalid
    /labels/normals       sensor_msgs/msg/Image 32FC3     - optical frame, 0 = invalid
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mtl_perception.tools.bagio import typestore

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
LABEL_TOPICS = {"semantic": "/labels/semantic", "depth": "/labels/depth", "normals": "/labels/normals"}
FRAME_ID = "camera_optical"


def write_clip_bag(
    path: str | Path,
    rgb: np.ndarray,
    semantic: np.ndarray,
    depth: np.ndarray,
    normals: np.ndarray,
    K: np.ndarray,  # noqa: N803
    dt: float = 0.1,
) -> Path:
    """Write (T,H,W,3) float rgb and per-frame labels as a rosbag2 (sqlite3) folder at `path`."""
    from rosbags.rosbag2 import Writer

    ts = typestore()
    Image = ts.types["sensor_msgs/msg/Image"]
    CameraInfo = ts.types["sensor_msgs/msg/CameraInfo"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    RoI = ts.types["sensor_msgs/msg/RegionOfInterest"]
    T, H, W = semantic.shape
    path = Path(path)

    def image(header, arr: np.ndarray, encoding: str):
        arr = np.ascontiguousarray(arr)
        step = arr.strides[0]
        return Image(
            header=header,
            height=H,
            width=W,
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=arr.reshape(-1).view(np.uint8),
        )

    with Writer(path, version=8) as writer:
        conns = {
            "image": writer.add_connection(IMAGE_TOPIC, Image.__msgtype__, typestore=ts),
            "info": writer.add_connection(INFO_TOPIC, CameraInfo.__msgtype__, typestore=ts),
            **{k: writer.add_connection(v, Image.__msgtype__, typestore=ts) for k, v in LABEL_TOPICS.items()},
        }
        for t in range(T):
            ns = int(round(t * dt * 1e9)) + 1_000_000_000
            header = Header(
                stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=FRAME_ID
            )
            u8 = np.round(np.clip(rgb[t], 0, 1) * 255).astype(np.uint8)
            msgs = {
                "image": image(header, u8, "rgb8"),
                "semantic": image(header, semantic[t].astype(np.uint8), "mono8"),
                "depth": image(header, depth[t].astype("<f4"), "32FC1"),
                "normals": image(header, normals[t].astype("<f4"), "32FC3"),
                "info": CameraInfo(
                    header=header,
                    height=H,
                    width=W,
                    distortion_model="plumb_bob",
                    d=np.zeros(5),
                    k=np.asarray(K, np.float64).reshape(9),
                    r=np.eye(3).reshape(9),
                    p=np.hstack([np.asarray(K, np.float64), np.zeros((3, 1))]).reshape(12),
                    binning_x=0,
                    binning_y=0,
                    roi=RoI(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
                ),
            }
            for key, msg in msgs.items():
                writer.write(conns[key], ns, ts.serialize_cdr(msg, msg.__msgtype__))
    return path


def iter_bag_images(path: str | Path, topic: str = IMAGE_TOPIC) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (timestamp_ns, (H,W,3) uint8 RGB) for every Image or CompressedImage on `topic` of a
    rosbag1/rosbag2, through the node tools' bag reader and image decoding (one implementation)."""
    from mtl_perception.imaging import compressed_to_rgb, image_msg_to_rgb
    from mtl_perception.tools.bagio import read_bag

    for m in read_bag(path, topic):
        msg = m.deserialize()
        rgb = compressed_to_rgb(msg.format, msg.data) if hasattr(msg, "format") else image_msg_to_rgb(msg)
        yield m.timestamp_ns, rgb
