"""``adapt.method: keyframe_arrival`` (training/adapt/keyframe_arrival.py, issue 16) and
``adapt.bn_stats`` (training/adapt/mode.py): the arrival target is the eval-mode stream's
*propagated* output of frame t-1 (keyframe at frame 0), the term has its hand-computed value on a
1x2 example, config errors name the field, and frozen BN statistics do not move in train mode."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtl_perception.model import build_model
from mtl_perception.model.config import ConfigError, ModelConfig
from mtl_perception.model.schedule import keyframe_flags
from training.adapt import ADAPTATION
from training.adapt.config import AdaptConfig
from training.adapt.keyframe_arrival import ArrivalConfig, KeyframeArrival, stream_before_arrival
from training.adapt.keyframe_consistency import ConsistencyConfig
from training.adapt.mode import Adaptation
from training.adapt.temporal_consistency import TemporalConfig

ROOT = Path(__file__).resolve().parents[1]


class _CopyKeyframe(torch.nn.Module):
    """Keyframe: depth = the red channel; propagated frame: the last keyframe's depth (so a
    propagated output is recognisably not its own frame's). Semantic: uniform (two zero logits)."""

    def step(self, x: torch.Tensor, state: torch.Tensor | None, keyframe: bool
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        depth = x[:, :1].clone() if keyframe else state
        assert depth is not None
        return {"depth": depth, "semantic": torch.zeros(x.shape[0], 2, *x.shape[-2:])}, depth

    def forward_clip(self, clip: torch.Tensor, k: int, offset: int) -> tuple[list[dict], torch.Tensor]:
        state = None
        for t, key in enumerate(keyframe_flags(clip.shape[1], k, offset)):
            out, state = self.step(clip[:, t], state, key)
        return [out], state


def test_arrival_hand_computed() -> None:
    # 1x2 pixels, 3 frames: f0 red 0.5 (the stream's keyframe), f1 = 0 (t-1), f2 = t: pixel 0 = 0
    # (unchanged since t-1: weight 1), pixel 1 = 0.1 in every channel (d = sigma: weight 1/e).
    f0 = torch.full((1, 3, 1, 2), 0.5)
    f1 = torch.zeros(1, 3, 1, 2)
    f2 = f1.clone()
    f2[..., 1] = 0.1
    clip = torch.stack([f0, f1, f2], 1)
    m = KeyframeArrival({"semantic": 2, "depth": 1},
                        ConsistencyConfig(kd=0.0, perturb=1.0, depth=0.1, shift=0, jitter=0.0),
                        TemporalConfig(weight=0.0, sigma=0.1, window=1), ArrivalConfig(weight=3.0))
    model = _CopyKeyframe()
    out = m({}, {}, model=model, clip=clip, stage="slow",
            student=lambda x: model.step(x, None, True)[0])  # keyframe of the (unperturbed) frame t
    # student depth (0, 0.1) vs the propagated t-1 output = f0's red 0.5 (not f1's 0):
    # (1 * 0.5 + e^-1 * 0.4) / 2 pixels; semantic uniform on both sides: KL 0; depth weight 0.1
    arrival_depth = (0.5 + math.exp(-1.0) * 0.4) / 2
    assert float(out["arrival_depth"]) == pytest.approx(arrival_depth, rel=1e-5)
    assert float(out["arrival_semantic"]) == pytest.approx(0.0, abs=1e-7)
    assert float(out["perturb"]) == pytest.approx(0.0, abs=1e-6)  # student = keyframe teacher
    assert float(out["consistency"]) == pytest.approx(3.0 * 0.1 * arrival_depth, rel=1e-5)
    assert ADAPTATION.get("keyframe_arrival") is KeyframeArrival


def test_stream_before_arrival_is_the_propagated_eval_output() -> None:
    cfg = ModelConfig.from_yaml(ROOT / "config/model/tiny.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    h, w = model.cfg.input_size
    clip = torch.rand(2, 4, 3, h, w, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = stream_before_arrival(model, clip)
    assert model.training  # flags restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats untouched
    with torch.no_grad():  # by hand: keyframe at frame 0, frames 1-3 propagated, eval mode
        model.eval()
        ref, state = model.step(clip[:, 0], None, True)
        for t in (1, 2, 3):
            ref, state = model.step(clip[:, t], state, False)
    assert torch.equal(out["semantic"], ref["semantic"]) and torch.equal(out["depth"], ref["depth"])
    assert all(not v.requires_grad for v in out.values())


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="adapt.arrival.weight"):
        ArrivalConfig(weight=-1.0).validate("adapt.arrival")
    with pytest.raises(ConfigError, match="adapt.consistency.perturb"):
        KeyframeArrival({"semantic": 2}, ConsistencyConfig(perturb=0.0), None, ArrivalConfig(weight=1.0))
    with pytest.raises(ConfigError, match="adapt.bn_stats"):
        AdaptConfig(method="keyframe_arrival", bn_stats="thawed").validate(
            "adapt", ("semantic", "depth"), ["joint"], {"type": "video"})


def test_frozen_bn_stats_do_not_move_and_unfreezing_restores_momentum() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    a = object.__new__(Adaptation)  # only freeze_bn_stats' attribute: the model
    a.model = net
    x = torch.randn(8, 3, 5, 5) * 3 + 2
    a.freeze_bn_stats(True)
    y = net(x)
    assert torch.equal(net[1].running_mean, torch.zeros(4)) and torch.equal(net[1].running_var, torch.ones(4))
    # train mode still normalises with the batch's own statistics
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    a.freeze_bn_stats(False)
    assert net[1].momentum == pytest.approx(0.1)
    net(x)
    assert net[1].running_mean.abs().max() > 0.01  # updates again


def test_parameters_for_freezes_bn_stats_only_in_adapting_stages_with_bn_stats_frozen() -> None:
    """The trainer never calls freeze_bn_stats itself: parameters_for (once per stage) must."""
    from types import SimpleNamespace

    def momentum(bn_stats: str, stage: str) -> float:
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
        a = object.__new__(Adaptation)
        a.model, a.adversary, a.stages = net, torch.nn.Identity(), ("joint",)
        a.cfg = SimpleNamespace(adapt=SimpleNamespace(bn_stats=bn_stats))
        a.parameters_for(SimpleNamespace(name=stage))
        return net[1].momentum

    assert momentum("frozen", "joint") == 0.0
    assert momentum("frozen", "slow") == pytest.approx(0.1)  # a stage without adaptation
    assert momentum("train", "joint") == pytest.approx(0.1)
