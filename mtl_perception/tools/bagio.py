"""Bag and video I/O shared by the tools (rosbags for bags, PyAV for video; no ROS install).

Reading goes through ``rosbags.highlevel.AnyReader``, so rosbag2 (sqlite3 and mcap) and ROS 1
bags all work; messages come back as rosbags dataclasses with the same field names as rclpy's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"


def typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


@dataclass
class BagMessage:
    timestamp_ns: int  # the bag's receive time
    topic: str
    msgtype: str
    raw: bytes  # as stored (CDR for rosbag2, ROS 1 wire format for ROS 1 bags)
    is_cdr: bool
    _reader: Any

    def deserialize(self) -> Any:
        return self._reader.deserialize(self.raw, self.msgtype)


class BagError(ValueError):
    """A bag that cannot be opened or read to its end; the message names the bag and the problem."""


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _read_errors() -> tuple[type[BaseException], ...]:
    """What rosbags and its storage back-ends raise on a damaged bag (truncated or malformed
    sqlite3, empty or corrupt mcap, bad metadata.yaml), all turned into one :class:`BagError`."""
    import sqlite3
    import struct

    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error

    errors: tuple[type[BaseException], ...] = (AnyReaderError, Reader1Error, Reader2Error, sqlite3.Error,
                                               struct.error, EOFError, UnicodeDecodeError, KeyError, OSError)
    try:
        import apsw  # rosbags' sqlite3 storage on recent versions

        errors += (apsw.Error,)
    except ImportError:
        pass
    return errors


def _warn(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def bag_topics(path: str | Path) -> dict[str, str]:
    from rosbags.highlevel import AnyReader

    try:
        with AnyReader([Path(path)], default_typestore=typestore()) as reader:
            return {c.topic: c.msgtype for c in reader.connections}
    except _read_errors() as e:
        raise BagError(f"bag {str(path)!r}: cannot be opened: {_one_line(e)}") from None


def verify_mcap_chunks(reader: Any, path: str | Path, warn: Callable[[str], None]) -> None:
    """Check the CRC of every mcap chunk before reading; drop the chunks that fail, saying which.

    rosbags checks a chunk's CRC only when it reaches it, and then stops the whole read; rosbag2's
    writer stores CRCs, rosbags' writer does not (0 = none): such chunks cannot be verified, which
    is reported too. Uses rosbags' chunk index and its ``decompress`` (which checks the CRC).
    """
    try:
        from rosbags.rosbag2.storage_mcap import McapReader, decompress
    except ImportError:  # another rosbags layout: nothing verified, say so
        warn(f"bag {str(path)!r}: mcap chunk CRCs not verified (rosbags without McapReader)")
        return
    # AnyReader -> rosbag2 Reader -> DirectoryReader (metadata.yaml) or a bare McapReader
    inner = [getattr(bag, "storage", bag) for bag in getattr(reader, "readers", [])]
    for storage in [st for x in inner for st in (getattr(x, "storages", None) or [x])]:
        if not isinstance(storage, McapReader) or not storage.chunks:
            continue
        keep, unverified = [], 0
        for i, chunk in enumerate(storage.chunks):
            # chunk record: opcode(1) length(8) start(8) end(8) uncompressed size(8) crc(4) ...
            storage.bio.seek(chunk.chunk_start_offset + 9 + 24)
            crc = int.from_bytes(storage.bio.read(4), "little")
            if not crc:
                unverified += 1
                keep.append(chunk)
                continue
            storage.bio.seek(chunk.chunk_start_offset + 9 + 40 + len(chunk.compression))
            try:
                decompress(storage.bio.read(chunk.compressed_size), chunk.compression,
                           chunk.uncompressed_size, crc)
                keep.append(chunk)
            except Exception as e:  # noqa: BLE001 - ReaderError or a decompressor's own error
                lost = sum(chunk.channel_count.values())
                warn(f"bag {str(storage.path)!r}: skipped chunk {i + 1} of {len(storage.chunks)} "
                     f"({lost} message(s), t={chunk.message_start_time * 1e-9:.3f}.."
                     f"{chunk.message_end_time * 1e-9:.3f} s): {_one_line(e)}")
        if unverified:
            warn(f"bag {str(storage.path)!r}: {unverified} of {len(storage.chunks)} mcap chunks carry no "
                 "CRC (written without one): their content could not be verified")
        storage.chunks[:] = keep


def read_bag(path: str | Path, topic: str, msgtypes: tuple[str, ...] = (),
             warn: Callable[[str], None] = _warn) -> Iterator[BagMessage]:
    """Messages of ``topic`` in time order.

    Raises FileNotFoundError, or :class:`BagError` naming the bag when it cannot be opened, has no
    ``topic``, the topic's type is not one of ``msgtypes`` (when given), or the bag turns out
    damaged mid-stream (after the messages before the damage were yielded). mcap chunks whose CRC
    fails are skipped and reported through ``warn``.
    """
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag: no such file or folder {str(path)!r}")
    errors = _read_errors()
    reader = AnyReader([path], default_typestore=typestore())
    try:
        reader.open()
    except errors as e:
        raise BagError(f"bag {str(path)!r}: cannot be opened: {_one_line(e)}") from None
    n = 0
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            have = sorted({c.topic for c in reader.connections})
            raise BagError(f"bag {str(path)!r} has no topic {topic!r}; it has {have}")
        if msgtypes and conns[0].msgtype not in msgtypes:
            raise BagError(f"bag {str(path)!r}: topic {topic!r} is {conns[0].msgtype}, not "
                           f"{' or '.join(msgtypes)}")
        verify_mcap_chunks(reader, path, warn)
        for conn, t, raw in reader.messages(connections=conns):
            is_cdr = getattr(conn.ext, "serialization_format", "") == "cdr"
            yield BagMessage(t, conn.topic, conn.msgtype, bytes(raw), is_cdr, reader)
            n += 1
    except errors as e:
        raise BagError(f"bag {str(path)!r}: damaged after {n} message(s) of {topic!r}: "
                       f"{_one_line(e)}") from None
    finally:
        reader.close()


def to_cdr(msg: BagMessage) -> bytes:
    """CDR bytes of a bag message (publishable with rclpy), converting ROS 1 data if needed."""
    if msg.is_cdr:
        return msg.raw
    return bytes(typestore().serialize_cdr(msg.deserialize(), msg.msgtype))


def image_message(ts: Any, rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Any:
    """A rosbags sensor_msgs/Image from an (H, W, 3) uint8 RGB array."""
    Image = ts.types[IMAGE]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    arr = rgb[:, :, ::-1] if encoding == "bgr8" else rgb
    arr = np.ascontiguousarray(arr, np.uint8)
    sec, nsec = divmod(int(stamp_ns), 10**9)
    extra = {"seq": 0} if "seq" in getattr(Header, "__dataclass_fields__", {}) else {}  # ROS 1 header
    header = Header(stamp=Time(sec=sec, nanosec=nsec), frame_id=frame_id, **extra)
    return Image(header=header, height=arr.shape[0],
                 width=arr.shape[1], encoding=encoding, is_bigendian=0, step=arr.shape[1] * 3,
                 data=arr.reshape(-1))


def write_image_bag(path: str | Path, frames: Iterator[tuple[int, np.ndarray]], topic: str,
                    frame_id: str = "camera", storage: str = "sqlite3", encoding: str = "rgb8",
                    ros1: bool = False, humble: bool = False) -> int:
    """Write ``(stamp_ns, rgb)`` frames as sensor_msgs/Image; header stamp = bag time. Returns the count.

    ``ros1`` writes a ROS 1 bag (``.bag`` file) instead of a rosbag2 folder (tests, old datasets);
    ``humble`` a rosbag2 folder that ROS 2 Humble reads (see humble_bag.py).
    """
    ts = typestore()
    n = 0
    if ros1:
        from rosbags.rosbag1 import Writer as Writer1
        from rosbags.typesys import Stores, get_typestore

        ts1 = get_typestore(Stores.ROS1_NOETIC)
        with Writer1(Path(path)) as w:
            conn = w.add_connection(topic, "sensor_msgs/msg/Image", typestore=ts1)
            for stamp_ns, rgb in frames:
                msg = image_message(ts1, rgb, stamp_ns, frame_id, encoding)
                w.write(conn, stamp_ns, ts1.serialize_ros1(msg, "sensor_msgs/msg/Image"))
                n += 1
        return n
    from rosbags.rosbag2 import StoragePlugin, Writer

    from .humble_bag import HUMBLE_VERSION, make_humble_compatible, offered_qos

    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[storage]
    with Writer(Path(path), version=HUMBLE_VERSION if humble else 9, storage_plugin=plugin) as w:
        conn = w.add_connection(topic, IMAGE, typestore=ts,
                                offered_qos_profiles=offered_qos() if humble else ())
        for stamp_ns, rgb in frames:
            msg = image_message(ts, rgb, stamp_ns, frame_id, encoding)
            w.write(conn, stamp_ns, ts.serialize_cdr(msg, IMAGE))
            n += 1
    if humble:
        make_humble_compatible(path)
    return n


def read_video(path: str | Path, width: int | None = None, max_frames: int | None = None,
               size: tuple[int, int] | None = None, step: int = 1) -> Iterator[tuple[float, np.ndarray]]:
    """Decode a video with PyAV: ``(seconds since start, (H, W, 3) uint8 RGB)``.

    ``width`` rescales keeping the aspect ratio (height rounded to even); ``size`` (H, W) rescales
    to exactly that; ``step`` keeps every step-th frame; ``max_frames`` counts kept frames. A
    missing file raises FileNotFoundError, an undecodable one ValueError, both naming the path.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video: no such file {str(path)!r}")
    kept = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            scale: dict[str, int] = {}
            if size:
                scale = {"height": int(size[0]), "width": int(size[1])}
            elif width:
                height = max(2, round(stream.height * width / stream.width / 2) * 2)
                scale = {"width": int(width), "height": height}
            t0 = None
            for i, frame in enumerate(container.decode(stream)):
                if max_frames is not None and kept >= max_frames:
                    break
                if i % step:
                    continue
                t = float(frame.time) if frame.time is not None else i / float(stream.average_rate or 30)
                t0 = t if t0 is None else t0
                kept += 1
                yield t - t0, frame.to_ndarray(format="rgb24", **scale)
    except av.error.FFmpegError as exc:
        raise ValueError(f"video: cannot decode {str(path)!r}: {exc}") from exc


class VideoWriter:
    """PyAV H.264 (or MPEG-4 if libx264 is missing) writer for RGB frames of one size."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int) -> None:
        import av

        self.container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1000)
        try:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.options = {"crf": "23", "preset": "veryfast"}
        except Exception:  # noqa: BLE001 - codec availability depends on the FFmpeg build
            self.stream = self.container.add_stream("mpeg4", rate=rate)
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = self.stream.height, self.stream.width
        if rgb.shape[:2] != (h, w):
            pad = np.zeros((h, w, 3), np.uint8)
            pad[: rgb.shape[0], : rgb.shape[1]] = rgb[:h, :w]
            rgb = pad
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
