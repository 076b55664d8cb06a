"""Temporal consistency of a stream's outputs, label-free (plus a GT-masked flip rate with labels).

Per transition t-1 -> t of consecutive outputs of one stream:

* ``flip``: share of pixels whose class id differs;
* ``depth``: median over valid pixels of |d_t - d_{t-1}| / d_{t-1} (relative depth change);
* ``normal``: mean angle (degrees) between the normals of the two outputs (unit vectors);
* ``flip_static`` (with ground truth): share of pixels whose predicted class flips among pixels
  whose ground-truth class did *not* change (both labelled) -- flicker separated from real change.

A transition counts as a keyframe transition when frame t is a keyframe. Used by ``mtl-eval``
(``--temporal``), ``mtl-perception-eval-bag`` and ``bench/keyframes.py``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = 255  # label id meaning "not labelled" in the ground truth


def flip_share(prev: np.ndarray, cur: np.ndarray) -> float:
    """Share of pixels whose class id changed between two (H, W) id maps."""
    return float(np.mean(np.asarray(prev) != np.asarray(cur)))


def masked_flip_share(prev: np.ndarray, cur: np.ndarray, gt_prev: np.ndarray, gt_cur: np.ndarray,
                      ignore: int = IGNORE) -> float:
    """Flip share among pixels whose ground truth is labelled in both frames and unchanged;
    NaN when there is no such pixel."""
    same = (gt_prev == gt_cur) & (gt_prev != ignore) & (gt_cur != ignore)
    n = int(same.sum())
    return float((np.asarray(prev)[same] != np.asarray(cur)[same]).sum() / n) if n else math.nan


def depth_change(prev: np.ndarray, cur: np.ndarray) -> float:
    """Median relative depth change over pixels valid (finite, > 0) in both maps; NaN if none."""
    p, c = np.asarray(prev, np.float64), np.asarray(cur, np.float64)
    ok = np.isfinite(p) & np.isfinite(c) & (p > 0) & (c > 0)
    return float(np.median(np.abs(c[ok] - p[ok]) / p[ok])) if ok.any() else math.nan


def normal_change(prev: np.ndarray, cur: np.ndarray) -> float:
    """Mean angle in degrees between two (H, W, 3) normal maps (zero / non-finite vectors skipped)."""
    p, c = np.asarray(prev, np.float64), np.asarray(cur, np.float64)
    npn, ncn = np.linalg.norm(p, axis=-1), np.linalg.norm(c, axis=-1)
    ok = (npn > 1e-6) & (ncn > 1e-6) & np.isfinite(npn) & np.isfinite(ncn)
    if not ok.any():
        return math.nan
    cos = (p[ok] * c[ok]).sum(-1) / (npn[ok] * ncn[ok])
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


@dataclass
class TemporalMeter:
    """Accumulates per-transition consistency over one or more streams (call :meth:`reset` between
    streams: the first frame of a stream has no predecessor)."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    _prev: dict[str, np.ndarray] | None = None
    _prev_gt: np.ndarray | None = None
    _stream: int = 0

    def reset(self) -> None:
        self._prev, self._prev_gt = None, None
        self._stream += 1

    def update(self, outputs: dict[str, np.ndarray], is_keyframe: bool, gt_semantic: np.ndarray | None = None,
               reason: str | None = None) -> None:
        """One output frame: ``outputs`` with any of semantic (H, W) ids, depth (H, W), normals (H, W, 3)."""
        rec: dict[str, Any] = {"frame": len(self.frames), "stream": self._stream,
                               "keyframe": bool(is_keyframe), "reason": reason or ""}
        prev = self._prev
        if prev is not None:
            if "semantic" in outputs and "semantic" in prev:
                rec["flip"] = flip_share(prev["semantic"], outputs["semantic"])
                if gt_semantic is not None and self._prev_gt is not None:
                    rec["flip_static"] = masked_flip_share(prev["semantic"], outputs["semantic"],
                                                           self._prev_gt, gt_semantic)
            if "depth" in outputs and "depth" in prev:
                rec["depth"] = depth_change(prev["depth"], outputs["depth"])
            if "normals" in outputs and "normals" in prev:
                rec["normal"] = normal_change(prev["normals"], outputs["normals"])
        self.frames.append(rec)
        self._prev = {k: np.asarray(v) for k, v in outputs.items() if k in ("semantic", "depth", "normals")}
        self._prev_gt = None if gt_semantic is None else np.asarray(gt_semantic)

    def summary(self) -> dict[str, float]:
        """Means over transitions: overall, ``.key`` (into a keyframe) and ``.nonkey``; plus
        ``keyframe_rate`` over all frames."""
        out: dict[str, float] = {"frames": float(len(self.frames)),
                                 "keyframe_rate": float(np.mean([f["keyframe"] for f in self.frames]))
                                 if self.frames else math.nan}
        for metric in ("flip", "flip_static", "depth", "normal"):
            if metric == "flip_static" and not any(metric in f for f in self.frames):
                continue  # no ground truth given
            for suffix, kind in (("", None), (".key", True), (".nonkey", False)):
                vals = [f[metric] for f in self.frames if metric in f and not math.isnan(f[metric])
                        and (kind is None or f["keyframe"] == kind)]
                out[metric + suffix] = float(np.mean(vals)) if vals else math.nan
        return out

    def write(self, folder: str | Path, name: str = "temporal") -> dict[str, float]:
        """``<name>.json`` (summary + per-frame rows) and ``<name>.png`` (per-frame flip rate with the
        keyframes marked) into ``folder``; returns the summary."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        (folder / f"{name}.json").write_text(json.dumps({"summary": summary, "frames": self.frames}, indent=1,
                                                        default=float) + "\n")
        plot_flips(self.frames, folder / f"{name}.png")
        return summary


def plot_flips(frames: list[dict[str, Any]], path: str | Path) -> None:
    """Per-frame flip rate (and the GT-masked one if present) with vertical keyframe marks."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    x = np.arange(len(frames))
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
    for k, f in enumerate(frames):
        if f["keyframe"]:
            ax.axvline(k, color="0.8", lw=0.8, zorder=0)
    flip = [100 * f.get("flip", math.nan) for f in frames]
    ax.plot(x, flip, lw=1.0, label="class flips %")
    if any("flip_static" in f for f in frames):
        ax.plot(x, [100 * f.get("flip_static", math.nan) for f in frames], lw=1.0,
                label="flips where GT unchanged %")
    ax.set_xlabel("frame (grey lines: keyframes)")
    ax.set_ylabel("% pixels")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_summary(s: dict[str, float]) -> str:
    """One-line-per-metric text of a :meth:`TemporalMeter.summary`."""
    def pct(v: float | None) -> str:
        return "-" if v is None or math.isnan(v) else f"{100 * v:.2f}%"

    def deg(v: float | None) -> str:
        return "-" if v is None or math.isnan(v) else f"{v:.2f}°"

    lines = [f"temporal consistency over {int(s['frames'])} frames, keyframe rate {pct(s['keyframe_rate'])}",
             "metric | all | into keyframe | into non-keyframe"]
    for metric, fmt, label in (("flip", pct, "class flips"), ("flip_static", pct, "flips, GT unchanged"),
                               ("depth", pct, "median rel. depth change"), ("normal", deg, "normal angle")):
        if metric in s:
            lines.append(f"{label} | {fmt(s.get(metric))} | {fmt(s.get(metric + '.key'))} | "
                         f"{fmt(s.get(metric + '.nonkey'))}")
    return "\n".join(lines)
