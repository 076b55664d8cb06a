"""Backend parity against the PyTorch FP32 reference, over a stream of frames.

One meter, used by the tests, the TensorRT FP16 self-check and the benchmark, so "parity" means
the same thing everywhere: semantic argmax agreement >= 99 %, mean depth relative difference
<= 1 %, mean normals angle <= 1 degree (all pixels of all frames pooled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_SEMANTIC_AGREEMENT = 0.99
MAX_DEPTH_REL = 0.01
MAX_NORMALS_DEG = 1.0


@dataclass
class ParityMeter:
    semantic_equal: int = 0
    semantic_total: int = 0
    depth_rel: list[np.ndarray] = field(default_factory=list)
    normals_deg: list[np.ndarray] = field(default_factory=list)

    def add(self, ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
        """``ref``/``out``: StepResult outputs of the reference and the backend under test."""
        if "semantic" in ref:
            self.semantic_equal += int((ref["semantic"] == out["semantic"]).sum())
            self.semantic_total += ref["semantic"].size
        if "depth" in ref:
            r = ref["depth"].astype(np.float64)
            self.depth_rel.append((np.abs(out["depth"] - r) / np.maximum(np.abs(r), 1e-6)).ravel())
        if "normals" in ref:
            cos = (ref["normals"].astype(np.float64) * out["normals"]).sum(-1)
            self.normals_deg.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).ravel())

    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        if self.semantic_total:
            m["semantic_agreement"] = self.semantic_equal / self.semantic_total
        if self.depth_rel:
            d = np.concatenate(self.depth_rel)
            m["depth_rel_mean"], m["depth_rel_p99"] = float(d.mean()), float(np.percentile(d, 99))
        if self.normals_deg:
            a = np.concatenate(self.normals_deg)
            m["normals_deg_mean"], m["normals_deg_p99"] = float(a.mean()), float(np.percentile(a, 99))
        return m

    def ok(self) -> bool:
        m = self.metrics()
        return (m.get("semantic_agreement", 1.0) >= MIN_SEMANTIC_AGREEMENT
                and m.get("depth_rel_mean", 0.0) <= MAX_DEPTH_REL
                and m.get("normals_deg_mean", 0.0) <= MAX_NORMALS_DEG)

    def summary(self) -> str:
        m = self.metrics()
        parts = []
        if "semantic_agreement" in m:
            parts.append(f"semantic {100 * m['semantic_agreement']:.2f}% agree")
        if "depth_rel_mean" in m:
            parts.append(f"depth rel {100 * m['depth_rel_mean']:.3f}% (p99 {100 * m['depth_rel_p99']:.3f}%)")
        if "normals_deg_mean" in m:
            parts.append(f"normals {m['normals_deg_mean']:.3f} deg (p99 {m['normals_deg_p99']:.3f})")
        return ", ".join(parts)
