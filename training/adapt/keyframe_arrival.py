"""Label-free consistency aimed at keyframe arrivals (issue 16, docs/adaptation.md, "Keyframe
arrival"): ``adapt.method: keyframe_arrival``.

On the shipped stage-4 model 17.6 % of bikes.mp4's pixels change class when a keyframe arrives
against 6.1 % between propagated frames: the slow path's output of frame t disagrees with what the
stream showed at t-1. Everything :mod:`temporal_consistency` does (``kd``, ``perturb``,
``temporal``, temperature, entropy), plus

* ``arrival``: the single-frame (keyframe) path's output of frame t is pulled toward the
  **eval-mode stream's propagated output of frame t-1** (no gradient), per pixel weighted by the
  static weight of frames t-1 / t (``temporal.sigma``, ``temporal.window``). The stream is the
  clip's frames 0 .. t-1 with a keyframe at frame 0 and keyframe interval T-1 (T = clip length), so
  frame t is exactly the stream's next keyframe: with ``data.clip_len`` 6 that is the K = 5
  stream's arrival (frames 1-4 propagated). The student is the perturb term's jittered, shifted
  copy of frame t (one single-frame forward serves both terms; compared on the overlap), so
  ``consistency.perturb`` must be > 0 (validated).

Why not only ``temporal``: its student is the stage's output of frame t, a keyframe in 1 of K joint
steps, and its target is the keyframe output of t-1 (the slow path's own, 9 % flicker at K = 1),
not what inference shows before a keyframe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mtl_perception.model.config import require

from .keyframe_consistency import ConsistencyConfig, consistency_loss, inference_mode_of, output_maps
from .output_adversary import ADAPTATION
from .temporal_consistency import TemporalConfig, TemporalConsistency, static_weight


@dataclass
class ArrivalConfig:
    """``adapt.arrival`` (used by ``method: keyframe_arrival``)."""

    weight: float = 1.0  # the arrival term

    def validate(self, prefix: str) -> None:
        require(self.weight >= 0, f"{prefix}.weight", self.weight, "a number >= 0")


def stream_before_arrival(model: nn.Module, frames: Tensor) -> dict[str, Tensor]:
    """The eval-mode stream's output of the last of ``frames`` (B, T', 3, H, W): keyframe at
    frame 0, interval T' (so the last frame is propagated when T' >= 2 and the next frame would be
    a keyframe); no gradient, BN statistics untouched, every module's train flag restored."""
    n = frames.shape[1]  # the last frame n-1 frames after the keyframe at frame 0
    with inference_mode_of(model):
        outs, _ = model.forward_clip(frames, n, n - 1)
    return output_maps(outs[-1])


@ADAPTATION.register("keyframe_arrival")
class KeyframeArrival(TemporalConsistency):
    """temporal_consistency + the keyframe-arrival term (see the module docstring)."""

    def __init__(self, task_channels: dict[str, int], cfg: ConsistencyConfig | None = None,
                 temporal: TemporalConfig | None = None, arrival: ArrivalConfig | None = None) -> None:
        super().__init__(task_channels, cfg, temporal)
        self.arrival = arrival or ArrivalConfig()
        require(self.arrival.weight == 0 or self.cfg.perturb > 0, "adapt.consistency.perturb",
                self.cfg.perturb, "> 0 with keyframe_arrival (its student is the perturbed frame)")

    @classmethod
    def from_config(cls, task_channels: dict[str, int], aux: tuple[str, ...], a: Any) -> KeyframeArrival:
        del aux
        return cls(task_channels, a.consistency, a.temporal, a.arrival)

    def forward(self, source: dict[str, Tensor], target: dict[str, Tensor], *, model: nn.Module,
                clip: Tensor, stage: str,
                student: Callable[[Tensor], dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """The temporal_consistency terms plus ``arrival`` (unweighted, and ``arrival_<task>``);
        ``consistency`` (the total) includes ``arrival.weight * arrival``."""
        out = super().forward(source, target, model=model, clip=clip, stage=stage, student=student)
        if self.arrival.weight > 0 and clip.shape[1] >= 3 and self.last_perturbed is not None:
            s_crop, src = self.last_perturbed
            before = stream_before_arrival(model, clip[:, :-1])
            c = self.temporal
            w = static_weight(clip[:, -1], clip[:, -2], c.sigma, c.window)[..., src[0], src[1]]
            t_crop = {k: before[k][..., src[0], src[1]] for k in s_crop if k in before}
            at, parts = consistency_loss(s_crop, t_crop, self.weights, w)
            out.update({f"arrival_{t}": v.detach() for t, v in parts.items()})
            out["arrival"] = at.detach()
            out["consistency"] = out["consistency"] + self.arrival.weight * at
        return out
