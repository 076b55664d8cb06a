"""Accuracy gates for reduced-precision backends (INT8, BF16) against the FP32 model.

Checked on held-out frames, streamed with state at the node's keyframe interval:

- semantic argmax agreement with FP32 >= 99 % (at most 1 point of pixels change class),
- mIoU at most 1 point below FP32's,
- depth abs-rel at most +1 % absolute above FP32's,
- normals mean angle at most +1 degree above FP32's.

mIoU, abs-rel and angle are measured against labels when the frames have them (synthetic clips),
else against the FP32 outputs themselves (then FP32 scores 100 % / 0 / 0 deg and the gate bounds the
deviation from FP32 directly: a stricter test, since a deviation can only move a score by as much).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .base import Backend


@dataclass(frozen=True)
class Gates:
    min_agreement: float = 0.99
    max_miou_drop: float = 0.01
    max_absrel_increase: float = 0.01
    max_normals_deg_increase: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _angle_sum(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    cos = np.clip((a.astype(np.float64) * b).sum(-1) / np.maximum(
        np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos))[valid].sum())


@dataclass
class GateMeter:
    """Pooled over all pixels of all frames; ``ref`` = FP32, ``test`` = the reduced precision."""

    num_classes: int
    equal: int = 0
    total: int = 0
    conf: dict[str, np.ndarray] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def _acc(self, key: str, value: float, n: int) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + n

    def add(self, ref: dict[str, np.ndarray], test: dict[str, np.ndarray],
            labels: dict[str, np.ndarray] | None = None) -> None:
        lab = labels if labels is not None else ref
        if "semantic" in ref:
            self.equal += int((ref["semantic"] == test["semantic"]).sum())
            self.total += ref["semantic"].size
            gt = lab["semantic"].astype(np.int64).ravel()
            ok = (gt >= 0) & (gt < self.num_classes)
            k = self.num_classes
            for name, out in (("ref", ref), ("test", test)):
                pred = np.clip(out["semantic"].astype(np.int64).ravel(), 0, k - 1)
                cm = np.bincount(gt[ok] * k + pred[ok], minlength=k * k).reshape(k, k)
                self.conf[name] = self.conf.get(name, 0) + cm
        if "depth" in ref:
            gt = lab["depth"].astype(np.float64)
            valid = gt > 1e-6
            for name, out in (("ref", ref), ("test", test)):
                self._acc(f"absrel_{name}", float((np.abs(out["depth"] - gt)[valid] / gt[valid]).sum()),
                          int(valid.sum()))
        if "normals" in ref:
            gt = lab["normals"]
            valid = np.linalg.norm(gt, axis=-1) > 0.5  # label 0 = invalid
            for name, out in (("ref", ref), ("test", test)):
                self._acc(f"deg_{name}", _angle_sum(out["normals"], gt, valid), int(valid.sum()))

    @staticmethod
    def _miou(cm: np.ndarray) -> float:
        inter = np.diag(cm).astype(np.float64)
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        present = union > 0
        return float((inter[present] / union[present]).mean()) if present.any() else 1.0

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        if self.total:
            m["agreement"] = self.equal / self.total
            m["miou_ref"], m["miou_test"] = self._miou(self.conf["ref"]), self._miou(self.conf["test"])
        for key, s in self.sums.items():
            m[key] = s / max(1, self.counts[key])
        return m

    def failures(self, gates: Gates) -> list[str]:
        """One line per missed gate (empty: all passed)."""
        m, bad = self.metrics(), []
        if "agreement" in m:
            if m["agreement"] < gates.min_agreement:
                bad.append(f"semantic agreement {100 * m['agreement']:.2f}% "
                           f"< {100 * gates.min_agreement:.2f}%")
            if m["miou_ref"] - m["miou_test"] > gates.max_miou_drop:
                bad.append(f"mIoU {100 * m['miou_test']:.2f} vs FP32 {100 * m['miou_ref']:.2f} "
                           f"(> {100 * gates.max_miou_drop:.2f} points lower)")
        if "absrel_ref" in m and m["absrel_test"] - m["absrel_ref"] > gates.max_absrel_increase:
            bad.append(f"depth abs-rel {100 * m['absrel_test']:.2f}% vs FP32 {100 * m['absrel_ref']:.2f}%")
        if "deg_ref" in m and m["deg_test"] - m["deg_ref"] > gates.max_normals_deg_increase:
            bad.append(f"normals {m['deg_test']:.2f} deg vs FP32 {m['deg_ref']:.2f} deg")
        return bad

    def summary(self) -> str:
        m = self.metrics()
        parts = []
        if "agreement" in m:
            parts.append(f"agree {100 * m['agreement']:.2f}%, mIoU {100 * m['miou_test']:.2f} "
                         f"(FP32 {100 * m['miou_ref']:.2f})")
        if "absrel_ref" in m:
            parts.append(f"abs-rel {100 * m['absrel_test']:.3f}% (FP32 {100 * m['absrel_ref']:.3f}%)")
        if "deg_ref" in m:
            parts.append(f"normals {m['deg_test']:.3f} deg (FP32 {m['deg_ref']:.3f})")
        return ", ".join(parts)


def stream_outputs(backend: Backend, clip: np.ndarray, keyframe_interval: int) -> list[dict[str, np.ndarray]]:
    """Outputs of every frame of one clip, streamed with state from a keyframe at frame 0."""
    state: Any = None
    outs = []
    for t, img in enumerate(clip):
        res = backend.step(img, state, t % keyframe_interval == 0)
        state = res.state
        outs.append(res.outputs)
    return outs


def measure(ref: Backend, test: Backend, clips: Sequence[np.ndarray], keyframe_interval: int = 5,
            labels: Sequence[Sequence[dict[str, np.ndarray]]] | None = None) -> GateMeter:
    """Stream both backends over ``clips`` and pool the gate metrics (labels per clip and frame)."""
    return measure_against([stream_outputs(ref, c, keyframe_interval) for c in clips], test, clips,
                           keyframe_interval, labels)


def measure_against(ref_outs: Sequence[Sequence[dict[str, np.ndarray]]], test: Backend,
                    clips: Sequence[np.ndarray], keyframe_interval: int = 5,
                    labels: Sequence[Sequence[dict[str, np.ndarray]]] | None = None) -> GateMeter:
    """:func:`measure` against reference outputs streamed already (per clip, :func:`stream_outputs`
    with the same ``keyframe_interval``): FP32 streamed once for several candidates."""
    meter = GateMeter(test.num_classes)
    for i, (clip, ro) in enumerate(zip(clips, ref_outs)):
        for t, (ra, rb) in enumerate(zip(ro, stream_outputs(test, clip, keyframe_interval))):
            meter.add(ra, rb, labels[i][t] if labels is not None else None)
    return meter
