"""Latency statistics and rate meters (plain Python; the node turns them into /diagnostics).

Every processed frame is timed per stage and filed under its frame type, because keyframes (slow
encoder) and non-keyframes (fast encoder) have very different costs: a single mean would hide
the keyframe spikes that decide whether a camera rate is sustainable.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

# "inference" is reported instead of encoder + decoder by backends that run one fused graph.
# Per-frame stages in pipeline order (the node: resize/colour only for subscribed topics at input
# resolution, serialize = building the CDR bytes, publish = the rmw writes; filter = the temporal
# output filter, output_filter.py).
STAGES = ("preprocess", "encoder", "decoder", "inference", "filter", "postprocess", "resize", "colour",
          "serialize", "publish")
TOTAL = "total"
KINDS = ("keyframe", "non_keyframe")


@dataclass(frozen=True)
class Percentiles:
    """Milliseconds over the window; ``count`` is the number of frames it covers."""

    p50: float
    p95: float
    max: float
    mean: float
    count: int

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        if not seconds:
            return cls(float("nan"), float("nan"), float("nan"), float("nan"), 0)
        ms = np.asarray(seconds, np.float64) * 1e3
        return cls(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.max()),
                   float(ms.mean()), int(ms.size))


class LatencyStats:
    """Per-frame stage timings over a sliding window of the last ``window`` frames per kind."""

    def __init__(self, window: int = 300) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, deque[dict[str, float]]] = {k: deque(maxlen=window) for k in KINDS}
        self.counts = dict.fromkeys(KINDS, 0)

    @staticmethod
    def kind(is_keyframe: bool) -> str:
        return KINDS[0] if is_keyframe else KINDS[1]

    def add(self, is_keyframe: bool, timings: dict[str, float]) -> float:
        """File one frame's stage timings (seconds); ``total`` is their sum unless given."""
        t = {s: float(timings.get(s, 0.0)) for s in STAGES}
        t[TOTAL] = float(timings.get(TOTAL, sum(t.values())))
        with self._lock:
            self._frames[self.kind(is_keyframe)].append(t)
            self.counts[self.kind(is_keyframe)] += 1
        return t[TOTAL]

    def summary(self) -> dict[str, dict[str, Percentiles]]:
        """``{kind: {stage or "total": Percentiles}}`` over the current window."""
        with self._lock:
            frames = {k: list(v) for k, v in self._frames.items()}
        return {k: {s: Percentiles.of([f[s] for f in fr]) for s in (*STAGES, TOTAL)}
                for k, fr in frames.items()}

    def table(self) -> str:
        """A fixed-width text table: one row per frame type, p50/p95/max of the total and the
        p50 of each stage (ms)."""
        summ = self.summary()
        # only the stages this backend reports (fused-graph backends have no encoder/decoder split)
        stages = [s for s in STAGES if any(summ[k][s].max > 0 for k in KINDS)]
        head = f"{'frames':<13}{'count':>7}{'p50':>9}{'p95':>9}{'max':>9} |" + "".join(
            f"{s[:8]:>9}" for s in stages)
        lines = [head, "-" * len(head)]
        for k in KINDS:
            tot = summ[k][TOTAL]
            lines.append(f"{k:<13}{self.counts[k]:>7}{tot.p50:>9.2f}{tot.p95:>9.2f}{tot.max:>9.2f} |"
                         + "".join(f"{summ[k][s].p50:>9.2f}" for s in stages))
        lines.append("(milliseconds; stage columns are medians)")
        return "\n".join(lines)


class RateMeter:
    """Events per second over the last ``window_s`` seconds (monotonic clock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self.total += 1
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (n - 1) / span if span > 0 else 0.0


class Counters:
    """Named, thread-safe counters (rejected messages by reason, resets by reason...)."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._c: dict[str, int] = dict.fromkeys(names, 0)

    def inc(self, name: str, n: int = 1) -> int:
        with self._lock:
            self._c[name] = self._c.get(name, 0) + n
            return self._c[name]

    def get(self, name: str) -> int:
        return self._c.get(name, 0)

    def total(self) -> int:
        with self._lock:
            return sum(self._c.values())

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)
