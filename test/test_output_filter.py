"""Temporal output filters (mtl_perception/output_filter.py) by value: hand-computed id and depth
sequences through each filter, a per-pixel reference implementation of the mode vote, resets, the
parameter errors, and the filter's place in the pipeline (before colouring, reset with the stream).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from mtl_perception.backends.base import Backend, StepResult
from mtl_perception.imaging import colorize_semantic, make_palette
from mtl_perception.output_filter import FILTERS, make_filter
from mtl_perception.outputs import FrameOutputs
from mtl_perception.pipeline import Pipeline
from mtl_perception.scheduler import Decision

A, B, C = 1, 2, 3


def _run(name: str, seq: list[int], window: int = 3, resets: tuple[int, ...] = ()) -> list[int]:
    """One pixel's class ids through a fresh filter; ``resets``: frame indices reset before."""
    f = make_filter(name, window=window)
    out = []
    for t, v in enumerate(seq):
        if t in resets:
            f.reset()
        out.append(int(f({"semantic": np.array([[v]], np.int32)})["semantic"][0, 0]))
    return out


def test_registry_has_the_documented_filters() -> None:
    assert {"none", "mode", "hysteresis", "ema"} <= set(FILTERS.names())


@pytest.mark.parametrize("name", ["none", "mode", "hysteresis"])
def test_none_and_window_one_pass_ids_through(name: str) -> None:
    seq = [A, B, A, C, C, B]
    assert _run(name, seq, window=1) == seq


def test_mode3_suppresses_a_one_frame_flip() -> None:
    assert _run("mode", [A, A, B, A, A]) == [A, A, A, A, A]
    assert _run("none", [A, A, B, A, A]) == [A, A, B, A, A]


def test_mode3_passes_a_real_change_one_frame_late() -> None:
    # window 3: [B, A, A] still A; [B, B, A] is B -> lag of window // 2 = 1 frame
    assert _run("mode", [A, A, A, B, B, B]) == [A, A, A, A, B, B]
    # window 5: lag 2
    assert _run("mode", [A] * 5 + [B] * 4, window=5) == [A] * 7 + [B] * 2


def test_mode_ties_keep_the_published_class() -> None:
    # frame 1 after the start: [B, A] ties, A was published -> A; then [B, B, A] -> B
    assert _run("mode", [A, B, B], window=4) == [A, A, B]
    # window 4: [B, B, A, A] ties -> A stays; [B, B, B, A] -> B
    assert _run("mode", [A, A, B, B, B], window=4) == [A, A, A, A, B]
    # three-way tie with the published class not among them: the newest wins
    # window 3: frames A, B -> A (tie, published A); C: [C, B, A] all tied, A published -> A
    assert _run("mode", [A, B, C, C], window=3) == [A, A, A, C]


def test_mode_matches_a_per_pixel_reference() -> None:
    """Random 4-class maps through mode-5 against a plain Counter vote per pixel."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4, (12, 5, 7)).astype(np.int32)
    f = make_filter("mode", window=5)
    got = [f({"semantic": x})["semantic"] for x in frames]
    pub = frames[0].copy()
    for t in range(len(frames)):
        win = frames[max(0, t - 4): t + 1][::-1]  # newest first
        exp = np.empty_like(pub)
        for y in range(5):
            for x in range(7):
                votes = Counter(int(v) for v in win[:, y, x])
                top = max(votes.values())
                tied = [c for c, n in votes.items() if n == top]
                if t > 0 and int(pub[y, x]) in tied:
                    exp[y, x] = pub[y, x]
                else:
                    exp[y, x] = next(int(v) for v in win[:, y, x] if int(v) in tied)
        pub = exp
        np.testing.assert_array_equal(got[t], exp, err_msg=f"frame {t}")
        assert got[t].dtype == np.int32


def test_hysteresis_suppresses_flips_and_switches_after_persistence() -> None:
    assert _run("hysteresis", [A, A, B, A, A], window=2) == [A] * 5
    # window 3: B must come 3 frames in a row; shown on its 3rd frame (lag 2)
    assert _run("hysteresis", [A, A, B, B, B, B]) == [A, A, A, A, B, B]
    # alternating between two other classes never reaches persistence
    assert _run("hysteresis", [A, B, C, B, C, B, C]) == [A] * 7
    # an interrupted run starts over
    assert _run("hysteresis", [A, B, B, A, B, B, B]) == [A, A, A, A, A, A, B]


def test_hysteresis_matches_a_per_pixel_reference() -> None:
    """Random 3-class maps through hysteresis-3 against a scalar state machine per pixel: the shown
    class switches to a challenger once it has come ``window`` frames in a row."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 3, (30, 4, 5)).astype(np.int32)
    frames[:, 0] = rng.choice([0, 1], (30, 5), p=[0.2, 0.8])  # a row that does switch, with noise
    f = make_filter("hysteresis", window=3)
    got = np.stack([f({"semantic": x})["semantic"] for x in frames])
    exp = np.empty_like(frames)
    for y in range(4):
        for x in range(5):
            shown, cand, run = int(frames[0, y, x]), None, 0
            for t in range(30):
                v = int(frames[t, y, x])
                if v == shown:
                    cand, run = None, 0
                elif v == cand:
                    run += 1
                else:
                    cand, run = v, 1
                if run >= 3:
                    shown, cand, run = v, None, 0
                exp[t, y, x] = shown
    np.testing.assert_array_equal(got, exp)
    assert (exp[:, 0] != frames[0, 0]).any()  # the reference did switch somewhere


def test_ema_of_depth_and_normals_by_hand() -> None:
    f = make_filter("ema", alpha=0.25)  # not 0.5: a swapped weight must show
    n0 = np.zeros((1, 2, 3), np.float32)
    n0[..., 2] = 1.0
    n1 = np.zeros((1, 2, 3), np.float32)
    n1[..., 0] = 1.0
    ids = np.array([[A, B]], np.int32)
    out = [f({"semantic": ids, "depth": np.array([[d, 2.0]], np.float32), "normals": n})
           for d, n in ((1.0, n0), (3.0, n1), (np.nan, n1), (5.0, n1))]
    assert [float(o["depth"][0, 0]) for o in out[:2]] == [1.0, 1.5]  # 0.25 * 3 + 0.75 * 1
    assert np.isnan(out[2]["depth"][0, 0])  # invalid stays invalid
    assert float(out[3]["depth"][0, 0]) == 5.0  # ... and restarts the pixel
    assert [float(o["depth"][0, 1]) for o in out] == [2.0] * 4
    np.testing.assert_allclose(out[1]["normals"][0, 0], [0.25, 0, 0.75])
    np.testing.assert_allclose(out[2]["normals"][0, 0], [0.4375, 0, 0.5625])  # 0.25 n1 + 0.75 out[1]
    assert all(o["semantic"] is ids for o in out)  # ids untouched


def test_chain_applies_both() -> None:
    f = make_filter("mode+ema", window=3, alpha=0.5)
    outs = [f({"semantic": np.array([[v]], np.int32), "depth": np.array([[d]], np.float32)})
            for v, d in ((A, 2.0), (B, 4.0), (A, 4.0))]
    assert [int(o["semantic"][0, 0]) for o in outs] == [A, A, A]
    assert [float(o["depth"][0, 0]) for o in outs] == [2.0, 3.0, 3.5]


@pytest.mark.parametrize("name", ["mode", "hysteresis"])
def test_reset_clears_history(name: str) -> None:
    # without the reset the B frames are held back; after it, the first frame is taken as is
    assert _run(name, [A, A, B, B])[2] == A
    assert _run(name, [A, A, B, B], resets=(2,))[2:] == [B, B]


def test_shape_change_restarts_the_filter() -> None:
    f = make_filter("mode", window=3)
    f({"semantic": np.full((2, 2), A, np.int32)})
    out = f({"semantic": np.full((3, 2), B, np.int32)})["semantic"]
    np.testing.assert_array_equal(out, np.full((3, 2), B))


def test_filter_does_not_keep_a_reference_to_the_backend_buffer() -> None:
    buf = np.full((2, 2), A, np.uint8)  # a backend that reuses its output array
    f = make_filter("mode", window=3)
    f({"semantic": buf})
    buf[:] = B
    f({"semantic": buf})
    buf[:] = B
    assert (f({"semantic": buf})["semantic"] == B).all()  # history [B, B, A], not [B, B, B-overwritten]
    buf[:] = A
    assert (f({"semantic": buf})["semantic"] == B).all()  # [A, B, B]


@pytest.mark.parametrize("name", ["mode", "hysteresis"])
def test_published_ids_are_not_the_filter_state(name: str) -> None:
    # a subscriber (or the node's colouring) that writes into the published array must not
    # change what the filter remembers: a second frame of A stays A
    f = make_filter(name, window=3)
    f({"semantic": np.full((2, 2), A, np.uint8)})["semantic"][:] = B
    assert (f({"semantic": np.full((2, 2), A, np.uint8)})["semantic"] == A).all()


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "median"}, "temporal_filter"), ({"name": "mode+median"}, "temporal_filter"),
    ({"name": "mode", "window": 0}, "temporal_filter_window"),
    ({"name": "mode", "window": 16}, "temporal_filter_window"),
    ({"name": "mode", "window": 2.5}, "temporal_filter_window"),
    ({"name": "ema", "alpha": 0.0}, "temporal_filter_alpha"),
    ({"name": "none", "alpha": 1.5}, "temporal_filter_alpha")])
def test_bad_settings_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as e:
        make_filter(**kwargs)
    msg = str(e.value)
    assert msg.startswith(field + " ") and "\n" not in msg, msg


# -- in the pipeline ---------------------------------------------------------------------------
class _Scripted(Backend):
    """Returns a scripted class-id map per call (network size 4x6), depth = the call index."""

    name = "scripted"

    def __init__(self, ids: list[np.ndarray], fail_at: int = -1) -> None:
        super().__init__((4, 6), ("semantic", "depth"), 4)
        self.ids, self.calls, self.fail_at = ids, 0, fail_at

    @property
    def device(self) -> str:
        return "cpu"

    def step(self, image: np.ndarray, state: Any, is_keyframe: bool) -> StepResult:
        i = self.calls
        self.calls += 1
        if i == self.fail_at:
            raise RuntimeError("device lost")
        return StepResult({"semantic": self.ids[i].copy(), "depth": np.full((4, 6), 1.0 + i, np.float32)},
                          state=i)


def _maps() -> list[np.ndarray]:
    """Left half class A throughout; right half A, A, B (1-frame flip), A, C, C, C (real change)."""
    seq = [A, A, B, A, C, C, C]
    out = []
    for v in seq:
        m = np.full((4, 6), A, np.int32)
        m[:, 3:] = v
        out.append(m)
    return out


def test_pipeline_filters_before_colouring() -> None:
    maps = _maps()
    pipe = Pipeline(_Scripted(maps), "input", make_filter("mode", window=3))
    palette = make_palette(4)
    rgb = np.zeros((8, 12, 3), np.uint8)  # the camera is twice the network size
    want_right = [A, A, A, A, A, C, C]  # mode-3 of A, A, B, A, C, C, C
    for t, exp in enumerate(want_right):
        res = pipe.infer(rgb, Decision(t == 0, "start" if t == 0 else None))
        ids = res.outputs["semantic"]
        assert int(ids[0, 5]) == exp and int(ids[0, 0]) == A, t
        assert "filter" in res.timings
        frame = FrameOutputs(res.outputs, (8, 12), palette)
        colour = frame.get("semantic/color")
        np.testing.assert_array_equal(colour[:, 6:], np.broadcast_to(palette[exp], (8, 6, 3)))
        np.testing.assert_array_equal(colour, colorize_semantic(frame.get("semantic"), palette))
        # the unfiltered network output differs on the flip frame: the colour follows the filter
        if t == 2:
            assert int(maps[t][0, 5]) == B


def test_pipeline_resets_the_filter_with_the_stream() -> None:
    maps = _maps()
    rgb = np.zeros((4, 6, 3), np.uint8)
    for reset_at, want in ((None, A), (2, B)):
        pipe = Pipeline(_Scripted(maps), "network", make_filter("hysteresis", window=2))
        got = []
        for t in range(3):
            reason = "start" if t == 0 else "frame_gap" if t == reset_at else None
            got.append(int(pipe.infer(rgb, Decision(reason is not None, reason)).outputs["semantic"][0, 5]))
        assert got[2] == want, (reset_at, got)
    # no filter, no "filter" stage in the timings (and the latency tables)
    assert "filter" not in Pipeline(_Scripted(maps)).infer(rgb, Decision(True, "start")).timings
    # Pipeline.reset() and a failed step restart the filter too
    pipe = Pipeline(_Scripted(maps), "network", make_filter("hysteresis", window=2))
    pipe.infer(rgb, Decision(True, "start"))
    pipe.infer(rgb, Decision(False))
    pipe.reset()
    assert int(pipe.infer(rgb, Decision(False)).outputs["semantic"][0, 5]) == B
    pipe = Pipeline(_Scripted(maps, fail_at=1), "network", make_filter("hysteresis", window=2))
    pipe.infer(rgb, Decision(True, "start"))
    with pytest.raises(RuntimeError):
        pipe.infer(rgb, Decision(False))
    assert int(pipe.infer(rgb, Decision(False)).outputs["semantic"][0, 5]) == B  # call 2 = map 2


# -- node parameters (a node in this process, no spinning) ----------------------------------------
def test_node_parameters_validate_and_switch_the_filter() -> None:
    rclpy = pytest.importorskip("rclpy", reason="rclpy not installed")
    pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")
    from rclpy.parameter import Parameter

    from mtl_perception.node import PerceptionNode
    from mtl_perception.pipeline import LoadedBackend
    from mtl_perception.tools import harness

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    loaded = LoadedBackend(_Scripted(_maps()), True, 4, ())
    try:
        with pytest.raises(ValueError, match=r"^temporal_filter must be one of"):
            PerceptionNode(loaded, context=ctx,
                           parameter_overrides=[Parameter("temporal_filter", value="median")])
        node = PerceptionNode(loaded, context=ctx,
                              parameter_overrides=[Parameter("temporal_filter", value="mode")])
        try:
            assert node.pipeline.output_filter.describe() == "mode window=3"
            assert node.diagnostic_values()["temporal_filter"] == "mode window=3"
            res = node.set_parameters([Parameter("temporal_filter", value="median")])[0]
            assert not res.successful and res.reason.startswith("temporal_filter must be one of"), res.reason
            assert node.pipeline.output_filter.describe() == "mode window=3"  # unchanged
            res = node.set_parameters([Parameter("temporal_filter", value="hysteresis"),
                                       Parameter("temporal_filter_window", value=4)])
            assert all(r.successful for r in res), [r.reason for r in res]
            assert node.pipeline.output_filter.describe() == "hysteresis window=4"
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
