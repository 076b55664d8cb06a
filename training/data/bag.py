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

IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
LABEL_TOPICS = {"semantic": "/labels/semantic", "depth": "/labels/depth", "normals": "/labels/normals"}
FRAME_ID = "camera_optical"


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


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

    ts = _typestore()
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


def decode_image(msg: object) -> np.ndarray:
    """sensor_msgs Image / CompressedImage -> (H,W,3) uint8 RGB (or (H,W) / float for label encodings)."""
    if hasattr(msg, "format"):  # CompressedImage
        import io

        from PIL import Image as PILImage

        with PILImage.open(io.BytesIO(bytes(msg.data))) as im:
            return np.array(im.convert("RGB"))
    enc = msg.encoding.lower()
    H, W, step = msg.height, msg.width, msg.step
    raw = np.asarray(msg.data, dtype=np.uint8).reshape(H, step)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8uc1": 1, "8uc3": 3}
    if enc in channels:
        c = channels[enc]
        arr = raw[:, : W * c].reshape(H, W, c)
        if enc.startswith("bgr"):
            arr = arr[..., [2, 1, 0]]
        elif enc in ("mono8", "8uc1"):
            return arr[..., 0].copy()
        return np.ascontiguousarray(arr[..., :3])
    floats = {"32fc1": 1, "32fc3": 3}
    if enc in floats:
        dt = np.dtype(">f4" if msg.is_bigendian else "<f4")
        arr = raw[:, : W * 4 * floats[enc]].copy().view(dt).reshape(H, W, floats[enc]).astype(np.float32)
        return arr[..., 0] if floats[enc] == 1 else arr
    raise ValueError(f"unsupported image encoding {msg.encoding!r}")


def iter_bag_images(path: str | Path, topic: str = IMAGE_TOPIC) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (timestamp_ns, decoded image) for every message on `topic` of a rosbag1/rosbag2."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    with AnyReader([path], default_typestore=_typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            topics = sorted({c.topic for c in reader.connections})
            raise KeyError(f"{path}: no topic {topic!r}; topics: {topics}")
        for conn, stamp, raw in reader.messages(connections=conns):
            yield stamp, decode_image(reader.deserialize(raw, conn.msgtype))
