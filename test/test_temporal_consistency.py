"""``adapt.method: temporal_consistency`` (training/adapt/temporal_consistency.py, issue 16): the
pixel weight is 1 where the image did not change and exp(-(d/sigma)^2) where it did; the weighted
term has the hand-computed value and is zero on changed pixels; the teacher temperature sharpens
the semantic targets; the entropy has its closed form; the method is registered and its config
errors name the field."""

from __future__ import annotations

import math

import pytest
import torch

from mtl_perception.model.config import ConfigError
from training.adapt import ADAPTATION
from training.adapt.keyframe_consistency import ConsistencyConfig, consistency_loss
from training.adapt.temporal_consistency import (
    TemporalConfig,
    TemporalConsistency,
    entropy,
    static_weight,
)


def test_static_weight_hand_values() -> None:
    prev = torch.zeros(1, 3, 2, 2)
    cur = prev.clone()
    cur[0, :, 0, 0] = 0.1  # one pixel changed by 0.1 in every channel: d = 0.1
    cur[0, 0, 1, 1] = 0.3  # one channel only: d = 0.3 / 3 = 0.1 as well
    w = static_weight(cur, prev, sigma=0.1, window=1)
    assert w.shape == (1, 1, 2, 2)
    assert float(w[0, 0, 0, 1]) == pytest.approx(1.0)  # unchanged
    assert float(w[0, 0, 1, 0]) == pytest.approx(1.0)
    assert float(w[0, 0, 0, 0]) == pytest.approx(math.exp(-1.0), rel=1e-5)  # d = sigma
    assert float(w[0, 0, 1, 1]) == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_static_weight_window_spreads_the_change() -> None:
    prev = torch.zeros(1, 3, 1, 3)
    cur = prev.clone()
    cur[..., 0] = 0.3  # d = 0.3 at the left pixel
    # 3-wide box without the padded zeros: left (0.3 + 0) / 2, middle 0.3 / 3, right 0 / 2
    w = static_weight(cur, prev, sigma=0.1, window=3)[0, 0, 0]
    expect = [math.exp(-(0.15 / 0.1) ** 2), math.exp(-(0.1 / 0.1) ** 2), 1.0]
    assert w.tolist() == pytest.approx(expect, rel=1e-5)


def test_weighted_consistency_hand_computed() -> None:
    # 2 classes, 2 pixels. Pixel 0: teacher logits (ln 3, 0) -> (3/4, 1/4), student (0, 0) ->
    # (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2). Pixel 1: same disagreement, weight 0.
    s = {"semantic": torch.zeros(1, 2, 1, 2), "depth": torch.tensor([[[[1.0, 5.0]]]])}
    t = {"semantic": torch.tensor([[[[math.log(3), math.log(3)]], [[0.0, 0.0]]]]),
         "depth": torch.tensor([[[[3.0, 1.0]]]])}
    w = torch.tensor([[[[1.0, 0.0]]]])
    total, parts = consistency_loss(s, t, {"semantic": 1.0, "depth": 0.1}, w)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(parts["semantic"]) == pytest.approx(kl / 2, rel=1e-5)  # mean over both pixels
    assert float(parts["depth"]) == pytest.approx(2.0 / 2, rel=1e-5)  # |1 - 3| at the weighted one
    assert float(total) == pytest.approx(kl / 2 + 0.1, rel=1e-5)
    # all weight on the changed pixel only -> the unchanged pixel's disagreement does not count
    total0, _ = consistency_loss(s, t, {"semantic": 1.0, "depth": 0.1}, torch.zeros(1, 1, 1, 2))
    assert float(total0) == 0.0
    # a weight at twice the width is area-resized to the outputs' map: (1, 1, 0, 0) -> (1, 0)
    total2, _ = consistency_loss(s, t, {"semantic": 1.0, "depth": 0.1}, torch.tensor([[[[1.0, 1, 0, 0]]]]))
    assert float(total2) == pytest.approx(kl / 2 + 0.1, rel=1e-5)
    # area, not nearest: (1, 0, 0, 0) -> (0.5, 0): half of pixel 0's KL and |1 - 3| = 2
    total3, _ = consistency_loss(s, t, {"semantic": 1.0, "depth": 0.1}, torch.tensor([[[[1.0, 0, 0, 0]]]]))
    assert float(total3) == pytest.approx(0.5 * kl / 2 + 0.1 * 0.5 * 2.0 / 2, rel=1e-5)
    # no weight: the plain mean over both pixels (pixel 1: same KL, |5 - 1| = 4)
    total1, _ = consistency_loss(s, t, {"semantic": 1.0, "depth": 0.1})
    assert float(total1) == pytest.approx(kl + 0.1 * 3.0, rel=1e-5)


def test_entropy_closed_form() -> None:
    uniform = torch.zeros(2, 4, 3, 3)
    assert float(entropy(uniform)) == pytest.approx(math.log(4), rel=1e-6)
    peaked = torch.zeros(1, 4, 1, 1)
    peaked[0, 0] = 50.0
    assert float(entropy(peaked)) == pytest.approx(0.0, abs=1e-6)


def test_temperature_sharpens_the_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = torch.tensor([[[[1.0]], [[0.0]]]])
    from training.adapt import temporal_consistency as tc
    monkeypatch.setattr(tc, "teacher_outputs", lambda model, image: {"semantic": logits.clone()})
    m = TemporalConsistency({"semantic": 2}, temporal=TemporalConfig(temperature=0.5))
    out = m.teacher(torch.nn.Identity(), torch.zeros(1, 3, 1, 1))
    assert out["semantic"].flatten().tolist() == pytest.approx([2.0, 0.0])
    assert ADAPTATION.get("temporal_consistency") is TemporalConsistency


@pytest.mark.parametrize("field,value", [("sigma", 0.0), ("temperature", -1.0), ("window", 4),
                                         ("weight", -0.5), ("entropy", -1.0)])
def test_config_errors_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"adapt.temporal.{field}"):
        TemporalConfig(**{field: value}).validate("adapt.temporal")


class _RedDepth(torch.nn.Module):
    """Single-frame outputs: depth = the red channel, semantic = two equal (uniform) logits."""

    def step(self, x: torch.Tensor, state: object, keyframe: bool) -> tuple[dict[str, torch.Tensor], None]:
        return {"depth": x[:, :1].clone(), "semantic": torch.zeros(x.shape[0], 2, *x.shape[-2:])}, None


def test_forward_total_is_weight_times_temporal_plus_entropy_weight_times_entropy() -> None:
    # 1x2 frames: pixel 0 unchanged, pixel 1 +0.1 in every channel (d = sigma: w = 1/e)
    prev = torch.zeros(1, 3, 1, 2)
    cur = prev.clone()
    cur[..., 1] = 0.1
    clip = torch.stack([prev, cur], 1)  # (B, T=2, 3, H, W)
    m = TemporalConsistency({"semantic": 2, "depth": 1}, ConsistencyConfig(kd=0.0, perturb=0.0),
                            TemporalConfig(weight=2.0, sigma=0.1, window=1, entropy=0.5))
    student = {"depth": cur[:, :1], "semantic": torch.zeros(1, 2, 1, 2)}
    out = m({}, student, model=_RedDepth(), clip=clip, stage="slow")
    # depth vs the teacher's frame t-1: |0.1 - 0| at pixel 1 only, weighted 1/e, mean over 2 pixels;
    # semantic: student = teacher (uniform), KL 0; depth's task weight is ConsistencyConfig's 0.1
    temporal = 0.1 * (0.1 * math.exp(-1.0) / 2)
    assert float(out["temporal"]) == pytest.approx(temporal, rel=1e-5)
    assert float(out["entropy"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(out["static"]) == pytest.approx((1 + math.exp(-1.0)) / 2, rel=1e-5)
    assert float(out["consistency"]) == pytest.approx(2.0 * temporal + 0.5 * math.log(2), rel=1e-5)
