"""One frame's published images, each computed only when asked for (the node asks per subscribed
topic), from the network-resolution outputs of ``Backend.step``.

Why: at input resolution the resize is the costliest host work, and most of it is wasted when a
subscriber wants only a colour image or only one task. So argmax (in the backend) and colouring
happen at network resolution, and only what a topic needs is brought to the output size:

* ``semantic``: ids, nearest (labels are not quantities);
* ``semantic/color``: palette at network resolution, then nearest: exactly the palette of the
  nearest-resized ids, at 3 bytes instead of an int per input pixel; the overlay is blended after;
* ``depth``: bilinear, then invalid (non-finite or <= 0) -> NaN (REP 118);
* ``normals``: bilinear, then renormalised (interpolated unit vectors are shorter);
* ``normals/color``: the (n + 1) / 2 colours at network resolution, then a bilinear resize of the
  rgb8 image (one call of the node's uint8 resize kernel, ``preprocess.resize_to_network``, instead
  of three float channels, a renormalisation and a colouring).

At network resolution every resize is the identity and nothing is copied that need not be.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .imaging import blend, colorize_normals, colorize_semantic
from .postprocess import resize_float, resize_labels, resize_unit_normals, unit_normals, valid_depth
from .preprocess import resize_to_network

# Output topics in publishing order: topic -> (the task it is drawn from, its sensor_msgs/Image
# encoding; None: the class-id image, mono8 or mono16 by the number of classes).
TOPICS: dict[str, tuple[str, str | None]] = {
    "semantic": ("semantic", None), "semantic/color": ("semantic", "rgb8"), "depth": ("depth", "32FC1"),
    "normals": ("normals", "32FC3"), "normals/color": ("normals", "rgb8")}
TOPIC_TASK = {topic: task for topic, (task, _) in TOPICS.items()}


class FrameOutputs:
    """Per-topic images of one frame at ``size`` (H, W), computed lazily and cached.

    ``net``: the backend's outputs at network resolution (``StepResult.outputs``); ``overlay``:
    the RGB image at ``size`` for ``overlay_alpha`` blending. ``timings`` collects seconds per
    stage: ``postprocess`` (network-resolution validity), ``resize`` and ``colour``, on ``clock``
    (wall time in the node; ``bench/node_host_work.py`` passes ``time.thread_time``).
    """

    def __init__(self, net: dict[str, np.ndarray], size: tuple[int, int], palette: np.ndarray,
                 overlay: np.ndarray | None = None, alpha: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.net = net
        self.size = (int(size[0]), int(size[1]))
        self.palette = palette
        self.overlay = overlay
        self.alpha = float(alpha)
        self.timings: dict[str, float] = {}
        self._clock = clock
        self._cache: dict[str, np.ndarray] = {}

    def available(self, topic: str) -> bool:
        return TOPIC_TASK.get(topic) in self.net

    def _timed(self, stage: str, fn: Any, *args: Any) -> Any:
        t0 = self._clock()
        out = fn(*args)
        self.timings[stage] = self.timings.get(stage, 0.0) + self._clock() - t0
        return out

    def _same_size(self, task: str) -> bool:
        return self.net[task].shape[:2] == self.size

    def _unit_normals_net(self) -> np.ndarray:
        if "_normals_net" not in self._cache:
            self._cache["_normals_net"] = self._timed("postprocess", unit_normals, self.net["normals"])
        return self._cache["_normals_net"]

    def get(self, topic: str) -> np.ndarray:
        """The image of ``topic`` (a key of :data:`TOPIC_TASK`) at the output size."""
        if topic not in self._cache:
            if not self.available(topic):
                raise KeyError(f"no {TOPIC_TASK.get(topic, topic)!r} output for topic {topic!r}")
            self._cache[topic] = getattr(self, "_" + topic.replace("/", "_"))()
        return self._cache[topic]

    def _semantic(self) -> np.ndarray:
        return self._timed("resize", resize_labels, self.net["semantic"], self.size)

    def _semantic_color(self) -> np.ndarray:
        ids = self.net["semantic"]
        colours = self._timed("colour", colorize_semantic, ids, self.palette)
        colours = self._timed("resize", resize_labels, colours, self.size)
        return self._timed("colour", blend, colours, self.overlay, self.alpha)

    def _depth(self) -> np.ndarray:
        d = self.net["depth"].astype(np.float32, copy=False)
        if self._same_size("depth"):
            return self._timed("postprocess", valid_depth, d)
        return self._timed("resize", lambda: valid_depth(resize_float(d, self.size)))

    def _normals(self) -> np.ndarray:
        if self._same_size("normals"):
            return self._unit_normals_net()
        return self._timed("resize", resize_unit_normals, self.net["normals"], self.size)

    def _normals_color(self) -> np.ndarray:
        colours = self._timed("colour", colorize_normals, self._unit_normals_net())
        return self._timed("resize", resize_to_network, colours, self.size)
