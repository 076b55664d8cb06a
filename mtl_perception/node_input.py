"""The node's image input: the image and camera_info callbacks. An image is validated in O(1)
and stored in the one-slot mailbox (a newer frame replaces a waiting one, which is counted as
dropped); the inference thread that empties the mailbox is the node's. A mixin of
:class:`mtl_perception.node.PerceptionNode` (it uses the node's mailbox lock, counters and logger).

Taking the Image as raw CDR bytes instead of a message object was tried for issue 14 (rclpy's
conversion of a 256x512 rgb8 message measured 0.34 ms stand-alone) and measured no gain in the
node: stamp -> callback 1.1 ms p50 raw against 1.0 with message objects (docs/node_overhead.md).
"""

from __future__ import annotations

import time
from typing import Any

from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from .imaging import ImageError, check_compressed_format, check_image_msg


class ImageInput:
    """Input half of the perception node (see the module docstring)."""

    def _on_image(self, msg: Image | CompressedImage) -> None:
        now = time.monotonic()
        self.in_rate.tick(now)
        self.last_input = now
        try:
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
