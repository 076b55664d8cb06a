"""Dense-prediction metrics as in MILA Sec. 4.2 and the multi-task score of MTI-Net Eq. 2.

One meter per metric family, all behind ``update(pred, target) / compute() / reset()``. Meters
accumulate dataset-level sums (a confusion matrix, per-pixel error sums, an angle histogram), so
the result does not depend on how frames are batched and memory stays constant for any dataset.

Units: mIoU, pixel accuracy, delta < 1.25 and the "within" shares are percentages; depth errors
are metres (``abs_rel`` a fraction); angles are degrees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

IGNORE_INDEX = 255

# Which direction is better for each metric key (MTI-Net Eq. 2: l_i = 1 when lower is better).
HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True, "pixel_acc": True,
    "abs_err": False, "abs_rel": False, "rmse": False, "delta1": True,
    "mean_angle": False, "median_angle": False, "within_11_25": True, "within_22_5": True,
    "within_30": True,
}
# Metrics Delta_m averages by default: one or two per task, as MTI-Net/DenseMTL report them.
DEFAULT_DELTA_KEYS: dict[str, tuple[str, ...]] = {
    "semantic": ("miou",),
    "depth": ("abs_err",),
    "normals": ("mean_angle",),
}


class Meter:
    """Interface: accumulate with :meth:`update`, read with :meth:`compute`, clear with :meth:`reset`."""

    def update(self, pred: Tensor, target: Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class SegmentationMeter(Meter):
    """mIoU and pixel accuracy from a confusion matrix over labelled pixels.

    mIoU averages over classes that occur in the ground truth or the prediction (union > 0):
    a class absent from both has an undefined IoU and must not count as 0 or 1.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred: logits (B,N,H,W) or class ids (B,H,W); target: ids (B,H,W), ``ignore_index`` skipped."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(dim=1)
        pred = pred.reshape(-1).long().cpu()
        target = target.reshape(-1).long().cpu()
        valid = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        idx = target[valid] * self.num_classes + pred[valid]
        self.confusion += torch.bincount(idx, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        total = cm.sum()
        miou = (tp[present] / union[present]).mean().item() if bool(present.any()) else math.nan
        acc = (tp.sum() / total).item() if total > 0 else math.nan
        return {"miou": 100.0 * miou, "pixel_acc": 100.0 * acc}

    def per_class_iou(self) -> list[float]:
        cm = self.confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        return [100.0 * (t / u).item() if u > 0 else math.nan for t, u in zip(tp, union)]


class DepthMeter(Meter):
    """Absolute error, relative error, RMSE and the share with max(p/g, g/p) < 1.25, over pixels
    with ground-truth depth > 0 (pooled over the dataset)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.abs_sum = 0.0
        self.rel_sum = 0.0
        self.sq_sum = 0.0
        self.delta1 = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred = pred.detach().reshape(-1).double().cpu()
        target = target.detach().reshape(-1).double().cpu()
        valid = target > 0
        p, g = pred[valid], target[valid]
        err = p - g
        self.n += int(g.numel())
        self.abs_sum += err.abs().sum().item()
        self.rel_sum += (err.abs() / g).sum().item()
        self.sq_sum += (err * err).sum().item()
        ratio = torch.maximum(p / g, g / p.clamp_min(1e-12))
        self.delta1 += int((ratio < 1.25).sum().item())

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {k: math.nan for k in ("abs_err", "abs_rel", "rmse", "delta1")}
        return {"abs_err": self.abs_sum / self.n, "abs_rel": self.rel_sum / self.n,
                "rmse": math.sqrt(self.sq_sum / self.n), "delta1": 100.0 * self.delta1 / self.n}


class NormalsMeter(Meter):
    """Mean and median angle (degrees) and the shares within 11.25, 22.5 and 30 degrees, over
    pixels with a non-zero ground-truth normal.

    The median comes from a histogram of ``bins_per_degree`` bins per degree (the bin centre, so
    within 0.5 / bins_per_degree degrees of the exact median) instead of storing every angle.
    """

    THRESHOLDS = (11.25, 22.5, 30.0)

    def __init__(self, bins_per_degree: int = 100) -> None:
        self.bins_per_degree = bins_per_degree
        self.reset()

    def reset(self) -> None:
        self.hist = torch.zeros(180 * self.bins_per_degree, dtype=torch.int64)
        self.n = 0
        self.angle_sum = 0.0
        self.within = [0 for _ in self.THRESHOLDS]

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred = pred.detach().double().cpu()
        target = target.detach().double().cpu()
        valid = target.abs().sum(dim=1) > 0
        p = torch.nn.functional.normalize(pred, dim=1, eps=1e-12).movedim(1, -1)[valid]
        g = torch.nn.functional.normalize(target, dim=1, eps=1e-12).movedim(1, -1)[valid]
        angle = torch.rad2deg(torch.acos((p * g).sum(-1).clamp(-1.0, 1.0)))
        self.n += int(angle.numel())
        self.angle_sum += angle.sum().item()
        for i, thr in enumerate(self.THRESHOLDS):
            self.within[i] += int((angle < thr).sum().item())
        idx = (angle * self.bins_per_degree).long().clamp(0, self.hist.numel() - 1)
        self.hist += torch.bincount(idx, minlength=self.hist.numel())

    def compute(self) -> dict[str, float]:
        keys = ("mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30")
        if self.n == 0:
            return {k: math.nan for k in keys}
        cum = torch.cumsum(self.hist, 0)
        median_bin = int(torch.searchsorted(cum, torch.tensor((self.n + 1) // 2)).item())
        median = (median_bin + 0.5) / self.bins_per_degree
        shares = [100.0 * w / self.n for w in self.within]
        return dict(zip(keys, [self.angle_sum / self.n, median, *shares]))


class MultiTaskMeter(Meter):
    """One meter per task; ``update`` takes the model's output dict and the batch's label dict."""

    def __init__(self, tasks: tuple[str, ...], num_classes: int) -> None:
        factories = {"semantic": lambda: SegmentationMeter(num_classes), "depth": DepthMeter,
                     "normals": NormalsMeter}
        self.meters: dict[str, Meter] = {t: factories[t]() for t in tasks}
        # Tasks the data labelled at all: a dataset without a task (Cityscapes normals) gives no
        # metric for it rather than NaN, so Delta_m compares the tasks that were measured.
        self.seen: set[str] = set()

    def reset(self) -> None:
        self.seen = set()
        for m in self.meters.values():
            m.reset()

    def update(self, pred: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> None:  # type: ignore[override]
        for t, m in self.meters.items():
            if t in target:
                m.update(pred[t], target[t])
                self.seen.add(t)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t, m in self.meters.items():
            if t in self.seen:
                out.update(m.compute())
        return out


def delta_m(metrics: Mapping[str, float], baseline: Mapping[str, float],
            keys: list[str] | tuple[str, ...] | None = None) -> float:
    """Multi-task score of MTI-Net Eq. 2, in percent:
    ``(1/T) sum_i (-1)^{l_i} (M_m,i - M_b,i) / M_b,i`` with ``l_i = 1`` when lower is better.

    ``keys`` default to one headline metric per task present in both dicts (mIoU, abs. depth
    error, mean angle). Positive means better than the baseline.
    """
    if keys is None:
        keys = [k for ks in DEFAULT_DELTA_KEYS.values() for k in ks if k in metrics and k in baseline]
    if not keys:
        raise ValueError("delta_m: no metric shared by the model and the baseline")
    total = 0.0
    for k in keys:
        b = baseline[k]
        if b == 0 or math.isnan(b):
            raise ValueError(f"delta_m: baseline {k} = {b} cannot normalise")
        sign = 1.0 if HIGHER_IS_BETTER[k] else -1.0
        total += sign * (metrics[k] - b) / b
    return 100.0 * total / len(keys)
