"""Per-task losses on the annotated frame: cross-entropy, L1 / berHu depth, 1 - cosine normals.

Every loss ignores invalid pixels the same way the metrics do (semantic 255, depth 0, normals
all-zero), so a frame with few labels neither dominates nor vanishes from the batch average, and
a batch with no valid pixel for a task contributes an exact zero (with a graph, so backward works).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
DEPTH_LOSSES = ("l1", "berhu")


def valid_mask(task: str, target: Tensor) -> Tensor:
    """The labelled pixels of a target that the task's loss averages over (the trainer counts
    them to normalise over the global batch under DDP)."""
    if task == "semantic":
        return target != IGNORE_INDEX
    if task == "depth":
        return target > 0
    if task == "normals":
        return target.abs().sum(dim=1) > 0
    raise KeyError(f"no loss for task {task!r}")


def semantic_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over labelled pixels. logits (B,N,H,W), target int64 (B,H,W)."""
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


def depth_loss(pred: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """L1 or berHu (reverse Huber, Laina et al. 2016) over pixels with depth > 0, in metres.

    berHu is L1 below ``c = 0.2 max|e|`` of the batch and quadratic above it: small errors keep
    L1's sharp gradient, large ones (far background) get more weight.
    """
    if kind not in DEPTH_LOSSES:
        raise ValueError(f"depth loss {kind!r}; allowed: {list(DEPTH_LOSSES)}")
    valid = valid_mask("depth", target)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    err = (pred - target).abs()[valid]
    if kind == "l1":
        return err.mean()
    # The threshold is a statistic of the batch, not a function to differentiate through.
    c = (0.2 * err.max()).detach().clamp_min(1e-6)
    return torch.where(err <= c, err, (err * err + c * c) / (2 * c)).mean()


def normals_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean ``1 - cos(pred, target)`` over pixels whose target normal is non-zero."""
    valid = valid_mask("normals", target)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    cos = F.cosine_similarity(pred, target, dim=1, eps=1e-6)
    return (1.0 - cos)[valid].mean()


def task_losses(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], tasks: tuple[str, ...],
                depth_kind: str = "l1") -> dict[str, Tensor]:
    """One scalar per task from the model's ``outputs`` and a batch's labels (same key names)."""
    out: dict[str, Tensor] = {}
    for t in tasks:
        if t == "semantic":
            out[t] = semantic_loss(outputs[t], targets[t])
        elif t == "depth":
            out[t] = depth_loss(outputs[t], targets[t], depth_kind)
        elif t == "normals":
            out[t] = normals_loss(outputs[t], targets[t])
        else:
            raise KeyError(f"no loss for task {t!r}")
    return out
