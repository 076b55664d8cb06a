"""Temporal-consistency metrics against hand-computed sequences."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mtl_perception.temporal import (
    TemporalMeter,
    depth_change,
    masked_flip_share,
    normal_change,
)

SEQ = [np.array([[0, 0], [1, 1]]), np.array([[0, 1], [1, 1]]), np.array([[1, 1], [0, 0]])]


def test_flip_rate_hand_computed_sequence(tmp_path) -> None:
    m = TemporalMeter()
    for ids, key in zip(SEQ, (True, False, True)):
        m.update({"semantic": ids}, key)
    # 0->1: one of four pixels flips (0.25); 1->2: three of four (0.75); frame 2 is a keyframe.
    s = m.summary()
    assert s["flip"] == pytest.approx(0.5)
    assert s["flip.key"] == pytest.approx(0.75)
    assert s["flip.nonkey"] == pytest.approx(0.25)
    assert s["keyframe_rate"] == pytest.approx(2 / 3)
    out = m.write(tmp_path)
    assert json.loads((tmp_path / "temporal.json").read_text())["summary"]["flip"] == pytest.approx(0.5)
    assert (tmp_path / "temporal.png").stat().st_size > 1000 and out["flip"] == pytest.approx(0.5)


def test_no_transition_across_a_stream_reset() -> None:
    m = TemporalMeter()
    m.update({"semantic": SEQ[0]}, True)
    m.update({"semantic": SEQ[1]}, False)
    m.reset()
    m.update({"semantic": SEQ[2]}, True)  # no predecessor: not compared with SEQ[1]
    assert m.summary()["flip"] == pytest.approx(0.25)


def test_gt_masked_flip_rate_hand_computed() -> None:
    pred_prev, pred_cur = np.array([[0, 0], [1, 1]]), np.array([[1, 1], [1, 0]])
    gt_prev, gt_cur = np.array([[0, 0], [1, 255]]), np.array([[0, 2], [1, 1]])
    # GT unchanged and labelled in both: (0,0) and (1,0). Prediction flips at (0,0) only -> 1/2.
    assert masked_flip_share(pred_prev, pred_cur, gt_prev, gt_cur) == pytest.approx(0.5)
    assert math.isnan(masked_flip_share(pred_prev, pred_cur, gt_prev, np.full((2, 2), 255)))
    m = TemporalMeter()
    m.update({"semantic": pred_prev}, True, gt_prev)
    m.update({"semantic": pred_cur}, False, gt_cur)
    s = m.summary()
    assert s["flip_static"] == pytest.approx(0.5) and s["flip"] == pytest.approx(0.75)


def test_depth_and_normal_change_hand_computed() -> None:
    prev = np.array([[1.0, 2.0], [np.nan, 4.0]])
    cur = np.array([[1.5, 2.0], [3.0, 2.0]])
    assert depth_change(prev, cur) == pytest.approx(0.5)  # median of {0.5, 0, 0.5}
    n0 = np.zeros((1, 2, 3))
    n0[0, 0] = n0[0, 1] = (0, 0, 1)
    n1 = n0.copy()
    n1[0, 0] = (0, 2, 0)  # 90 degrees (length does not matter)
    assert normal_change(n0, n1) == pytest.approx(45.0)
