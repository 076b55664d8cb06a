"""Whole-clip streaming evaluation under a keyframe policy (``mtl-eval --temporal``, bench/keyframes.py).

The Sec. 4.1 protocol (training/evaluate.py) scores the last frame of short clips at each keyframe
offset of a *fixed* schedule; a content-driven policy has no offsets. Here every frame of each
clip is streamed once through ``MultiTaskVideoNet.forward_clip(..., policy=...)``, where the
policy (keyframe_policy, the node's own objects) decides the keyframes from the frames themselves;
every labelled frame is scored, and the temporal-consistency report (mtl_perception.temporal) is
measured on the same outputs. MACs per frame are the measured keyframe and non-keyframe step costs
weighted by the keyframe share the policy produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_perception.keyframe_policy import KeyframePolicy
from mtl_perception.model import MultiTaskVideoNet
from mtl_perception.temporal import TemporalMeter

from .evaluate import step_macs
from .metrics import MultiTaskMeter


@dataclass
class Stream:
    """One clip: images (T, 3, H, W) float [0, 1]; labels (T, ...) or None for unlabelled video."""

    name: str
    images: Tensor
    semantic: Tensor | None = None  # (T, H, W) int64, 255 = ignore
    depth: Tensor | None = None  # (T, 1, H, W) metres, 0 = invalid
    normals: Tensor | None = None  # (T, 3, H, W)


def _resize(x: Tensor, size: tuple[int, int], labels: bool) -> Tensor:
    """(T, [C,] H, W) to ``size``: nearest for labels (no invented classes), antialiased for images."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if not labels:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    y = x.float()[:, None] if x.dim() == 3 else x.float()
    y = F.interpolate(y, size=size, mode="nearest")
    return (y[:, 0] if x.dim() == 3 else y).to(x.dtype)


def from_arrays(name: str, rgb: np.ndarray, size: tuple[int, int], semantic: np.ndarray | None = None,
                depth: np.ndarray | None = None, normals: np.ndarray | None = None) -> Stream:
    """A sequence from (T, H, W, 3) RGB (uint8 or float [0, 1]) and optional (T, H, W[, 3]) labels."""
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()
    if rgb.dtype == np.uint8:
        img = img / 255.0
    seq = Stream(name, _resize(img, size, False))
    if semantic is not None:
        seq.semantic = _resize(torch.from_numpy(semantic.astype(np.int64)), size, True)
    if depth is not None:
        seq.depth = _resize(torch.from_numpy(depth.astype(np.float32))[:, None], size, True)
    if normals is not None:
        seq.normals = _resize(torch.from_numpy(normals.astype(np.float32)).permute(0, 3, 1, 2), size, True)
    return seq


def load_synthetic(root: str | Path, size: tuple[int, int], max_clips: int = 0) -> list[Stream]:
    """Every frame of every clip that `mtl-data generate` wrote under ``root``."""
    from .data import storage

    out = []
    for folder in storage.list_clips(root, max_clips or None):
        n = int(storage.read_meta(folder)["frames"])
        labels = [storage.read_labels(folder, t) for t in range(n)]
        out.append(from_arrays(folder.name, np.stack([storage.read_rgb(folder, t) for t in range(n)]), size,
                               np.stack([lb["semantic"] for lb in labels]),
                               np.stack([lb["depth"] for lb in labels]),
                               np.stack([lb["normals"] for lb in labels])))
    return out


def keyframe_macs(model: MultiTaskVideoNet, size: tuple[int, int] | None = None) -> tuple[float, float]:
    """(keyframe, non-keyframe) MACs of one step in a running stream (a K = 5 schedule's steady state;
    non-keyframe cost averaged over its positions)."""
    key = step_macs(model, "slowfast", 5, 0, 11, size)
    non = sum(step_macs(model, "slowfast", 5, o, 11, size) for o in range(1, 5)) / 4
    return key, non


@torch.no_grad()
def stream_evaluate(model: MultiTaskVideoNet, sequences: Iterable[Stream],
                    make_policy: Callable[[], KeyframePolicy], device: str | torch.device = "cpu",
                    macs: tuple[float, float] | None = None) -> tuple[dict[str, float], TemporalMeter]:
    """Accuracy over every labelled frame, temporal consistency, keyframe rate and MACs per frame.

    ``make_policy`` gives a fresh policy per clip (each clip is a new stream). ``macs`` =
    (keyframe, non-keyframe) step MACs, measured with :func:`keyframe_macs` when not given."""
    was_training = model.training
    model.eval()
    meter = MultiTaskMeter(model.tasks, model.cfg.num_classes)
    temporal = TemporalMeter()
    labelled = 0
    for seq in sequences:
        temporal.reset()
        # the policy decides each frame inside the model's clip loop: one code path for fixed and
        # adaptive; frame by frame, so a long sequence never holds all its outputs
        frames = model.iter_clip(seq.images[None].to(device), policy=make_policy())
        for t, (out, _) in enumerate(frames):
            reason = out["keyframe_reason"]
            targets = {}
            if seq.semantic is not None and "semantic" in model.tasks:
                targets["semantic"] = seq.semantic[t:t + 1].to(device)
            if seq.depth is not None and "depth" in model.tasks:
                targets["depth"] = seq.depth[t:t + 1].to(device)
            if seq.normals is not None and "normals" in model.tasks:
                targets["normals"] = seq.normals[t:t + 1].to(device)
            if targets:
                meter.update(out, targets)
                labelled += 1
            host = {}
            if "semantic" in out:
                host["semantic"] = out["semantic"][0].argmax(0).cpu().numpy()
            if "depth" in out:
                host["depth"] = out["depth"][0, 0].cpu().numpy()
            if "normals" in out:
                host["normals"] = out["normals"][0].permute(1, 2, 0).cpu().numpy()
            gt = seq.semantic[t].numpy() if seq.semantic is not None else None
            temporal.update(host, bool(out["is_keyframe"]), gt, reason)
    result = meter.compute() if labelled else {}
    summary = temporal.summary()
    result.update({f"temporal.{k}": v for k, v in summary.items()})
    key, non = macs if macs is not None else keyframe_macs(model)
    rate = summary["keyframe_rate"]
    result["macs"] = rate * key + (1 - rate) * non
    result["keyframe_rate"] = rate
    model.train(was_training)
    return result, temporal


def policy_name(policy: KeyframePolicy) -> str:
    d = policy.describe()
    if d["keyframe_policy"] == "fixed":
        return f"fixed K={d['keyframe_interval']}"
    return (f"adaptive [{d['keyframe_min_interval']}, {d['keyframe_max_interval']}] "
            f"rate {float(d['keyframe_target_rate']):.3f}")

