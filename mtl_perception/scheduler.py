"""Keyframe scheduling and stream-reset detection for a live image stream (no ROS, no tensors).

The node (and ``eval-bag``, offline) asks :meth:`KeyframeScheduler.decide` once per frame that it
is about to *process*. Frames dropped by the latest-frame policy never reach the scheduler, so
"every K-th frame" counts processed frames: a dropped frame can never swallow a keyframe.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from .keyframe_policy import REASON_RESET, REASONS, FixedPolicy, KeyframePolicy, thumbnail

MIN_INTERVAL = 1
MAX_INTERVAL = 100

# Reset reasons, also the keys of the node's reset counters in /diagnostics.
RESET_START = "start"
RESET_RESOLUTION = "resolution_change"
RESET_FRAME_ID = "frame_id_change"
RESET_STAMP_BACKWARDS = "stamp_backwards"
RESET_GAP = "frame_gap"
RESET_REQUESTED = "requested"
RESET_REASONS = (RESET_START, RESET_RESOLUTION, RESET_FRAME_ID, RESET_STAMP_BACKWARDS, RESET_GAP,
                 RESET_REQUESTED)


def validate_interval(value: object) -> str | None:
    """Why ``value`` is not a valid keyframe interval, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"keyframe_interval must be an integer, got {value!r}"
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        return f"keyframe_interval must be in [{MIN_INTERVAL}, {MAX_INTERVAL}], got {value}"
    return None


@dataclass(frozen=True)
class Decision:
    """What to do with one frame: reset the stream state first (``reset`` names why), and
    whether the frame is a keyframe (always True after a reset)."""

    is_keyframe: bool
    reset: str | None = None
    # Index of the frame since the last reset (0 = the keyframe the stream restarted on).
    index: int = 0
    # Why a keyframe fired (keyframe_policy.REASONS), None for a non-keyframe.
    reason: str | None = None


class KeyframeScheduler:
    """Every ``interval``-th processed frame is a keyframe; any discontinuity restarts the stream.

    A discontinuity is a change of resolution or frame_id, a stamp earlier than the previous one,
    a gap between stamps above ``max_gap_s`` (0 disables), or :meth:`request_reset` (the node's
    ``~/reset`` service). Changing ``interval`` keeps the phase: the next keyframe comes once
    ``interval`` frames have passed since the last one, so shrinking K takes effect at once.
    Thread-safe: the node sets ``interval`` and requests resets from other callback groups.

    ``policy`` (keyframe_policy) replaces the every-K-th rule, e.g. the adaptive one; ``None``
    (or :meth:`set_policy` (None)) is the fixed policy driven by ``interval``. Also keeps the
    keyframe rate and the reasons of the last keyframes for /diagnostics.
    """

    RATE_WINDOW = 200  # processed frames in the reported keyframe rate

    def __init__(self, interval: int = 5, max_gap_s: float = 1.0,
                 policy: KeyframePolicy | None = None) -> None:
        self._lock = threading.Lock()
        self._fixed = FixedPolicy(MIN_INTERVAL)
        self.interval = interval
        self.policy: KeyframePolicy = policy or self._fixed
        self._recent: deque[bool] = deque(maxlen=self.RATE_WINDOW)
        self.last_reasons: deque[str] = deque(maxlen=8)
        self.reason_counts = dict.fromkeys(REASONS, 0)
        self._need_reference = False  # a content policy switched in mid-stream has no reference yet
        self.max_gap_s = float(max_gap_s)
        self._last: tuple[float, str, tuple[int, int]] | None = None
        self._since_key = 0
        self._index = 0
        self._pending_reset: str | None = RESET_START

    @property
    def interval(self) -> int:
        return self._fixed.interval

    @interval.setter
    def interval(self, value: int) -> None:
        reason = validate_interval(value)
        if reason:
            raise ValueError(reason)
        self._fixed.interval = value

    def set_policy(self, policy: KeyframePolicy | None) -> None:
        """Switch policy (None: fixed at ``interval``); the phase since the last keyframe is kept."""
        with self._lock:
            self.policy = policy or self._fixed
            if self.policy.needs_image:
                self._need_reference = True

    def keyframe_rate(self) -> float:
        """Share of keyframes among the last ``RATE_WINDOW`` processed frames (0 before any)."""
        with self._lock:
            return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def request_reset(self, reason: str = RESET_REQUESTED) -> None:
        """The next :meth:`decide` starts a new stream on a keyframe."""
        with self._lock:
            self._pending_reset = reason

    def decide(self, stamp_s: float, frame_id: str, size: tuple[int, int],
               image: np.ndarray | None = None) -> Decision:
        """Schedule one frame: ``stamp_s`` (header stamp, seconds), ``frame_id``, ``size`` (H, W);
        ``image`` (H, W, 3) for a policy that looks at the content (without it, it sees no drift)."""
        with self._lock:
            reset = self._pending_reset
            self._pending_reset = None
            if reset is None and self._last is not None:
                last_stamp, last_frame, last_size = self._last
                if size != last_size:
                    reset = RESET_RESOLUTION
                elif frame_id != last_frame:
                    reset = RESET_FRAME_ID
                elif stamp_s < last_stamp:
                    reset = RESET_STAMP_BACKWARDS
                elif self.max_gap_s > 0 and stamp_s - last_stamp > self.max_gap_s:
                    reset = RESET_GAP
            self._last = (stamp_s, frame_id, size)
            if reset is not None:
                self._since_key = 0
                self._index = 0
            policy = self.policy
            thumb = thumbnail(image) if policy.needs_image and image is not None else None
            if reset is not None:
                why: str | None = REASON_RESET
            else:
                why = policy.decide(self._since_key, thumb)
            if why is not None:
                self._since_key = 0
                policy.keyframe(thumb)
                self.reason_counts[why] = self.reason_counts.get(why, 0) + 1
                self.last_reasons.append(why)
            elif self._need_reference and thumb is not None:
                policy.keyframe(thumb)  # a policy switched in mid-stream: the nearest reference
            self._need_reference = False
            index = self._index
            self._since_key += 1
            self._index += 1
            self._recent.append(why is not None)
            return Decision(why is not None, reset, index, why)
