"""Label-free consecutive-frame consistency on target video (issue 16, docs/adaptation.md,
"Temporal consistency"): ``adapt.method: temporal_consistency``.

Everything :mod:`keyframe_consistency` does (``kd`` + ``perturb``, ``adapt.consistency``), plus,
on the target clip's last two frames t-1 and t (consecutive frames of the video):

* ``temporal``: the student's output of frame t (the stage's path: a propagated or keyframe
  output in the joint stage) is pulled toward the teacher's keyframe output of frame t-1
  (eval mode, no gradient), **weighted per pixel by how unchanged the image is there**:
  ``w = exp(-(d / sigma)^2)`` with ``d`` the mean absolute RGB difference of the two frames,
  box-averaged over ``window`` pixels. The real clips are mostly shot from a still camera (bikes.mp4:
  phase correlation of consecutive frames peaks at a zero shift; it cuts between shots), so a pixel
  whose image did not change should not change class; moving objects and shot cuts get w ~ 0.
  The term is the mean over all pixels of ``w * D`` (KL summed over classes, L1 for depth and
  normals), so a cut frame contributes ~0 instead of being renormalised.
* ``temperature``: the teacher's semantic logits are divided by it in every term (kd, perturb,
  temporal); < 1 sharpens the targets, against the blander outputs that plain distillation gave.
* ``entropy``: weight of the mean per-pixel entropy of the student's semantic output of frame t
  (near-tie pixels are the ones that flip under sensor noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_perception.model.config import require

from .keyframe_consistency import ConsistencyConfig, KeyframeConsistency, consistency_loss, teacher_outputs
from .output_adversary import ADAPTATION


@dataclass
class TemporalConfig:
    """``adapt.temporal`` (used by ``method: temporal_consistency``)."""

    weight: float = 1.0  # the consecutive-frame term
    sigma: float = 0.05  # image change (RGB in [0, 1]) at which the pixel weight is 1/e
    window: int = 5  # box filter of the image difference (pixels, odd)
    temperature: float = 1.0  # teacher semantic logits / temperature in every term (< 1: sharper)
    entropy: float = 0.0  # weight of the student's semantic entropy on frame t

    def validate(self, prefix: str) -> None:
        for name in ("weight", "entropy"):
            v = getattr(self, name)
            require(v >= 0, f"{prefix}.{name}", v, "a number >= 0")
        require(self.sigma > 0, f"{prefix}.sigma", self.sigma, "a number > 0")
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        require(self.window >= 1 and self.window % 2 == 1, f"{prefix}.window", self.window,
                "an odd integer >= 1")


def static_weight(cur: Tensor, prev: Tensor, sigma: float, window: int = 1) -> Tensor:
    """(B, 1, H, W) in (0, 1]: ``exp(-(d / sigma)^2)``, ``d`` the box-averaged mean absolute RGB
    difference of ``cur`` and ``prev`` (B, 3, H, W) in [0, 1]."""
    d = (cur.float() - prev.float()).abs().mean(1, keepdim=True)
    if window > 1:
        d = F.avg_pool2d(d, window, 1, window // 2, count_include_pad=False)
    return torch.exp(-(d / sigma) ** 2)


def entropy(logits: Tensor) -> Tensor:
    """Mean per-pixel entropy (nats) of the softmax over dim 1."""
    logp = F.log_softmax(logits.float(), 1)
    return -(logp.exp() * logp).sum(1).mean()


@ADAPTATION.register("temporal_consistency")
class TemporalConsistency(KeyframeConsistency):
    """keyframe_consistency + the consecutive-frame term, teacher temperature and entropy."""

    def __init__(self, task_channels: dict[str, int], cfg: ConsistencyConfig | None = None,
                 temporal: TemporalConfig | None = None) -> None:
        super().__init__(task_channels, cfg)
        self.temporal = temporal or TemporalConfig()

    @classmethod
    def from_config(cls, task_channels: dict[str, int], aux: tuple[str, ...], a: Any) -> TemporalConsistency:
        del aux
        return cls(task_channels, a.consistency, a.temporal)

    def teacher(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        out = teacher_outputs(model, image)
        tau = self.temporal.temperature
        if "semantic" in out and not math.isclose(tau, 1.0):
            out["semantic"] = out["semantic"] / tau
        return out

    def forward(self, source: dict[str, Tensor], target: dict[str, Tensor], *, model: nn.Module,
                clip: Tensor, stage: str,
                student: Callable[[Tensor], dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """The keyframe_consistency terms plus ``temporal`` (unweighted, and ``temporal_<task>``),
        ``entropy`` and ``static`` (the mean pixel weight) for steps.jsonl; ``consistency`` (the
        total) includes ``weight * temporal + entropy_weight * entropy``."""
        out = super().forward(source, target, model=model, clip=clip, stage=stage, student=student)
        c = self.temporal
        total = out["consistency"]
        if c.weight > 0 and clip.shape[1] >= 2:
            prev = self.teacher(model, clip[:, -2])
            w = static_weight(clip[:, -1], clip[:, -2], c.sigma, c.window)
            tt, parts = consistency_loss(target, prev, self.weights, w)
            out.update({f"temporal_{t}": v.detach() for t, v in parts.items()})
            out["temporal"], out["static"] = tt.detach(), w.mean().detach()
            total = total + c.weight * tt
        if c.entropy > 0 and "semantic" in target:
            ent = entropy(target["semantic"])
            out["entropy"] = ent.detach()
            total = total + c.entropy * ent
        out["consistency"] = total
        return out
