"""Propagation variants by value, not shape: one shared stream (``task_specific: false``), a single
source (``multi_frame: false``), global attention, and the keyframe schedule at the gap boundary.

Expected outputs are rebuilt from the model's public parts (encoders, SE ``select``, embedding
``h``, head ``predict``) and an independent attention: the unfold reference of ILA, or a plain
softmax over all pixels written here for the global variant.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtl_perception.model import ModelConfig, build_model
from mtl_perception.model.ila import reference_local_attention
from mtl_perception.scheduler import KeyframeScheduler

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"


def _model(**prop):
    cfg = ModelConfig.from_yaml(TINY)
    cfg = copy.deepcopy(cfg)
    for k, v in prop.items():
        setattr(cfg.propagation, k, v)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _frames(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.rand(1, 3, 64, 128, generator=g) for _ in range(n)]


def _head(model, task: str, fused: torch.Tensor) -> torch.Tensor:
    """The decoder head and the documented output transform (softplus + 1 mm, unit normals)."""
    raw = F.interpolate(model.decoders[task].predict(fused), size=(64, 128), mode="bilinear",
                        align_corners=False)
    if task == "depth":
        return F.softplus(raw) + 1e-3
    if task == "normals":
        return F.normalize(raw, dim=1, eps=1e-6)
    return raw


def _global_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """out[:, :, i] = sum_j softmax_j(q_i . k_j) v_j over every pixel j of the previous frame."""
    b, c, h, w = v.shape
    logits = torch.einsum("bci,bcj->bij", q.flatten(2), k.flatten(2))
    return torch.einsum("bij,bcj->bci", logits.softmax(dim=2), v.flatten(2)).view(b, c, h, w)


def _run(model, flags: list[bool]):
    xs = _frames(len(flags))
    state, out = None, None
    for x, key in zip(xs, flags):
        out, state = model.step(x, state, key)
    return xs, out


@torch.no_grad()
def test_shared_stream_fuses_encoder_features_before_the_task_se() -> None:
    m = _model(task_specific=False)
    (a, b, c), out = _run(m, [True, False, False])
    prop, win = m.propagation["shared"], m.cfg.propagation.window
    fa, fb, fc = m.encode(a, True), m.encode(b, False), m.encode(c, False)
    q = prop.h(fc)
    fused = (fc + reference_local_attention(q, prop.h(fa), fa, win)
             + reference_local_attention(q, prop.h(fb), fb, win)) / 3
    for t in m.tasks:
        expected = _head(m, t, m.decoders[t].select(fused))
        torch.testing.assert_close(out[t], expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_single_source_without_multi_frame() -> None:
    m = _model(multi_frame=False)
    (a, b, c), out = _run(m, [True, False, False])
    win = m.cfg.propagation.window
    fa, fc = m.encode(a, True), m.encode(c, False)
    for t in m.tasks:
        dec, prop = m.decoders[t], m.propagation[t]
        sa, sc = dec.select(fa), dec.select(fc)
        fused = (sc + reference_local_attention(prop.h(sc), prop.h(sa), sa, win)) / 2  # keyframe only
        torch.testing.assert_close(out[t], _head(m, t, fused), atol=1e-4, rtol=1e-4)
    # a keyframe receives nothing without multi_frame: same as a keyframe that starts a stream
    (_, _, _, d), key_out = _run(m, [True, False, False, True])
    fresh = m.step(d, None, True)[0]
    for t in m.tasks:
        torch.testing.assert_close(key_out[t], fresh[t], atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_nonkey_slot_weight_scales_the_last_non_keyframe_on_non_keyframes_only() -> None:
    """fused = (f + ILA(keyframe) + w ILA(last non-keyframe)) / (2 + w) on a non-keyframe; a
    keyframe still averages its last non-keyframe with weight 1."""
    m = _model(nonkey_slot_weight=0.25)
    (a, b, c), out = _run(m, [True, False, False])
    win = m.cfg.propagation.window
    fa, fb, fc = m.encode(a, True), m.encode(b, False), m.encode(c, False)
    for t in m.tasks:
        dec, prop = m.decoders[t], m.propagation[t]
        sa, sb, sc = dec.select(fa), dec.select(fb), dec.select(fc)
        q = prop.h(sc)
        fused = (sc + reference_local_attention(q, prop.h(sa), sa, win)
                 + 0.25 * reference_local_attention(q, prop.h(sb), sb, win)) / 2.25
        torch.testing.assert_close(out[t], _head(m, t, fused), atol=1e-4, rtol=1e-4)
    (_, _, _, d), key_out = _run(m, [True, False, False, True])
    (_, _, _, _), key_ref = _run(_model(), [True, False, False, True])  # same weights (seed 0), w = 1
    for t in m.tasks:
        torch.testing.assert_close(key_out[t], key_ref[t], atol=1e-6, rtol=1e-6)


def test_nonkey_slot_weight_is_validated() -> None:
    from mtl_perception.model.config import ConfigError

    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="propagation.nonkey_slot_weight"):
            _model(nonkey_slot_weight=bad)


@torch.no_grad()
def test_global_attention_stream_values() -> None:
    m = _model(name="global")
    (a, b, c), out = _run(m, [True, False, False])
    fa, fb, fc = m.encode(a, True), m.encode(b, False), m.encode(c, False)
    for t in m.tasks:
        dec, prop = m.decoders[t], m.propagation[t]
        sa, sb, sc = dec.select(fa), dec.select(fb), dec.select(fc)
        q = prop.h(sc)
        fused = (sc + _global_reference(q, prop.h(sa), sa) + _global_reference(q, prop.h(sb), sb)) / 3
        torch.testing.assert_close(out[t], _head(m, t, fused), atol=1e-4, rtol=1e-4)
    # global and local attention are different operators on the same stream
    local = _model()
    _, out_local = _run(local, [True, False, False])
    assert (out_local["depth"] - out["depth"]).abs().max() > 1e-4


SIZE = (96, 160)


def test_gap_equal_to_the_limit_continues_the_stream() -> None:
    s = KeyframeScheduler(interval=3, max_gap_s=0.5)
    stamps = [10.0, 10.5, 11.0, 11.5]  # every gap exactly 0.5 s: no reset, K=3 pattern
    d = [s.decide(t, "cam", SIZE) for t in stamps]
    assert [x.reset for x in d] == ["start", None, None, None]
    assert [x.is_keyframe for x in d] == [True, False, False, True]
    assert [x.index for x in d] == [0, 1, 2, 3]


def test_gap_over_the_limit_restarts_the_keyframe_phase() -> None:
    s = KeyframeScheduler(interval=3, max_gap_s=0.5)
    stamps = [10.0, 10.25, 10.75, 10.875]  # keyframe at 10.0, next one due at the 4th frame
    assert [s.decide(t, "cam", SIZE).is_keyframe for t in stamps] == [True, False, False, True]
    s.decide(11.0, "cam", SIZE)  # one frame after that keyframe
    d = [s.decide(t, "cam", SIZE) for t in (11.5 + 2 ** -20, 11.6, 11.7, 11.8, 11.9)]
    # just over the limit: a reset, and the K=3 phase counts from the reset frame
    assert d[0].reset == "frame_gap" and [x.index for x in d] == [0, 1, 2, 3, 4]
    assert [x.is_keyframe for x in d] == [True, False, False, True, False]


@pytest.mark.parametrize("interval, offset, expected", [
    (3, 0, [True, False, False, True, False, False, True]),
    (3, 2, [True, True, False, False, True, False, False]),  # keys 4, 1 (and 0)
    (4, 3, [True, False, False, True, False, False, False]),  # last key 3; 0 forced
])
def test_keyframe_flags_hand_cases(interval: int, offset: int, expected: list[bool]) -> None:
    from mtl_perception.model import keyframe_flags

    assert keyframe_flags(7, interval, offset) == expected
