"""Keyframe policies (fixed / adaptive) and their scheduler integration: plain Python, no ROS."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_perception.keyframe_policy import (
    AdaptivePolicy,
    FixedPolicy,
    make_policy,
    policy_flags,
    thumbnail,
)
from mtl_perception.scheduler import KeyframeScheduler

H, W = 96, 160


def _texture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w]


def _noisy(img: np.ndarray, rng: np.random.Generator, amp: int = 2) -> np.ndarray:
    return np.clip(img.astype(np.int16) + rng.integers(-amp, amp + 1, img.shape), 0, 255).astype(np.uint8)


def _gaps(reasons: list) -> list[int]:
    keys = [i for i, r in enumerate(reasons) if r is not None]
    return list(np.diff(keys))


def test_thumbnail_values() -> None:
    img = np.zeros((120, 200, 3), np.uint8)
    img[:, :100] = 255  # left half white
    t = thumbnail(img)
    assert t.shape == (16, 32)
    np.testing.assert_allclose(t[:, :16], 1.0, atol=1e-6)
    np.testing.assert_allclose(t[:, 16:], 0.0, atol=1e-6)
    np.testing.assert_allclose(thumbnail(np.full((50, 70, 3), 0.25, np.float32)), 0.25, atol=1e-6)


def test_fires_on_a_cut_and_not_on_a_static_scene() -> None:
    rng = np.random.default_rng(0)
    a, b = _texture(1), _texture(2)
    frames = [_noisy(a, rng) for _ in range(40)] + [_noisy(b, rng) for _ in range(10)]
    reasons = policy_flags(AdaptivePolicy(min_interval=2, max_interval=100, target_rate=0.05), frames)
    assert reasons[0] == "reset"
    assert all(r is None for r in reasons[1:40]), reasons  # still scene with sensor noise: nothing
    assert reasons[40] == "drift"  # the cut fires at once
    assert all(r is None for r in reasons[41:])  # and the new scene is still again


def test_cut_within_min_interval_waits_for_it() -> None:
    frames = [_texture(1)] * 3 + [_texture(2)] * 5
    reasons = policy_flags(AdaptivePolicy(min_interval=4, max_interval=10, target_rate=0.1), frames)
    assert [i for i, r in enumerate(reasons) if r] == [0, 4]
    assert reasons[4] == "drift"


@pytest.mark.parametrize("lo, hi", [(2, 15), (3, 6), (1, 4)])
def test_min_and_max_intervals_respected(lo: int, hi: int) -> None:
    rng = np.random.default_rng(lo * 10 + hi)
    # Content mixing long still stretches (max fires) and wild frames (drift would fire every frame).
    frames = []
    for seg in range(12):
        base = _texture(seg)
        frames += [_noisy(base, rng) for _ in range(20)] if seg % 2 else [_texture(100 * seg + i)
                                                                       for i in range(20)]
    policy = AdaptivePolicy(min_interval=lo, max_interval=hi, target_rate=2.0 / (lo + hi))
    reasons = policy_flags(policy, frames)
    gaps = _gaps(reasons)
    assert min(gaps) >= lo and max(gaps) <= hi, gaps
    assert "max" in reasons and "drift" in reasons


def _pan(n: int, speed: float, seed: int = 5) -> list[np.ndarray]:
    """A camera panning over a large texture with a varying speed: drift grows between keyframes."""
    big = _texture(seed, H, W * 40)
    rng = np.random.default_rng(seed)
    x, out = 0.0, []
    for _ in range(n):
        x += speed * (0.5 + rng.random())
        out.append(big[:, int(x) % (W * 39):int(x) % (W * 39) + W])
    return out


@pytest.mark.parametrize("target", [0.1, 0.2, 0.34])
def test_target_rate_respected_on_average(target: float) -> None:
    frames = _pan(600, 3.0)
    reasons = policy_flags(AdaptivePolicy(min_interval=2, max_interval=20, target_rate=target), frames)
    rate = np.mean([r is not None for r in reasons[100:]])  # after the controller settled
    assert abs(rate - target) < 0.02, (rate, target)


def test_policy_parameters_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="keyframe_max_interval"):
        AdaptivePolicy(min_interval=5, max_interval=3)
    with pytest.raises(ValueError, match="keyframe_target_rate"):
        AdaptivePolicy(min_interval=2, max_interval=10, target_rate=0.9)  # more than 1/min allows
    with pytest.raises(ValueError, match="keyframe_policy"):
        make_policy("sometimes")
    assert isinstance(make_policy("fixed", interval=3), FixedPolicy)


def test_scheduler_with_adaptive_policy_and_live_switch() -> None:
    rng = np.random.default_rng(3)
    a, b = _texture(1), _texture(2)
    s = KeyframeScheduler(interval=4, max_gap_s=0.0)
    d = [s.decide(i * 0.1, "cam", (H, W), _noisy(a, rng)) for i in range(6)]
    assert "".join("K" if x.is_keyframe else "." for x in d) == "K...K."
    assert [x.reason for x in d if x.is_keyframe] == ["reset", "interval"]
    s.set_policy(AdaptivePolicy(min_interval=1, max_interval=50, target_rate=0.05))
    d = [s.decide(1 + i * 0.1, "cam", (H, W), _noisy(a, rng)) for i in range(10)]
    assert not any(x.is_keyframe for x in d)  # still scene: the adaptive policy holds off
    d = s.decide(3.0, "cam", (H, W), b)
    assert d.is_keyframe and d.reason == "drift"
    assert list(s.last_reasons) == ["reset", "interval", "drift"]
    assert s.reason_counts["drift"] == 1 and s.reason_counts["interval"] == 1
    assert s.keyframe_rate() == pytest.approx(3 / 17)
    s.set_policy(None)  # back to every 4th
    d = [s.decide(4 + i * 0.1, "cam", (H, W), b) for i in range(8)]
    assert "".join("K" if x.is_keyframe else "." for x in d) == "...K...K"


def test_fires_on_a_rendered_synthetic_cut() -> None:
    """The generator's cut option (mtl-data generate --cut-every) and the policy together."""
    synthetic = pytest.importorskip("training.data.synthetic")
    ok, why = synthetic.egl_available()
    if not ok:
        pytest.skip(f"no EGL: {why}")
    with synthetic.SyntheticGenerator(64, 128) as gen:
        frames = list(gen.iter_frames_events(7, 16, cut_every=8))
        meta = gen.last_meta
    assert meta["cuts"] == [8] and meta["frames"] == 16
    sem = [f[1] for f in frames]
    # a cut: the labels change far more across it than between neighbouring frames of one shot
    assert (sem[8] != sem[7]).mean() > 3 * (sem[7] != sem[6]).mean()
    reasons = policy_flags(AdaptivePolicy(min_interval=2, max_interval=30, target_rate=0.05),
                           [(f[0] * 255).astype(np.uint8) for f in frames])
    assert reasons[8] == "drift", reasons


def test_budget_holds_over_every_window() -> None:
    """The credit: even when every frame is a new scene, no stretch of n frames gets more than
    target * n + burst keyframes (+1 for a surge borrowing the next credit)."""
    # A still stretch (the threshold sinks to its floor), then every frame a new scene.
    rng = np.random.default_rng(9)
    frames = [_noisy(_texture(999), rng) for _ in range(60)] + [_texture(1000 + i) for i in range(120)]
    target, burst = 0.2, 2.0
    policy = AdaptivePolicy(min_interval=1, max_interval=50, target_rate=target, burst=burst)
    reasons = policy_flags(policy, frames)
    keys = np.array([r is not None and r != "reset" for r in reasons], int)
    for n in (5, 10, 30):
        worst = max(keys[i:i + n].sum() for i in range(len(keys) - n + 1))
        assert worst <= target * n + burst + 1, (n, worst)
    assert keys[90:].mean() == pytest.approx(target, abs=0.03)  # and, once settled, the budget is used


def test_fast_turn_yaw_hand_computed() -> None:
    synthetic = pytest.importorskip("training.data.synthetic")
    deg = np.degrees
    # 40 degrees over 3 frames from the start frame, the next turn back the other way
    assert [round(float(deg(synthetic.turn_yaw(i, (4, 10)))), 6) for i in (3, 4, 5, 6, 7, 10, 11, 13)] == \
        [0.0, 0.0, round(40 / 3, 6), round(80 / 3, 6), 40.0, 40.0, round(40 - 40 / 3, 6), 0.0]
