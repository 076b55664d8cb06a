"""What the node publishes for one processed frame: the subscribed output images as CDR bytes
built from the arrays (one copy of the pixels), the scaled ``~/camera_info``, and the per-frame
``~/latency`` stage timings. A mixin of :class:`mtl_perception.node.PerceptionNode` (it uses the
node's publishers, encodings, palette and scheduler); kept apart from the node's subscriptions,
parameters and diagnostics.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CameraInfo

from .image_cdr import image_cdr
from .outputs import FrameOutputs


def scale_camera_info(info: CameraInfo, height: int, width: int) -> CameraInfo:
    """A copy of ``info`` for an image resized to (height, width): K, P and the ROI scale with
    the image; D and R do not change."""
    out = copy.deepcopy(info)
    if info.width == width and info.height == height or info.width == 0 or info.height == 0:
        return out
    sx, sy = width / info.width, height / info.height
    k = list(info.k)
    k[0], k[2], k[4], k[5] = k[0] * sx, k[2] * sx, k[4] * sy, k[5] * sy
    p = list(info.p)
    p[0], p[2], p[3], p[5], p[6] = p[0] * sx, p[2] * sx, p[3] * sx, p[5] * sy, p[6] * sy
    out.k, out.p = k, p
    out.width, out.height = width, height
    roi = out.roi
    roi.x_offset, roi.width = int(roi.x_offset * sx), int(roi.width * sx)
    roi.y_offset, roi.height = int(roi.y_offset * sy), int(roi.height * sy)
    return out


class OutputPublishing:
    """Publishing half of the perception node (see the module docstring)."""

    def _wanted(self, name: str) -> bool:
        return self.pubs[name].get_subscription_count() > 0

    def _publish_outputs(self, header: Any, result: Any) -> dict[str, float]:
        """Publish every subscribed image topic; returns seconds per stage (postprocess, resize,
        colour, serialize, publish). Work follows subscribers: a topic nobody listens to is
        neither resized, coloured nor serialised (``FrameOutputs`` computes on demand), and the
        CDR bytes are built from the output array directly (``image_cdr``), one copy of the pixels."""
        h, w = result.rgb.shape[:2]  # the output size, also when no task is wanted
        frame = FrameOutputs(result.outputs, (h, w), self.palette, result.rgb, self.overlay_alpha)
        stamp, frame_id = header.stamp, header.frame_id
        serialize = publish = 0.0
        for topic, encoding in self.encodings.items():
            if not frame.available(topic) or not self._wanted(topic):
                continue
            array = frame.get(topic)
            t0 = time.perf_counter()
            data = image_cdr(stamp.sec, stamp.nanosec, frame_id, array, encoding)
            t1 = time.perf_counter()
            self.pubs[topic].publish(data)  # bytes: rclpy's raw publish, no message conversion
            serialize += t1 - t0
            publish += time.perf_counter() - t1
        info = self._camera_info
        if self.info_pub is not None and info is not None:
            t1 = time.perf_counter()
            scaled = scale_camera_info(info, h, w)
            scaled.header = header
            self.info_pub.publish(scaled)
            publish += time.perf_counter() - t1
        timings = {"postprocess": 0.0, "resize": 0.0, "colour": 0.0}
        timings.update(frame.timings)
        timings.update(serialize=serialize, publish=publish)
        return timings

    def _publish_latency(self, header: Any, is_key: bool, index: int, reset: str | None,
                         timings: dict[str, float], total: float, wait_s: float,
                         input_age_s: float) -> None:
        """~/latency: one DiagnosticArray per frame, stamped with the input header, so plots and
        tests can pair it with outputs; carries the frame type (keyframe true/false). Built only
        while someone subscribes (the same timings reach /diagnostics as stage medians anyway)."""
        if self.latency_pub.get_subscription_count() == 0:
            return
        values = {"keyframe": "true" if is_key else "false", "index": str(index),
                  "reset": reset or "", "total_ms": f"{total * 1e3:.3f}", "wait_ms": f"{wait_s * 1e3:.3f}",
                  # stamp -> input callback on the node's clock: camera driver + DDS, when the
                  # camera stamps with the same clock (otherwise only the offset between clocks)
                  "input_age_ms": f"{input_age_s * 1e3:.3f}",
                  "keyframe_interval": str(self.scheduler.interval),
                  "keyframe_reason": self._key_reason}
        values.update({f"{k}_ms": f"{v * 1e3:.3f}" for k, v in timings.items()})
        status = DiagnosticStatus(level=DiagnosticStatus.OK,
                                  name=f"{self.get_fully_qualified_name()}: frame",
                                  message="keyframe" if is_key else "non_keyframe",
                                  hardware_id=self.loaded.backend.device,
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self.latency_pub.publish(DiagnosticArray(header=header, status=[status]))

