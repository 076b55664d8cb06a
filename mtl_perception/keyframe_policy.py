"""Keyframe policies: which processed frame runs the slow encoder (no ROS, no tensors).

``fixed`` is MILA's schedule (every K-th frame). ``adaptive`` fires when the scene has moved away
from the last keyframe, bounded by a minimum and a maximum interval, with a threshold controller
that holds the long-run keyframe rate at a target so the slow-encoder cost stays predictable.

The signal is computed *outside* the network: the mean absolute difference between a 16x32
grayscale thumbnail of the frame and that of the last keyframe. Why this one (docs/keyframes.md has
the measurement, ``bench/keyframes.py --signals``): it costs ~0.1 ms on the host, works the same for
every backend (torch, ONNX Runtime, INT8, BF16, TensorRT expose only their outputs), and separated
cuts from ordinary motion as well as the fast encoder's feature drift did on the clips we measured.

One policy object serves the node and ``eval-bag`` (through :class:`~.scheduler.KeyframeScheduler`)
and clip evaluation (``MultiTaskVideoNet.forward_clip(clip, policy=...)`` through :func:`iter_reasons`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

THUMB_SIZE = (16, 32)  # (H, W) of the signal's thumbnail
_OVERSAMPLE = 4  # samples per thumbnail pixel and axis (a box filter against aliasing)
_GRAY = np.array([0.299, 0.587, 0.114], np.float32)

# Why a keyframe fired (the node's /diagnostics and ~/latency, eval reports).
REASON_RESET = "reset"  # a new stream (start, discontinuity, ~/reset)
REASON_INTERVAL = "interval"  # fixed policy: K frames since the last keyframe
REASON_MAX = "max"  # adaptive policy: the maximum interval elapsed
REASON_DRIFT = "drift"  # adaptive policy: the scene moved away from the last keyframe
REASONS = (REASON_RESET, REASON_INTERVAL, REASON_MAX, REASON_DRIFT)

MIN_INTERVAL, MAX_INTERVAL = 1, 100


def thumbnail(image: np.ndarray) -> np.ndarray:
    """(16, 32) float32 grayscale in [0, 1] of an (H, W, 3) uint8 / float [0, 1] image (or (H, W)).

    Samples a 64x128 grid (nearest) and box-averages 4x4 blocks: the cost does not grow with the
    image size (a full-resolution resize would)."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"thumbnail: expected an (H, W[, C]) image, got shape {a.shape}")
    h, w = THUMB_SIZE[0] * _OVERSAMPLE, THUMB_SIZE[1] * _OVERSAMPLE
    ys = ((np.arange(h) + 0.5) * a.shape[0] / h).astype(np.intp)
    xs = ((np.arange(w) + 0.5) * a.shape[1] / w).astype(np.intp)
    s = a[ys[:, None], xs[None, :]].astype(np.float32)
    if s.ndim == 3:
        s = s[..., :3] @ _GRAY if s.shape[-1] >= 3 else s[..., 0]
    if a.dtype == np.uint8:
        s /= 255.0
    return s.reshape(THUMB_SIZE[0], _OVERSAMPLE, THUMB_SIZE[1], _OVERSAMPLE).mean(axis=(1, 3))


def drift(thumb: np.ndarray, key_thumb: np.ndarray) -> float:
    """The signal: mean absolute grayscale difference (0..1) between two thumbnails."""
    return float(np.abs(thumb - key_thumb).mean())


class KeyframePolicy:
    """Decides whether a non-reset frame is a keyframe. Not thread-safe on its own: the scheduler
    calls it under its lock."""

    name = ""
    needs_image = False  # whether :meth:`decide` needs the frame's thumbnail

    def decide(self, since_key: int, thumb: np.ndarray | None) -> str | None:
        """``since_key``: processed frames since the last keyframe (1 = the frame right after it).
        Returns the keyframe reason, or None for a non-keyframe."""
        raise NotImplementedError

    def keyframe(self, thumb: np.ndarray | None) -> None:
        """Called on every keyframe, including resets: the new reference."""

    def describe(self) -> dict[str, str]:
        return {"keyframe_policy": self.name}


POLICIES: dict[str, Callable[..., KeyframePolicy]] = {}


def register_policy(name: str) -> Callable[[type[KeyframePolicy]], type[KeyframePolicy]]:
    def deco(cls: type[KeyframePolicy]) -> type[KeyframePolicy]:
        if name in POLICIES:
            raise KeyError(f"keyframe policy '{name}' is registered twice")
        cls.name = name
        POLICIES[name] = cls
        return cls
    return deco


def _check_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ValueError(f"{field} must be in [{MIN_INTERVAL}, {MAX_INTERVAL}], got {value}")
    return value


@register_policy("fixed")
class FixedPolicy(KeyframePolicy):
    """Every ``interval``-th processed frame (MILA's K)."""

    def __init__(self, interval: int = 5, **_: Any) -> None:
        self.interval = _check_int("keyframe_interval", interval)

    def decide(self, since_key: int, thumb: np.ndarray | None) -> str | None:
        return REASON_INTERVAL if since_key >= self.interval else None

    def describe(self) -> dict[str, str]:
        return {"keyframe_policy": self.name, "keyframe_interval": str(self.interval)}


@register_policy("adaptive")
class AdaptivePolicy(KeyframePolicy):
    """Keyframe when the thumbnail drift from the last keyframe exceeds a threshold, never sooner
    than ``min_interval`` frames and never later than ``max_interval`` frames after the last one.

    Cost control, two parts. A credit (token bucket) earns ``target_rate`` per frame up to
    ``burst`` and a keyframe spends 1: drift keyframes need a whole credit, so over any stretch of
    n frames the keyframes number at most ``target_rate * n + burst`` (forced ``max_interval``
    ones aside, which the budget >= 1/max covers). The threshold is an integral controller in log
    space: each decision moves it by ``gain * (is_key - target_rate)``, so when the content offers
    more (fewer) crossings than the budget it rises (falls) until the rate meets ``target_rate``.
    A *surge* -- this frame's jump from the previous one above ``surge`` x the running mean jump (a
    cut, a fast turn) -- fires at ``min_interval`` even on a credit of 0..1 (borrowed, repaid by
    the next keyframes waiting), because a stale keyframe after a cut costs the most. The first
    inter-frame drift primes the threshold (drift / target_rate: the motion of one budgeted
    interval) so short clips do not spend their budget learning it. ``floor`` keeps sensor noise on
    a still scene from firing (there only ``max_interval`` fires, below the budget).
    """

    needs_image = True

    def __init__(self, min_interval: int = 2, max_interval: int = 15, target_rate: float = 0.2,
                 threshold: float = 0.03, gain: float = 0.3, floor: float = 0.004, ceil: float = 0.5,
                 burst: float = 2.0, surge: float = 2.5, **_: Any) -> None:
        self.min_interval = _check_int("keyframe_min_interval", min_interval)
        self.max_interval = _check_int("keyframe_max_interval", max_interval)
        if self.max_interval < self.min_interval:
            raise ValueError(f"keyframe_max_interval ({max_interval}) must be >= keyframe_min_interval "
                             f"({min_interval})")
        if isinstance(target_rate, bool) or not isinstance(target_rate, (int, float)):
            raise ValueError(f"keyframe_target_rate must be a number, got {target_rate!r}")
        lo, hi = 1.0 / self.max_interval, 1.0 / self.min_interval
        # A budget outside what the intervals allow could never be met: refuse it.
        if not lo - 1e-9 <= target_rate <= hi + 1e-9:
            raise ValueError(f"keyframe_target_rate must be in [1/max, 1/min] = [{lo:.3f}, {hi:.3f}], "
                             f"got {target_rate}")
        self.target_rate = float(target_rate)
        self.gain, self.floor, self.ceil = float(gain), float(floor), float(ceil)
        self.threshold = min(max(float(threshold), self.floor), self.ceil)
        self.burst, self.surge = float(burst), float(surge)
        self.credit = 0.0  # the stream's first keyframe (a reset) is not charged; nothing banked yet
        self._primed = False
        self._key_thumb: np.ndarray | None = None
        self._prev_thumb: np.ndarray | None = None
        self._jump_avg = 0.0  # running mean of ordinary frame-to-frame drift
        self._jumps = 0  # frames in it
        self._surge_pending = False
        self.last_drift = 0.0

    def decide(self, since_key: int, thumb: np.ndarray | None) -> str | None:
        if thumb is None or self._key_thumb is None:
            d = jump = 0.0
        else:
            d = drift(thumb, self._key_thumb)
            jump = drift(thumb, self._prev_thumb if self._prev_thumb is not None else self._key_thumb)
        self._prev_thumb = thumb
        # A sudden change (cut, fast turn): this frame's jump far above the typical frame-to-frame one.
        surge = jump > max(self.surge * self._jump_avg, 2 * self.floor) and self._jumps > 0
        # ...remembered until the keyframe it asks for (a cut inside min_interval fires at min_interval)
        self._surge_pending = self._surge_pending or surge
        if thumb is not None:  # spikes count too: a new shot's own motion level is learnt at once
            self._jump_avg = jump if self._jumps == 0 else 0.8 * self._jump_avg + 0.2 * jump
            self._jumps += 1
        self.last_drift = d
        if not self._primed and since_key == 1 and d > 0:
            self.threshold = min(max(d / self.target_rate, self.floor), self.ceil)
            self._primed = True
        self.credit = min(self.credit + self.target_rate, self.burst)
        reason = None
        if since_key >= self.max_interval:
            reason = REASON_MAX
        elif since_key >= self.min_interval and ((d > self.threshold and self.credit >= 1.0 - 1e-9)
                                                 or (self._surge_pending and self.credit >= -1e-9)):
            reason = REASON_DRIFT
        if reason:
            self.credit -= 1.0
        step = self.gain * ((1.0 if reason else 0.0) - self.target_rate)
        self.threshold = min(max(self.threshold * math.exp(step), self.floor), self.ceil)
        return reason

    def keyframe(self, thumb: np.ndarray | None) -> None:
        self._key_thumb = thumb
        self._prev_thumb = thumb
        self._surge_pending = False

    def describe(self) -> dict[str, str]:
        return {"keyframe_policy": self.name, "keyframe_min_interval": str(self.min_interval),
                "keyframe_max_interval": str(self.max_interval),
                "keyframe_target_rate": f"{self.target_rate:.3f}",
                "keyframe_threshold": f"{self.threshold:.4f}", "keyframe_credit": f"{self.credit:.2f}",
                "keyframe_last_drift": f"{self.last_drift:.4f}"}


def make_policy(name: str, **params: Any) -> KeyframePolicy:
    """A registered policy by name; ``params`` each policy ignores what it does not use
    (``interval`` for fixed; ``min_interval``, ``max_interval``, ``target_rate`` for adaptive)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"keyframe_policy must be one of {sorted(POLICIES)}, got {name!r}") from None
    return cls(**params)


def iter_reasons(policy: KeyframePolicy, frames: Iterable[np.ndarray | None]) -> Iterator[str | None]:
    """Stream ``frames`` (HWC images) through ``policy``, the first frame starting the stream: per
    frame, decided before the next one is read, the keyframe reason or None. Frames may be None
    for a policy that does not look at images (``needs_image`` false)."""
    since = 0
    for i, img in enumerate(frames):
        if policy.needs_image and img is None:
            raise ValueError(f"keyframe policy '{policy.name}' needs the frames' images")
        thumb = thumbnail(img) if policy.needs_image else None
        reason = REASON_RESET if i == 0 else policy.decide(since, thumb)
        if reason is not None:
            policy.keyframe(thumb)
            since = 0
        since += 1
        yield reason


def policy_flags(policy: KeyframePolicy, frames: Iterable[np.ndarray]) -> list[str | None]:
    """:func:`iter_reasons` as a list (the whole clip decided up front; the decisions are the same)."""
    return list(iter_reasons(policy, frames))
