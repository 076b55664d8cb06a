"""sensor_msgs/Image serialised to CDR straight from a contiguous numpy buffer, for
``Publisher.publish(bytes)`` (rclpy's raw publish). No rclpy import: plain bytes.

Why: publishing an ``Image`` object copies the pixels four times before DDS sees them
(``ndarray.tobytes``, the ``array('B')`` of ``msg.data``, the Python -> C message conversion, the
rmw serialisation). Here the header fields are packed once and the pixels copied once, into the
bytes object that the rmw then writes. Layout: the 4-byte CDR little-endian encapsulation header,
then the fields in order, each aligned to its size relative to the end of that header (XCDR1, what
rmw_fastrtps and rmw_cyclonedds write for ROS 2 messages); strings are a uint32 length counting
the terminating NUL, then the bytes and the NUL. ``test/test_node_outputs.py`` checks the bytes
against rclpy's own ``serialize_message`` / ``deserialize_message``.
"""

from __future__ import annotations

import struct
import sys

import numpy as np

from .imaging import OUTPUT_ENCODINGS

CDR_LE = b"\x00\x01\x00\x00"  # encapsulation: plain CDR, little endian, no options


def _pad(n: int) -> bytes:
    return b"\x00" * (-n % 4)


def _string(s: bytes, offset: int) -> tuple[bytes, int]:
    """A CDR string at ``offset`` (already 4-aligned): length incl. NUL, bytes, NUL."""
    out = struct.pack("<I", len(s) + 1) + s + b"\x00"
    return out, offset + len(out)


def image_cdr(sec: int, nanosec: int, frame_id: str, array: np.ndarray, encoding: str) -> bytes:
    """The serialised sensor_msgs/Image (header stamp ``sec``/``nanosec`` and ``frame_id``) holding
    ``array`` in ``encoding`` (a key of ``imaging.OUTPUT_ENCODINGS``; the same checks and byte
    layout as ``imaging.fill_image_msg``)."""
    dtype, channels = OUTPUT_ENCODINGS.get(encoding, (None, 0))
    if dtype is None:
        raise ValueError(f"unsupported output encoding {encoding!r}")
    arr = np.ascontiguousarray(array, dtype=dtype)  # no copy when it already is
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(f"{encoding} needs (H, W, {channels}), got {array.shape}")
    if sys.byteorder != "little" and dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("<"))  # is_bigendian stays 0: the data is little endian
    height, width = int(arr.shape[0]), int(arr.shape[1])
    parts = [struct.pack("<iI", int(sec), int(nanosec))]
    fid, off = _string(frame_id.encode(), 8)
    parts += [fid, _pad(off)]
    off += -off % 4
    enc, off = _string(encoding.encode(), off + 8)
    parts += [struct.pack("<II", height, width), enc, b"\x00"]  # is_bigendian = 0 (uint8)
    off += 1
    parts += [_pad(off), struct.pack("<II", width * channels * dtype.itemsize, arr.nbytes)]
    # One copy of the pixels: join reads the array's buffer directly.
    return b"".join([CDR_LE, *parts, memoryview(arr).cast("B")])
