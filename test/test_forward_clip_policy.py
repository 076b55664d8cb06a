"""``forward_clip`` takes the keyframe policy object (issue 15): the node's fixed and adaptive
policies run through the same clip loop as training and the Sec. 4.1 protocol; streaming
evaluation (training/stream_eval.py) goes through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtl_perception.keyframe_policy import AdaptivePolicy, FixedPolicy
from mtl_perception.model import ModelConfig, build_model
from training.stream_eval import Stream, stream_evaluate

H, W = 32, 64  # a quarter of the tiny model's input: any multiple of the output stride streams


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig.from_yaml("config/model/tiny.yaml")).eval()


def _clip(t: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, t, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 3])
def test_fixed_policy_reproduces_the_fixed_schedule_exactly(model: torch.nn.Module, k: int) -> None:
    T = 8
    clip = _clip(T)
    with torch.no_grad():
        old, s_old = model.forward_clip(clip, k, (T - 1) % k, all_frames=True)
        new, s_new = model.forward_clip(clip, policy=FixedPolicy(k), all_frames=True)
    expected = [t % k == 0 for t in range(T)]  # by hand: a stream starts on a keyframe, then every K-th
    assert [bool(o["is_keyframe"]) for o in new] == expected
    assert [o["keyframe_reason"] for o in new] == ["reset" if t == 0 else "interval" if e else None
                                                   for t, e in enumerate(expected)]
    assert [bool(o["is_keyframe"]) for o in old] == expected
    for a, b in zip(old, new):
        for task in model.tasks:
            assert torch.equal(a[task], b[task])
    assert s_old.frames == s_new.frames == T


def _cut_clip(before: int, after: int) -> torch.Tensor:
    """A still shot (with a little sensor noise), then a hard cut to another still shot."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, H, W, generator=g), torch.rand(3, H, W, generator=g) * 0.5 + 0.5
    frames = [a] * before + [b] * after
    noise = [0.004 * torch.randn(3, H, W, generator=g) for _ in frames]
    return torch.stack([(f + n).clamp(0, 1) for f, n in zip(frames, noise)])[None]


def test_adaptive_policy_fires_on_a_cut_through_forward_clip(model: torch.nn.Module) -> None:
    clip = _cut_clip(4, 4)
    policy = AdaptivePolicy(min_interval=2, max_interval=15, target_rate=0.2)
    with torch.no_grad():
        outs, _ = model.forward_clip(clip, policy=policy, all_frames=True)
        ref, _ = model.forward_clip(clip, 5, (clip.shape[1] - 1) % 5, all_frames=True)
    assert [o["keyframe_reason"] for o in outs] == ["reset"] + [None] * 3 + ["drift"] + [None] * 3
    # The fixed K = 5 schedule keyframes frame 5 instead: at the cut it decodes the new shot from
    # the old shot's keyframe; the adaptive stream has a fresh keyframe there.
    assert [bool(o["is_keyframe"]) for o in ref] == [t % 5 == 0 for t in range(8)]
    assert not torch.equal(outs[4]["semantic"], ref[4]["semantic"])
    # Keyframes at 0 and 4 are the fixed K = 4 schedule: the adaptive stream must equal it exactly.
    with torch.no_grad():
        ref4, _ = model.forward_clip(clip, 4, 3, all_frames=True)
    assert [bool(o["is_keyframe"]) for o in ref4] == [t % 4 == 0 for t in range(8)]
    for a, b in zip(outs, ref4):
        for task in model.tasks:
            assert torch.equal(a[task], b[task]), task


def test_stream_evaluate_uses_the_policy_inside_forward_clip(model: torch.nn.Module) -> None:
    clip = _cut_clip(4, 4)[0]
    seq = Stream("cut", clip)
    res, meter = stream_evaluate(model, [seq], lambda: AdaptivePolicy(min_interval=2, max_interval=15,
                                                                      target_rate=0.2), macs=(10.0, 2.0))
    assert res["keyframe_rate"] == pytest.approx(2 / 8)  # the reset and the cut
    assert res["macs"] == pytest.approx(2 / 8 * 10.0 + 6 / 8 * 2.0)
    # the same frames through forward_clip with a fresh policy: the report's flips equal them
    with torch.no_grad():
        outs, _ = model.forward_clip(clip[None], policy=AdaptivePolicy(min_interval=2, max_interval=15,
                                                                       target_rate=0.2), all_frames=True)
    cls = [o["semantic"][0].argmax(0).numpy() for o in outs]
    flips = [float(np.mean(a != b)) for a, b in zip(cls, cls[1:])]
    assert res["temporal.flip"] == pytest.approx(float(np.mean(flips)))


def test_image_policy_needs_one_stream_and_a_fresh_state(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="batch 1"):
        model.forward_clip(torch.rand(2, 3, 3, H, W), policy=AdaptivePolicy())
    _, state = model.forward_clip(_clip(2), 1)
    with pytest.raises(ValueError, match="new stream"):
        model.forward_clip(_clip(2), policy=FixedPolicy(2), state=state)
    with pytest.raises(ValueError, match="keyframe_interval or a keyframe policy"):
        model.forward_clip(_clip(2))
    # a policy that ignores the images runs a batch of clips on one schedule
    outs, _ = model.forward_clip(torch.rand(2, 4, 3, H, W), policy=FixedPolicy(2), all_frames=True)
    assert [bool(o["is_keyframe"]) for o in outs] == [True, False, True, False]
