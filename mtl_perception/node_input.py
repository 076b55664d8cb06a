"""The node's image input: the image callbacks that fill the one-slot mailbox (a newer frame
replaces a waiting one, which is counted as dropped), and the ``sensor_msgs/Image`` the node takes
as raw CDR bytes. A mixin of :class:`mtl_perception.node.PerceptionNode` (it uses the node's
mailbox lock, counters and logger); the inference thread that empties the mailbox is the node's.

Why raw bytes: rclpy's conversion of a received Image into a Python message object took 0.34 ms
for a 256x512 rgb8 frame (the ``data`` array is built and copied in Python), in the executor
thread, on every frame's way in and holding the GIL the inference thread needs. Taken raw (one
copy into ``bytes``), the fields are read here in a few microseconds and the pixels stay a view
of those bytes until the resize reads them (docs/node.md, issue 14).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, CompressedImage
from std_msgs.msg import Header

from .imaging import REJECT_DATA, ImageError, check_compressed_format, check_image_msg

# CDR encapsulation identifiers of a plain (final) struct: XCDR1 and XCDR2 lay out
# sensor_msgs/Image alike (it has no 8-byte field, the only alignment they differ in).
_BYTE_ORDER = {b"\x00\x00": ">", b"\x00\x01": "<", b"\x00\x06": ">", b"\x00\x07": "<"}


@dataclass
class RawImage:
    """A received ``sensor_msgs/Image`` read from its CDR bytes: the message's field names (so
    ``imaging.check_image_msg`` / ``image_msg_to_rgb`` take it like a message object), ``data`` a
    read-only view of the received bytes, ``header`` a real ``std_msgs/Header``."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


def _string(buf: bytes, pos: int, order: str) -> tuple[str, int]:
    """A CDR string at ``pos`` (4-aligned): uint32 length including the NUL, bytes, NUL."""
    (n,) = struct.unpack_from(order + "I", buf, pos)
    if n < 1 or pos + 4 + n > len(buf):
        raise ValueError(f"string length {n} at byte {pos}")
    return buf[pos + 4:pos + 3 + n].decode(), pos + 4 + n


def parse_image_cdr(buf: bytes) -> RawImage:
    """Serialised ``sensor_msgs/Image`` -> :class:`RawImage`; a malformed buffer raises
    :class:`ImageError` (``truncated_data``). Offsets align to 4 relative to the end of the
    4-byte encapsulation header, i.e. absolute multiples of 4."""
    order = _BYTE_ORDER.get(bytes(buf[:2]))
    if order is None:
        raise ImageError(REJECT_DATA, f"CDR encapsulation {bytes(buf[:2]).hex()} is not plain CDR")
    try:
        sec, nanosec = struct.unpack_from(order + "iI", buf, 4)
        frame_id, pos = _string(buf, 12, order)
        pos += -pos % 4
        height, width = struct.unpack_from(order + "II", buf, pos)
        encoding, pos = _string(buf, pos + 8, order)
        is_bigendian = buf[pos]
        pos += 1 + (-(pos + 1) % 4)
        step, n = struct.unpack_from(order + "II", buf, pos)
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as e:
        raise ImageError(REJECT_DATA, f"malformed Image CDR ({len(buf)} bytes): {e}") from None
    data = memoryview(buf)[pos + 8:pos + 8 + n]
    if len(data) < n:
        raise ImageError(REJECT_DATA, f"Image CDR declares {n} data bytes, {len(data)} present")
    header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)
    return RawImage(header, height, width, encoding, is_bigendian, step, data)


class ImageInput:
    """Input half of the perception node (see the module docstring)."""

    def _on_image(self, msg: bytes | Any) -> None:
        """An Image (raw CDR bytes from the subscription, or a message object) or CompressedImage:
        validated in O(1), then stored as the newest frame; a frame still waiting is replaced."""
        now = time.monotonic()
        self.in_rate.tick(now)
        self.last_input = now
        try:
            if isinstance(msg, (bytes, bytearray, memoryview)):
                msg = parse_image_cdr(msg)
            if isinstance(msg, CompressedImage):
                check_compressed_format(msg.format)
            else:
                check_image_msg(msg)
        except ImageError as e:
            with self._slot_lock:
                self.frames_in += 1
            self._reject(e.reason, str(e))
            return
        with self._slot_lock:
            self.frames_in += 1
            if self._slot is not None:
                self.dropped += 1
            self._slot = (msg, time.perf_counter(), self.get_clock().now().nanoseconds)
            self._slot_filled.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_lost(self, info: Any) -> None:
        with self._slot_lock:
            self.lost += int(info.total_count_change)

    def _reject(self, reason: str, detail: str) -> None:
        n = self.rejected.inc(reason)
        self.get_logger().warning(f"rejected input ({reason}, {n} so far): {detail}",
                                  throttle_duration_sec=5.0)
