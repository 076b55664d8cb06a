"""The slow-fast network: heads, encoders per frame type, state, propagation, config errors."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from mtl_perception.model import (
    ConfigError,
    ModelConfig,
    StreamState,
    build_model,
    keyframe_flags,
)
from mtl_perception.model.checkpoint import CheckpointError, load_model, save_model
from mtl_perception.model.registry import ENCODERS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return ModelConfig.from_yaml(TINY)


@pytest.fixture(scope="module")
def model(cfg: ModelConfig):
    torch.manual_seed(0)
    return build_model(cfg).eval()


def frames(n: int, h: int = 64, w: int = 128, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for _ in range(n)]


@torch.no_grad()
def test_heads_shapes_ranges_units(model, cfg) -> None:
    state = None
    for i, x in enumerate(frames(4)):
        out, state = model.step(x, state, is_keyframe=i % 3 == 0)
        assert out["semantic"].shape == (1, cfg.num_classes, 64, 128)
        depth = out["depth"]
        assert depth.shape == (1, 1, 64, 128)
        assert torch.isfinite(depth).all() and (depth > 0).all()
        n = out["normals"]
        assert n.shape == (1, 3, 64, 128)
        assert torch.allclose(n.norm(dim=1), torch.ones(1, 64, 128), atol=1e-4)


def test_depth_head_starts_at_configured_metres(cfg) -> None:
    c = copy.deepcopy(cfg)
    c.depth_init = 25.0
    m = build_model(c).eval()
    # Zero the last conv's weights: the prediction is then exactly the initial bias.
    torch.nn.init.zeros_(m.decoders["depth"].head[-1].weight)
    with torch.no_grad():
        d = m(torch.rand(1, 3, 64, 128))["depth"]
    assert torch.allclose(d, torch.full_like(d, 25.0), rtol=1e-4)


def test_task_subset(cfg) -> None:
    c = copy.deepcopy(cfg)
    c.tasks = ("semantic", "depth")
    with torch.no_grad():
        out = build_model(c).eval()(torch.rand(1, 3, 64, 128))
    assert set(out) == {"semantic", "depth"}


@torch.no_grad()
def test_keyframes_use_slow_encoder_and_others_fast(model) -> None:
    calls: list[str] = []
    hooks = [model.slow.register_forward_hook(lambda *_: calls.append("slow")),
             model.fast.register_forward_hook(lambda *_: calls.append("fast"))]
    try:
        state = None
        for x, key in zip(frames(5), keyframe_flags(5, 3, 1)):
            _, state = model.step(x, state, key)
    finally:
        for h in hooks:
            h.remove()
    assert keyframe_flags(5, 3, 1) == [True, False, False, True, False]
    assert calls == ["slow", "fast", "fast", "slow", "fast"]


@torch.no_grad()
def test_state_is_carried_and_reset(model) -> None:
    a, b, c = frames(3)
    _, s1 = model.step(a, None, True)
    assert s1.keyframe is not None and s1.nonkey is None and s1.frames == 1
    out_after_a, s2 = model.step(b, s1, False)
    assert s2.keyframe is s1.keyframe and s2.nonkey is not None
    # The same frame after a different past gives a different result: the state is used.
    _, other = model.step(c, None, True)
    out_after_c, _ = model.step(b, other, False)
    assert not torch.allclose(out_after_a["depth"], out_after_c["depth"])
    # Reset gives an empty state, and a stream cannot start on a non-keyframe.
    empty = s2.reset()
    assert empty.empty and empty.frames == 0
    with pytest.raises(ValueError, match="keyframe"):
        model.step(b, empty, False)


@torch.no_grad()
def test_propagation_sources_follow_the_paper(model, cfg) -> None:
    a, b, c = frames(3)
    _, s = model.step(a, None, True)
    assert model.sources(s, True) == []  # no non-keyframe yet
    assert model.sources(s, False) == [s.keyframe]
    _, s = model.step(b, s, False)
    assert model.sources(s, True) == [s.nonkey]  # keyframe <- last non-keyframe
    assert model.sources(s, False) == [s.keyframe, s.nonkey]  # non-key <- both
    c2 = copy.deepcopy(cfg)
    c2.propagation.multi_frame = False
    single = build_model(c2).eval()
    assert single.sources(s, True) == [] and single.sources(s, False) == [s.keyframe]


@torch.no_grad()
def test_fusion_is_normalised_sum_of_propagated_features(model) -> None:
    """f_fused = (f + sum over sources of ILA(h(f), h(f_s), f_s)) / (1 + #sources), per task."""
    a, b, c = frames(3)
    _, s = model.step(a, None, True)
    _, s = model.step(b, s, False)
    out, _ = model.step(c, s, False)
    feats = model.encode(c, slow=False)
    for task in model.tasks:
        dec, prop = model.decoders[task], model.propagation[task]
        f = dec.select(feats)
        q = prop.embed(f)
        fused = (f + sum(prop(q, src.keys[task], src.features[task]) for src in (s.keyframe, s.nonkey))) / 3
        expected = model._finalize(task, dec.predict(fused), c.shape[-2:])
        assert torch.allclose(out[task], expected, atol=1e-5), task
    # A slot with weight 0 contributes nothing: same as no past at all for a keyframe.
    s_zero = StreamState(s.keyframe, type(s.nonkey)(s.nonkey.features, s.nonkey.keys, 0.0))
    assert torch.allclose(model.step(c, s_zero, True)[0]["depth"], model.step(c, None, True)[0]["depth"],
                          atol=1e-6)


@torch.no_grad()
def test_shared_attention_variant_runs(cfg) -> None:
    c = copy.deepcopy(cfg)
    c.propagation.task_specific = False
    m = build_model(c).eval()
    assert list(m.propagation) == ["shared"]
    s = None
    for x, key in zip(frames(3), (True, False, False)):
        out, s = m.step(x, s, key)
    assert out["depth"].shape == (1, 1, 64, 128)


@torch.no_grad()
def test_reuse_variant_skips_fast_encoder(cfg) -> None:
    c = copy.deepcopy(cfg)
    c.propagation.name = "reuse"
    m = build_model(c).eval()
    assert m.fast is None
    a, b = frames(2)
    out_a, s = m.step(a, None, True)
    out_b, s2 = m.step(b, s, False)
    # The non-keyframe is decoded from the keyframe's features: its own pixels are ignored.
    assert torch.allclose(out_a["depth"], out_b["depth"])
    assert s2.keyframe is s.keyframe


@torch.no_grad()
def test_forward_clip_is_the_step_loop(model) -> None:
    clip = torch.stack([f[0] for f in frames(6)])[None]
    results, final = model.forward_clip(clip, keyframe_interval=3, keyframe_offset=2, all_frames=True)
    assert [bool(r["is_keyframe"]) for r in results] == keyframe_flags(6, 3, 2)
    state = None
    for t, key in enumerate(keyframe_flags(6, 3, 2)):
        out, state = model.step(clip[:, t], state, key)
    assert torch.allclose(out["semantic"], results[-1]["semantic"])
    assert final.frames == 6


def test_keyframe_flags_rules() -> None:
    assert keyframe_flags(6, 5, 0) == [True, False, False, False, False, True]
    assert keyframe_flags(6, 5, 4) == [True, True, False, False, False, False]
    assert keyframe_flags(3, 1, 0) == [True, True, True]
    with pytest.raises(ValueError, match="offset"):
        keyframe_flags(5, 5, 5)
    with pytest.raises(ValueError, match="cannot end"):
        keyframe_flags(2, 5, 3)


def test_clip_gradients_reach_both_encoders(cfg) -> None:
    """The autograd gradient of a clip loss w.r.t. each encoder agrees with a central finite
    difference (float64) and is not zero: the slow encoder is reached only through the propagated
    keyframe features."""
    torch.manual_seed(0)
    m = build_model(cfg).double().eval()
    clip = torch.rand(1, 3, 3, 64, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert keyframe_flags(3, 2, 1) == [True, True, False]  # the annotated frame is a non-keyframe

    def loss() -> torch.Tensor:
        results, _ = m.forward_clip(clip, keyframe_interval=2, keyframe_offset=1, return_features=True)
        assert "features" in results[-1]
        return sum(results[-1][t].mean() for t in m.tasks)

    params = [m.fast.backbone.conv1.weight, m.slow.backbone.conv1.weight]
    grads = torch.autograd.grad(loss(), params)
    eps = 1e-6  # ReLU kinks crossed by the perturbation leave the estimate ~1% off
    for p, g in zip(params, grads):
        d = torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            p.add_(eps * d)
            up = float(loss())
            p.sub_(2 * eps * d)
            down = float(loss())
            p.add_(eps * d)
        numeric, analytic = (up - down) / (2 * eps), float((g * d).sum())
        assert abs(analytic) > 1e-6, "no gradient reaches the encoder"
        assert analytic == pytest.approx(numeric, rel=0.05)


# -- configuration errors ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"slow": {"depth": 19}}, r"slow\.depth.*\(18, 34, 50, 101\)"),
        ({"slow": {"deph": 18}}, r"slow\.deph: unknown field"),
        ({"propagation": {"name": "flow"}}, r"propagation\.name.*'global'"),
        ({"propagation": {"window": 4}}, r"propagation\.window"),
        ({"tasks": ["semantic", "albedo"]}, r"tasks.*normals"),
        ({"input_size": [100, 200]}, r"input_size.*multiple of 32"),
        ({"num_classes": "seven"}, r"num_classes: expected an integer"),
        ({"colour": 1}, r"colour: unknown field; allowed: \['tasks'"),
        ({"slow": {"weights": "/nonexistent/r101.pth"}}, r"slow\.weights.*existing local file"),
        ({"fast": {"output_stride": 16}}, r"fast\.output_stride.*equal to slow\.output_stride \(8\)"),
    ],
)
def test_bad_config_field_is_named(data, match) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig.from_dict(data)


def test_bad_yaml_names_file_and_field(tmp_path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("model:\n  fast: {output_stride: 4}\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: fast\.output_stride.*\(8, 16, 32\)"):
        ModelConfig.from_yaml(p)


def test_shipped_configs_validate() -> None:
    paths = sorted((ROOT / "config" / "model").glob("*.yaml"))
    assert len(paths) >= 3
    for p in paths:
        assert ModelConfig.from_yaml(p).tasks  # raises ConfigError naming the field if invalid
    # the shipped checkpoint loads and is marked trained
    from mtl_perception.model import load_model

    for ckpt in sorted((ROOT / "models").glob("*.pt")):
        _, meta = load_model(ckpt)
        assert meta["trained"] is True and (ROOT / meta["card"]).is_file()


def test_registry_names_unknown_entries() -> None:
    with pytest.raises(KeyError, match=r"unknown encoder 'vit'.*resnet"):
        ENCODERS.get("vit")


# -- checkpoints ------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_errors(model, tmp_path) -> None:
    path = tmp_path / "m.pt"
    save_model(model, path, meta={"trained": False})
    loaded, meta = load_model(path)
    assert meta == {"trained": False}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.allclose(loaded(x)["depth"], model(x)["depth"])
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing field 'model_config'"):
        load_model(tmp_path / "bad.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["num_classes"] = 0
    torch.save(ckpt, tmp_path / "badcfg.pt")
    with pytest.raises(CheckpointError, match="model_config.num_classes"):
        load_model(tmp_path / "badcfg.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(tmp_path / "junk.pt")


@torch.no_grad()
def test_decode_equals_a_step_without_past(model) -> None:
    """``decode`` of an encoder's features = a stream-starting keyframe step run with that encoder."""
    (x,) = frames(1)
    fast_as_slow = copy.deepcopy(model)
    fast_as_slow.slow = fast_as_slow.fast  # a keyframe step then runs the fast encoder
    out = model.decode(model.encode(x, slow=False), x.shape[-2:])
    ref = fast_as_slow.step(x, None, True)[0]
    for t in model.tasks:
        assert torch.allclose(out[t], ref[t], atol=1e-6), t
    slow = model.decode(model.encode(x, slow=True), x.shape[-2:])
    step = model.step(x, None, True)[0]
    for t in model.tasks:
        assert torch.allclose(slow[t], step[t], atol=1e-6), t
    assert not torch.allclose(out["depth"], slow["depth"])  # the two encoders differ


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path) -> None:
    from mtl_perception.atomic import atomic_path, write_bytes_atomic

    target = tmp_path / "engine.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["engine.bin"]  # no temp file left


def test_frame_macs_and_the_protocol_agree(model) -> None:
    from mtl_perception.model.flops import average_macs, frame_macs
    from training.evaluate import step_macs

    m = frame_macs(model)
    assert m["keyframe_alone"] < m["keyframe"]  # a past non-keyframe adds one attention product
    assert m["nonkey"] < m["keyframe"]  # the fast encoder is the cheap one
    assert average_macs(m, 1) == m["keyframe_alone"]
    assert average_macs(m, 5) == pytest.approx((m["keyframe"] + 4 * m["nonkey"]) / 5)
    # the evaluation protocol counts the same step in a real stream (offset 2: two sources)
    assert step_macs(model, "slowfast", 5, 2, clip_len=6) == pytest.approx(m["nonkey"])
    assert step_macs(model, "slow", 5, 0, clip_len=6) == pytest.approx(m["keyframe_alone"])
