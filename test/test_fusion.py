"""Fusion of current and propagated features (propagation.fusion): the average is the documented
normalised sum, concat feeds the decoder's first conv with fixed slots, both stream through
``step``, and concat exports to ONNX with ONNX Runtime matching PyTorch over a stream."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mtl_perception.model import ConfigError, ModelConfig, StreamState, build_model
from mtl_perception.model.flops import frame_macs

TINY = "config/model/tiny.yaml"


def tiny(fusion: str = "average", **prop) -> torch.nn.Module:
    cfg = ModelConfig.from_yaml(TINY)
    cfg.propagation.fusion = fusion
    for k, v in prop.items():
        setattr(cfg.propagation, k, v)
    cfg.validate()
    torch.manual_seed(0)
    return build_model(cfg).eval()


def clip(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 64, 128, generator=g) for _ in range(n)]


def stream(model, frames, flags):
    st, outs = None, []
    with torch.no_grad():
        for x, k in zip(frames, flags):
            o, st = model.step(x, st, k)
            outs.append(o)
    return outs, st


def test_average_is_the_normalised_sum_of_the_ila_outputs() -> None:
    model = tiny()
    x0, x1, x2 = clip()
    _, st = stream(model, [x0, x1], [True, False])
    with torch.no_grad():
        out, _ = model.step(x2, st, False)
        feats = model.encode(x2, slow=False)
        t = "depth"
        dec, ila = model.decoders[t], model.propagation[t]
        f = dec.select(feats)
        q = ila.embed(f)
        p_key = ila(q, st.keyframe.keys[t], st.keyframe.features[t])
        p_non = ila(q, st.nonkey.keys[t], st.nonkey.features[t])
        want = model._finalize(t, dec.predict((f + p_key + p_non) / 3), x2.shape[-2:])
    torch.testing.assert_close(out[t], want)


def test_concat_widens_the_first_conv_and_keeps_the_slot_order() -> None:
    model = tiny("concat")
    c = model.cfg.feature_channels
    conv = model.decoders["depth"].head[0][0]
    assert conv.in_channels == 3 * c  # current, from-keyframe, from-non-keyframe
    x0, x1, x2, x3 = clip(4)
    _, st = stream(model, [x0, x1], [True, False])
    # Zero the first conv's weights that read the non-keyframe slot: then the output of a
    # non-keyframe cannot depend on which non-keyframe is in memory, but does on the keyframe.
    for t in model.tasks:
        model.decoders[t].head[0][0].weight.data[:, 2 * c:] = 0
    _, st_other_nonkey = stream(model, [x0, x3], [True, False])
    with torch.no_grad():
        a = model.step(x2, st, False)[0]["depth"]
        b = model.step(x2, StreamState(st.keyframe, st_other_nonkey.nonkey, 2), False)[0]["depth"]
        _, st_other_key = stream(model, [x3, x1], [True, False])
        c2 = model.step(x2, StreamState(st_other_key.keyframe, st.nonkey, 2), False)[0]["depth"]
    torch.testing.assert_close(a, b)
    assert (a - c2).abs().max() > 1e-4


@pytest.mark.parametrize("fusion", ["average", "concat"])
def test_a_weight_zero_slot_equals_an_empty_slot(fusion: str) -> None:
    # What the exporter relies on to keep static shapes at the start of a stream.
    model = tiny(fusion)
    x0, x1, x2 = clip()
    _, st = stream(model, [x0, x1], [True, False])
    junk = st.nonkey.map(lambda v: v * 3.0 + 1.0)
    junk.weight = torch.zeros(())
    with torch.no_grad():
        empty = model.step(x2, StreamState(st.keyframe, None, 2), False)[0]
        zero = model.step(x2, StreamState(st.keyframe, junk, 2), False)[0]
    for t in model.tasks:
        torch.testing.assert_close(zero[t], empty[t])


def test_concat_trains_through_the_stream() -> None:
    model = tiny("concat").train()
    frames = torch.stack(clip(4, seed=3), 1)
    outs, _ = model.forward_clip(frames, keyframe_interval=3, all_frames=True)
    loss = sum(o[t].float().mean() for o in outs for t in model.tasks if t != "semantic")
    loss.backward()
    c = model.cfg.feature_channels
    g = model.decoders["depth"].head[0][0].weight.grad
    # the propagated slots get gradient: the fusion is learned
    assert g[:, c:2 * c].abs().sum() > 0 and g[:, 2 * c:].abs().sum() > 0


def test_concat_macs_add_two_slot_convs_per_task() -> None:
    # hand count: the first 3x3 conv gains 2 C inputs: 2 * 9 * C * h0 MACs per feature pixel
    base, cat = frame_macs(tiny()), frame_macs(tiny("concat"))
    cfg = ModelConfig.from_yaml(TINY)
    c, h0 = cfg.feature_channels, cfg.decoder.hidden[0]
    with torch.no_grad():  # the feature grid (9x17 here: DeepLab's ceil-mode max-pool)
        fh, fw = tiny().encode(torch.zeros(1, 3, 64, 128), slow=True).shape[-2:]
    pixels = fh * fw
    extra = 2 * 9 * c * h0 * pixels * len(cfg.tasks)
    for kind in ("keyframe", "nonkey", "keyframe_alone"):
        assert cat[kind] - base[kind] == extra, kind


def test_fusion_config_errors_name_the_field() -> None:
    data = ModelConfig.from_yaml(TINY).to_dict()
    bad = copy.deepcopy(data)
    bad["propagation"]["fusion"] = "sum"
    with pytest.raises(ConfigError, match=r"propagation\.fusion.*sum"):
        ModelConfig.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["propagation"].update(fusion="concat", task_specific=False)
    with pytest.raises(ConfigError, match=r"propagation\.fusion.*task_specific"):
        ModelConfig.from_dict(bad)


def test_concat_streams_through_onnxruntime_like_torch(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from mtl_perception.backends.ort_backend import OrtBackend
    from mtl_perception.backends.torch_backend import TorchBackend

    model = tiny("concat")
    flags = [True, False, False, True, False]
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (64, 128, 3), dtype=np.uint8) for _ in flags]

    def run(backend):
        st, res = None, []
        for img, k in zip(imgs, flags):
            r = backend.step(img, st, k)
            st = r.state
            res.append(r.outputs)
        return res

    ref = run(TorchBackend(model, "cpu"))
    got = run(OrtBackend(model, cache_dir=tmp_path))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b["depth"], a["depth"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b["normals"], a["normals"], atol=1e-4)
        assert (b["semantic"] == a["semantic"]).mean() > 0.999
