"""Label-free keyframe-consistency adaptation (issue 16): cut the slow-fast stream's flicker on
unlabelled target video (docs/adaptation.md, "Keyframe consistency").

Two terms on the target clip's annotated (last) frame, both against a **teacher**: the same
network's slow path (the keyframe output, ``step(image, None, keyframe=True)``) run in eval mode
under ``no_grad``, i.e. exactly what the node would output if that frame were a keyframe:

* ``kd`` (a): where the student frame is *not* a keyframe (a propagated frame of the joint stage,
  or the fast-only output of the fast stage), its outputs are pulled toward the teacher's:
  ``KL(teacher || student)`` on the semantic softmax, L1 on depth and normals. This is the
  keyframe-agreement the card measures: each keyframe then switches less of the picture.
* ``perturb`` (b): the stage's single-frame path (slow network; fast-only in the fast stage) on a
  photometrically jittered, shifted copy of the frame is pulled toward the teacher's output on the
  clean frame, shifted the same way (compared on the overlap only). OS16 features are not
  shift-invariant, and sub-stride camera motion is what makes a per-frame network flicker.

The loss per term is ``sum_task w_task * D_task`` with ``D_semantic`` the per-pixel KL summed over
classes, ``D_depth`` / ``D_normals`` the mean absolute difference (metres / unit-vector
components), each averaged over the pixels (and the batch). Zero when student equals teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_perception.model.config import require

from .output_adversary import ADAPTATION


@dataclass
class ConsistencyConfig:
    """``adapt.consistency`` (used by ``method: keyframe_consistency``)."""

    kd: float = 1.0  # weight of (a) keyframe distillation on propagated / fast-only frames
    perturb: float = 0.5  # weight of (b) jitter + shift consistency of the single-frame path
    semantic: float = 1.0  # per-task weights inside each term
    depth: float = 0.1  # L1 in metres: ~10x the semantic KL's scale on street depth
    normals: float = 1.0
    shift: int = 8  # (b): largest shift in pixels (each axis), at the training resolution
    jitter: float = 0.2  # (b): brightness / contrast factors drawn from [1 - jitter, 1 + jitter]

    def validate(self, prefix: str) -> None:
        for name in ("kd", "perturb", "semantic", "depth", "normals"):
            v = getattr(self, name)
            require(v >= 0, f"{prefix}.{name}", v, "a number >= 0")
        require(self.kd > 0 or self.perturb > 0, f"{prefix}.kd", self.kd, "> 0 where perturb is 0")
        require(self.shift >= 0, f"{prefix}.shift", self.shift, "an integer >= 0 (pixels)")
        require(0 <= self.jitter < 1, f"{prefix}.jitter", self.jitter, "a number in [0, 1)")


def consistency_loss(student: dict[str, Tensor], teacher: dict[str, Tensor], weights: dict[str, float],
                     pixel_weight: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``(sum_task w_task * D_task, {task: D_task})`` over the tasks in ``weights`` that both
    dicts hold (see the module docstring). ``pixel_weight`` (B, 1, H, W), resized to each task's
    map by area: ``D_task`` is then ``mean(pixel_weight * D)`` over all pixels (not renormalised,
    so an all-zero weight gives 0). The teacher is detached: it never gets a gradient."""
    parts: dict[str, Tensor] = {}
    for task in weights:
        if task not in student or task not in teacher:
            continue
        s, t = student[task].float(), teacher[task].detach().float()
        if task == "semantic":
            d = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="none", log_target=True)
            d = d.sum(1, keepdim=True)
        else:
            d = (s - t).abs().mean(1, keepdim=True)
        if pixel_weight is not None:
            w = pixel_weight
            d = d * (w if w.shape[-2:] == d.shape[-2:] else F.interpolate(w, size=d.shape[-2:], mode="area"))
        parts[task] = d.mean()
    if not parts:
        raise ValueError(f"consistency_loss: no common task among {sorted(weights)}")
    total = torch.stack([weights[t] * v for t, v in parts.items()]).sum()
    return total, parts


def shift_slices(h: int, w: int, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(destination, source) slices of a translation by (dy, dx): ``shifted[dst] = image[src]``."""
    dst = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
    src = (slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0)))
    return dst, src


def perturb(image: Tensor, dy: int, dx: int, brightness: Tensor, contrast: Tensor) -> Tensor:
    """``image`` (B, 3, H, W) in [0, 1] with per-sample contrast (around its mean) and brightness
    factors (B,), translated by (dy, dx) with the border replicated."""
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    x = ((image - mean) * contrast.view(-1, 1, 1, 1) + mean) * brightness.view(-1, 1, 1, 1)
    x = x.clamp(0, 1)
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    x = F.pad(x, pad, mode="replicate")
    return x[..., max(-dy, 0): max(-dy, 0) + h, max(-dx, 0): max(-dx, 0) + w]


@contextmanager
def inference_mode_of(model: nn.Module) -> Iterator[None]:
    """``model`` as inference runs it: eval mode (BN running statistics, untouched), no gradient;
    every module's own train/eval flag is restored afterwards (not just the root's)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in modes:
            m.training = flag


def output_maps(out: dict[str, Any]) -> dict[str, Tensor]:
    """The floating-point maps of a model output, detached (a teacher's targets)."""
    return {k: v.detach() for k, v in out.items() if torch.is_tensor(v) and v.is_floating_point()}


def teacher_outputs(model: nn.Module, image: Tensor) -> dict[str, Tensor]:
    """The keyframe output of ``image`` (B, 3, H, W) as inference computes it
    (:func:`inference_mode_of`)."""
    with inference_mode_of(model):
        out, _ = model.step(image, None, True)
    return output_maps(out)


@ADAPTATION.register("keyframe_consistency")
class KeyframeConsistency(nn.Module):
    """The method object :class:`~training.adapt.mode.Adaptation` holds (no parameters)."""

    task_counts = (1, None)
    needs_model = True  # called with the model, the target clip and the stage name
    loss_keys = ("consistency",)  # what Adaptation.loss adds to the step's total

    def __init__(self, task_channels: dict[str, int], cfg: ConsistencyConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ConsistencyConfig()
        c = self.cfg
        self.weights = {t: w for t, w in (("semantic", c.semantic), ("depth", c.depth),
                                          ("normals", c.normals)) if t in task_channels and w > 0}
        # (student crop, source slices) of the last perturb term, or None
        self.last_perturbed: tuple[dict[str, Tensor], tuple[slice, slice]] | None = None

    @classmethod
    def from_config(cls, task_channels: dict[str, int], aux: tuple[str, ...], a: Any) -> KeyframeConsistency:
        del aux  # only the final outputs are compared
        return cls(task_channels, a.consistency)

    def teacher(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        """The targets of every term: :func:`teacher_outputs` (variants reshape them, e.g. sharpen)."""
        return teacher_outputs(model, image)

    def draw(self, batch: int, generator: torch.Generator | None = None) -> tuple[int, int, Tensor, Tensor]:
        """One shift (dy, dx) for the batch and per-sample brightness / contrast factors."""
        s, j = self.cfg.shift, self.cfg.jitter
        dy, dx = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=generator))
        b, c = (1 + j * (2 * torch.rand(2, batch, generator=generator) - 1)).unbind(0)
        return dy, dx, b, c

    def forward(self, source: dict[str, Tensor], target: dict[str, Tensor], *, model: nn.Module,
                clip: Tensor, stage: str,
                student: Callable[[Tensor], dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """``consistency`` (weighted, for the total) and the unweighted ``kd`` / ``perturb`` (and
        per task ``kd_<task>``, ``perturb_<task>``) for steps.jsonl. ``target``: the student's
        outputs of the clip's last frame through the stage's path. ``student``: the stage's
        single-frame path (B, 3, H, W) -> outputs as the trainer runs it (the fast stage's own
        decoders included); None: ``model.fast_only`` in the fast stage, the slow path otherwise."""
        del source
        image = clip[:, -1]
        teacher = self.teacher(model, image)
        zero = image.new_zeros(())
        out: dict[str, Tensor] = {}
        propagated = stage == "fast" or (stage == "joint" and not bool(target.get("is_keyframe", True)))
        kd = zero
        if self.cfg.kd > 0 and propagated:  # a keyframe student *is* the teacher's path
            kd, parts = consistency_loss(target, teacher, self.weights)
            out.update({f"kd_{t}": v.detach() for t, v in parts.items()})
        pt = zero
        self.last_perturbed = None
        if self.cfg.perturb > 0:
            dy, dx, b, c = self.draw(image.shape[0])
            x = perturb(image, dy, dx, b.to(image), c.to(image))
            if student is None:
                s_out = model.fast_only(x)[0] if stage == "fast" else model.step(x, None, True)[0]
            else:
                s_out = student(x)
            dst, src = shift_slices(*image.shape[-2:], dy, dx)
            # the compared tasks only: a path's outputs also hold e.g. a 0-d ``is_keyframe``
            s_crop = {k: s_out[k][..., dst[0], dst[1]] for k in self.weights if k in s_out}
            t_crop = {k: teacher[k][..., src[0], src[1]] for k in self.weights if k in teacher}
            pt, parts = consistency_loss(s_crop, t_crop, self.weights)
            out.update({f"perturb_{t}": v.detach() for t, v in parts.items()})
            # for variants that reuse the perturbed single-frame output (keyframe_arrival)
            self.last_perturbed = (s_crop, src)
        out["kd"], out["perturb"] = kd.detach(), pt.detach()
        out["consistency"] = self.cfg.kd * kd + self.cfg.perturb * pt
        return out
