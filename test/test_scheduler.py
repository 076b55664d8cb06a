"""KeyframeScheduler: plain Python, no ROS."""

from __future__ import annotations

import pytest

from mtl_perception.scheduler import KeyframeScheduler, validate_interval

SIZE = (96, 160)


def run(s: KeyframeScheduler, n: int, t0: float = 0.0, dt: float = 0.05, frame: str = "cam",
        size: tuple[int, int] = SIZE) -> list:
    return [s.decide(t0 + i * dt, frame, size) for i in range(n)]


def flags(decisions: list) -> str:
    return "".join("K" if d.is_keyframe else "." for d in decisions)


def test_every_kth_frame_and_first_is_reset() -> None:
    s = KeyframeScheduler(interval=3)
    d = run(s, 7)
    assert flags(d) == "K..K..K"
    assert d[0].reset == "start" and all(x.reset is None for x in d[1:])
    assert [x.index for x in d] == list(range(7))
    assert flags(run(KeyframeScheduler(interval=1), 4)) == "KKKK"


def test_interval_change_keeps_phase() -> None:
    s = KeyframeScheduler(interval=5)
    assert flags(run(s, 3)) == "K.."
    s.interval = 2  # 3 frames since the last keyframe >= 2: keyframe now
    assert flags(run(s, 5, t0=1.0)) == "K.K.K"
    s.interval = 4  # the last keyframe was 1 frame ago: 3 more frames, then one every 4
    assert flags(run(s, 8, t0=2.0)) == "...K...K"


@pytest.mark.parametrize("bad", [0, 101, -1, 2.5, "3", True, None])
def test_invalid_interval_rejected_and_kept(bad) -> None:
    s = KeyframeScheduler(interval=4)
    assert validate_interval(bad)
    with pytest.raises(ValueError):
        s.interval = bad
    assert s.interval == 4


@pytest.mark.parametrize("change, reason", [
    ({"size": (48, 80)}, "resolution_change"),
    ({"frame": "other"}, "frame_id_change"),
    ({"t": 0.5}, "stamp_backwards"),
    ({"t": 10.0}, "frame_gap"),
])
def test_discontinuities_reset(change, reason) -> None:
    s = KeyframeScheduler(interval=10, max_gap_s=1.0)
    run(s, 30)  # t = 0 .. 1.45
    d = s.decide(change.get("t", 1.5), change.get("frame", "cam"), change.get("size", SIZE))
    assert d.is_keyframe and d.reset == reason and d.index == 0
    nxt = s.decide(change.get("t", 1.5) + 0.05, change.get("frame", "cam"), change.get("size", SIZE))
    assert not nxt.is_keyframe and nxt.reset is None and nxt.index == 1


def test_equal_stamp_and_disabled_gap_do_not_reset() -> None:
    s = KeyframeScheduler(interval=10, max_gap_s=0.0)
    s.decide(1.0, "cam", SIZE)
    assert s.decide(1.0, "cam", SIZE).reset is None
    assert s.decide(1000.0, "cam", SIZE).reset is None


def test_requested_reset() -> None:
    s = KeyframeScheduler(interval=10)
    run(s, 4)
    s.request_reset()
    d = s.decide(1.0, "cam", SIZE)
    assert d.is_keyframe and d.reset == "requested"
    assert not s.decide(1.05, "cam", SIZE).is_keyframe
