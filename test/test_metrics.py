"""Metrics against hand-computed tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from training.metrics import DepthMeter, MultiTaskMeter, NormalsMeter, SegmentationMeter, delta_m


def test_segmentation_hand_case() -> None:
    # gt:   0 0 1 255      pred: 0 1 1 0
    gt = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 0]]])
    m = SegmentationMeter(num_classes=3)
    m.update(pred, gt)
    r = m.compute()
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 1, union 2 -> 0.5; class 2 absent: excluded.
    assert r["miou"] == pytest.approx(50.0)
    assert r["pixel_acc"] == pytest.approx(100.0 * 2 / 3)
    # logits input and batching give the same confusion matrix
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    m2 = SegmentationMeter(3)
    m2.update(logits[..., :2], gt[..., :2])
    m2.update(logits[..., 2:], gt[..., 2:])
    assert torch.equal(m.confusion, m2.confusion)
    m.reset()
    assert int(m.confusion.sum()) == 0


def test_depth_hand_case() -> None:
    gt = torch.tensor([[[[2.0, 4.0, 0.0, 1.0]]]])
    pred = torch.tensor([[[[3.0, 4.0, 9.0, 2.0]]]])
    m = DepthMeter()
    m.update(pred, gt)
    r = m.compute()
    # valid: (3,2) (4,4) (2,1): abs errors 1, 0, 1
    assert r["abs_err"] == pytest.approx(2 / 3)
    assert r["abs_rel"] == pytest.approx((0.5 + 0 + 1.0) / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(2 / 3))
    # ratios 1.5, 1, 2 -> one of three below 1.25
    assert r["delta1"] == pytest.approx(100 / 3)


def test_normals_hand_case() -> None:
    z = torch.tensor([0.0, 0.0, 1.0])
    s = math.sqrt(0.5)
    gt = torch.stack([z, z, z, z, torch.zeros(3)], dim=1).view(1, 3, 1, 5)
    pred = torch.stack([z, torch.tensor([0.0, s, s]), torch.tensor([1.0, 0.0, 0.0]),
                        torch.tensor([0.0, math.sin(math.radians(20)), math.cos(math.radians(20))]),
                        z], dim=1).view(1, 3, 1, 5) * 3.0  # scale must not matter
    m = NormalsMeter()
    m.update(pred, gt)
    r = m.compute()
    angles = [0.0, 45.0, 90.0, 20.0]  # the fifth pixel has no ground truth
    assert r["mean_angle"] == pytest.approx(sum(angles) / 4, abs=1e-6)
    assert r["median_angle"] == pytest.approx(20.0, abs=0.01)  # lower median of 0, 20, 45, 90
    assert r["within_11_25"] == pytest.approx(25.0)
    assert r["within_22_5"] == pytest.approx(50.0)
    assert r["within_30"] == pytest.approx(50.0)


def test_multitask_meter_and_delta_m() -> None:
    m = MultiTaskMeter(("semantic", "depth"), num_classes=2)
    m.update({"semantic": torch.tensor([[[0, 1]]]), "depth": torch.ones(1, 1, 1, 2)},
             {"semantic": torch.tensor([[[0, 1]]]), "depth": torch.full((1, 1, 1, 2), 2.0)})
    r = m.compute()
    assert r["miou"] == pytest.approx(100.0) and r["abs_err"] == pytest.approx(1.0)
    # MTI-Net Eq. 2: +10% mIoU and +10% (worse) depth error -> 0
    assert delta_m({"miou": 55.0, "abs_err": 1.1}, {"miou": 50.0, "abs_err": 1.0}) == pytest.approx(0.0)
    # lower error is better: -20% error, same mIoU -> +10%
    assert delta_m({"miou": 50.0, "abs_err": 0.8}, {"miou": 50.0, "abs_err": 1.0}) == pytest.approx(10.0)
    assert delta_m({"mean_angle": 18.0}, {"mean_angle": 20.0}, ["mean_angle"]) == pytest.approx(10.0)
