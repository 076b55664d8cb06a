"""Temporal output filters: optional smoothing of a stream's published outputs (no ROS, no tensors).

The model's class decisions on real video are not confident, so pixels flip class from frame to
frame (issue 16; the model card's "What it gets wrong"). A filter here trades that flicker for
lag at real changes. It runs on the backend's network-resolution outputs (``Pipeline.infer``),
before any resize or colouring, so every published topic of a frame shows the filtered result.

Registered filters (``temporal_filter`` node parameter; ``+`` chains, e.g. ``mode+ema``):

* ``none``: outputs unchanged (the default);
* ``mode``: per pixel, the class most of the last ``window`` id maps give (the current one
  included); on a tie, the class published for the previous frame if it is among the tied, else
  the newest. A 1-frame flip is gone with window 3; a real change shows ``window // 2`` frames late.
* ``hysteresis``: a pixel's published class changes only once the network has given one new
  class ``window`` frames in a row; a real change shows ``window - 1`` frames late, and a pixel
  alternating between two wrong classes never switches. ``window`` 1 = no filter.
* ``ema``: depth and normals, ``y = alpha * x + (1 - alpha) * y_prev`` per pixel (the node
  renormalises the normals afterwards); a non-finite value restarts that pixel. Class ids untouched.

State is per stream: the pipeline calls :meth:`OutputFilter.reset` on every stream reset
(start, gap, resolution/frame_id change, stamp backwards, ``~/reset``, a failed step), and a filter
also restarts itself when the shape of an output changes. Ids are kept as uint8 when they fit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .model.registry import Registry

WINDOW_RANGE = (1, 15)  # frames: mode's window, hysteresis' persistence
ALPHA_RANGE = (0.05, 1.0)  # ema: weight of the newest frame
FILTERS = Registry("temporal filter")


def register_filter(name: str) -> Callable[[type[OutputFilter]], type[OutputFilter]]:
    """``FILTERS.register`` that also names the class: ``describe`` and chains print it."""
    def deco(cls: type[OutputFilter]) -> type[OutputFilter]:
        cls.name = name
        return FILTERS.register(name)(cls)
    return deco


def _check_window(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"temporal_filter_window must be an integer, got {value!r}")
    if not WINDOW_RANGE[0] <= value <= WINDOW_RANGE[1]:
        lo, hi = WINDOW_RANGE
        raise ValueError(f"temporal_filter_window must be in [{lo}, {hi}], got {value}")
    return value


def _check_alpha(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"temporal_filter_alpha must be a number, got {value!r}")
    if not ALPHA_RANGE[0] <= float(value) <= ALPHA_RANGE[1]:
        lo, hi = ALPHA_RANGE
        raise ValueError(f"temporal_filter_alpha must be in [{lo}, {hi}], got {value}")
    return float(value)


def _compact_ids(ids: np.ndarray) -> np.ndarray:
    """A copy (a backend may reuse its output buffers), uint8 when every id fits: 4x less memory
    traffic than the backend's int32. A model with > 255 classes keeps its dtype."""
    if ids.dtype != np.uint8 and ids.size and 0 <= int(ids.min()) and int(ids.max()) <= 255:
        return ids.astype(np.uint8)
    return ids.copy()


class OutputFilter:
    """Maps one frame's outputs (``StepResult.outputs``: semantic (H, W) ids, depth (H, W),
    normals (H, W, 3)) to filtered ones, keeping state across the frames of a stream. Keys a
    filter does not handle pass through as the same arrays. Not thread-safe: one stream, one caller."""

    name = ""

    def __call__(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the history: the next frame starts a new stream."""

    def describe(self) -> str:
        return self.name


class IdWindowFilter(OutputFilter):
    """Base of the filters on the class-id map over ``window`` frames: subclasses map one frame's
    compacted ids to the published ones (``_ids``); other outputs pass through."""

    def __init__(self, window: int = 3, **_: Any) -> None:
        self.window = _check_window(window)
        self.reset()

    def describe(self) -> str:
        return f"{self.name} window={self.window}"

    def __call__(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "semantic" not in outputs:
            return outputs
        raw = outputs["semantic"]
        # always a copy: the published array must not be the filter's state
        return {**outputs, "semantic": self._ids(_compact_ids(raw)).astype(raw.dtype)}

    def _ids(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@register_filter("none")
class NoFilter(OutputFilter):
    def __init__(self, **_: Any) -> None:
        pass

    def __call__(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs


@register_filter("mode")
class ModeFilter(IdWindowFilter):
    """Per-pixel majority over the last ``window`` class-id maps (ties: see the module docstring)."""

    def reset(self) -> None:
        self._hist: list[np.ndarray] = []  # newest first
        self._out: np.ndarray | None = None

    def _ids(self, ids: np.ndarray) -> np.ndarray:
        if self._hist and (self._hist[0].shape != ids.shape or self._hist[0].dtype != ids.dtype):
            self.reset()
        self._hist = [ids, *self._hist[: self.window - 1]]
        h = self._hist
        # count of each history entry's class within the window; the newest wins ties (strict >)
        best, best_n = h[0], _votes(h, h[0])
        for j in range(1, len(h)):
            n = _votes(h, h[j])
            better = n > best_n
            best = np.where(better, h[j], best)
            best_n = np.maximum(n, best_n)
        if self._out is not None:
            # the class published last frame keeps a tie: no switch without a majority
            best = np.where(_votes(h, self._out) == best_n, self._out, best)
        self._out = best
        return best


def _votes(hist: list[np.ndarray], cls: np.ndarray) -> np.ndarray:
    n = np.zeros(cls.shape, np.uint8)
    for h in hist:
        n += h == cls
    return n


@register_filter("hysteresis")
class HysteresisFilter(IdWindowFilter):
    """A pixel switches class after the network gave the new class ``window`` frames in a row."""

    def reset(self) -> None:
        self._shown: np.ndarray | None = None  # the published class
        self._last: np.ndarray | None = None  # the network's previous class: the challenger
        self._run: np.ndarray | None = None  # frames in a row the challenger differed from shown (uint8)

    def _ids(self, x: np.ndarray) -> np.ndarray:
        if self._shown is None or self._shown.shape != x.shape or self._shown.dtype != x.dtype:
            self._shown, self._last, self._run = x, x, np.zeros(x.shape, np.uint8)
            return x
        assert self._last is not None and self._run is not None
        # whole-array uint8 arithmetic, no boolean-mask writes (2-3x cheaper at 192x384):
        # run = (run + 1 if x repeats the last frame else 1), 0 where x is the shown class
        run = np.where(x == self._last, self._run + np.uint8(1), np.uint8(1))
        run *= x != self._shown  # never above window <= 15: no uint8 overflow
        switch = run >= self.window
        self._shown = np.where(switch, x, self._shown)
        run[switch] = 0
        self._last, self._run = x, run
        return self._shown


@register_filter("ema")
class EmaFilter(OutputFilter):
    """Exponential average of depth and normals with weight ``alpha`` on the newest frame."""

    def __init__(self, alpha: float = 0.5, **_: Any) -> None:
        self.alpha = _check_alpha(alpha)
        self.reset()

    def reset(self) -> None:
        self._prev: dict[str, np.ndarray] = {}

    def describe(self) -> str:
        return f"ema alpha={self.alpha:g}"

    def __call__(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(outputs)
        a = np.float32(self.alpha)
        for key in ("depth", "normals"):
            if key not in outputs:
                continue
            x = outputs[key].astype(np.float32, copy=False)
            prev = self._prev.get(key)
            if prev is None or prev.shape != x.shape:
                y = x.copy()
            else:
                # y = x + (1 - a) (prev - x): one new array (the caller may keep the last one)
                y = np.subtract(prev, x)
                y *= 1 - a
                y += x
                ok = np.isfinite(y)
                if not ok.all():
                    y = np.where(ok, y, x)
            self._prev[key] = y
            out[key] = y
        return out


class ChainFilter(OutputFilter):
    """Filters applied one after the other (``mode+ema``)."""

    def __init__(self, parts: list[OutputFilter]) -> None:
        self.parts = parts
        self.name = "+".join(p.name for p in parts)

    def reset(self) -> None:
        for p in self.parts:
            p.reset()

    def describe(self) -> str:
        return " + ".join(p.describe() for p in self.parts)

    def __call__(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for p in self.parts:
            outputs = p(outputs)
        return outputs


def make_filter(name: str, window: int = 3, alpha: float = 0.5) -> OutputFilter:
    """A registered filter, or a ``+`` chain of them, by name. ``window`` is mode's window and
    hysteresis' persistence (frames), ``alpha`` ema's weight of the newest frame; each filter checks
    what it uses. Raises ValueError naming the parameter (``temporal_filter``, ``..._window``,
    ``..._alpha``)."""
    if not isinstance(name, str):
        raise ValueError(f"temporal_filter must be a string, got {name!r}")
    names = [n.strip() for n in name.split("+")]
    unknown = [n for n in names if n not in FILTERS]
    if unknown or not names:
        raise ValueError(f"temporal_filter must be one of {FILTERS.names()} or a '+' chain of them, "
                         f"got {name!r}")
    # validate both numbers even when the chosen filter ignores one: a live change is all or nothing
    _check_window(window)
    _check_alpha(alpha)
    parts = [FILTERS.get(n)(window=window, alpha=alpha) for n in names if n != "none"]
    if not parts:
        return NoFilter()
    return parts[0] if len(parts) == 1 else ChainFilter(parts)
