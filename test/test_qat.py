"""Quantization-aware fine-tuning (training/qat.py): the fake-quant grids equal hand-computed INT8
values (and onnxruntime's own scale / zero point), gradients are straight-through inside the
range and zero where clamped, the trainer's saved checkpoint is a plain FP32 state dict, and the
``qat:`` config is validated by field name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_resume_exact import Clips  # tiny labelled clips

from mtl_perception.model import build_model
from mtl_perception.model.config import ConfigError
from training.config import TrainConfig
from training.qat import (
    ActObserver,
    QatConfig,
    QatController,
    act_qparams,
    fake_quant_act,
    fake_quant_weight,
)
from training.trainer import Trainer


def test_weight_fake_quant_is_the_per_channel_s8_grid() -> None:
    w = torch.tensor([[0.3, -1.0, 0.26, 0.004],  # absmax 1.0: scale 1/127
                      [2.0, 0.03, -0.9, 0.7]])  # absmax 2.0: scale 2/127
    # hand-computed: round(w / scale) * scale (no value sits on a .5 tie)
    want = torch.tensor([[38 / 127, -1.0, 33 / 127, 1 / 127],  # 38.1, 33.02, 0.508
                         [2.0, 2 * 2 / 127, -57 * 2 / 127, 44 * 2 / 127]])  # 1.905, -57.15, 44.45
    got = fake_quant_weight(w, per_channel=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # per tensor: one scale 2/127 for both rows, so 0.004 and 0.03 round to 0 and 2/127 * 1
    got_t = fake_quant_weight(w, per_channel=False)
    torch.testing.assert_close(got_t[0, 3], torch.tensor(0.0), rtol=0, atol=0)
    torch.testing.assert_close(got_t[0, 0], torch.tensor(19 * 2 / 127), rtol=0, atol=1e-7)  # 19.05


def test_activation_qparams_match_onnxruntime_and_the_hand_grid() -> None:
    # range [-1, 3]: scale 4/255, zero point round(255/4) = round(63.75) = 64
    scale, zp = act_qparams(-1.0, 3.0)
    assert zp == 64 and scale == pytest.approx(4 / 255, rel=1e-12)
    # a positive-only range is widened to include 0 (zero padding stays exact)
    assert act_qparams(0.5, 2.55) == (pytest.approx(0.01), 0)
    qu = pytest.importorskip("onnxruntime.quantization.quant_utils")
    for lo, hi in ((-1.0, 3.0), (-0.37, 5.9), (0.2, 6.0), (-4.0, -0.5)):
        z, s = qu.compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32),
                                   np.uint8(0), np.uint8(255))
        mine = act_qparams(lo, hi)
        assert mine[1] == int(z) and mine[0] == pytest.approx(float(s), rel=1e-6), (lo, hi)
    x = torch.tensor([0.0, 0.5, -0.99, 2.99, 10.0, -5.0])
    s = 4 / 255
    # 0.5/s = 31.875 -> 32; -0.99/s = -63.11 -> -63; 2.99/s = 190.6 -> 191 (q 255); 10, -5 clamp
    want = torch.tensor([0.0, 32 * s, -63 * s, 191 * s, 191 * s, -64 * s])
    torch.testing.assert_close(fake_quant_act(x, -1.0, 3.0), want, rtol=0, atol=1e-6)


def test_gradients_pass_straight_through_inside_and_are_zero_when_clamped() -> None:
    x = torch.tensor([-5.0, -0.5, 0.0, 1.234, 2.9, 10.0], requires_grad=True)
    (fake_quant_act(x, -1.0, 3.0) * torch.arange(1.0, 7.0)).sum().backward()
    # d/dx = the upstream gradient (1..6) inside [-64 s, 191 s], 0 where clamped
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 5.0, 0.0]))
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    (fake_quant_weight(w) * 3.0).sum().backward()  # the symmetric grid covers every weight
    torch.testing.assert_close(w.grad, torch.full_like(w, 3.0))


def _tiny_qat_trainer(out: Path, steps: int = 2, **qat) -> Trainer:
    cfg = TrainConfig.from_dict({
        "model": "config/model/tiny.yaml", "out": str(out), "seed": 3, "batch_size": 1, "ckpt_every": 1,
        "optim": {"lr": 1e-3}, "data": {"clip_len": 3}, "align": {"disc_hidden": 8},
        "stages": [{"name": "joint", "epochs": 1, "steps_per_epoch": steps, "keyframe_interval": 2}],
        "val_offsets": "last", "qat": qat})
    return Trainer(cfg, progress=False, train_data=Clips(4), val_data=Clips(1, seed=9))


def test_attached_conv_computes_the_fake_quantized_convolution(tmp_path: Path) -> None:
    t = _tiny_qat_trainer(tmp_path)
    conv = t.model.get_submodule("slow.backbone.layer1.0.conv1")
    bn = t.model.get_submodule("slow.backbone.layer1.0.bn1")
    fwd = t.qat.convs["slow.backbone.layer1.0.conv1"]
    t.model.train()
    t.qat.set_stage("joint")
    assert not bn.training  # freeze_bn
    x = torch.randn(2, conv.in_channels, 8, 8)
    y = conv(x)  # first training batch: the observer's range is exactly this batch's min/max
    lo, hi = float(x.min()), float(x.max())
    assert (float(fwd.inp.lo), float(fwd.inp.hi)) == (lo, hi)
    ref = F.conv2d(fake_quant_act(x, lo, hi), fake_quant_weight(conv.weight), None, conv.stride,
                   conv.padding, conv.dilation, conv.groups)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    assert not torch.allclose(y, F.conv2d(x, conv.weight, None, conv.stride, conv.padding), atol=1e-4)
    # the BatchNorm after it quantizes its output on a grid: at most 256 distinct values
    assert torch.unique(bn(y)).numel() <= 256 and fwd.bn_out is not None
    assert "head_out" in t.cfg.qat.keep_float and "decoders.semantic.head.2" in t.qat.float_convs
    t.qat.detach()
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, None, conv.stride, conv.padding))


def test_fake_quant_only_in_the_listed_stages() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    model = torch.nn.Sequential(conv).train()
    ctl = QatController(QatConfig(stages=("fast",), quantize_outputs=False), model)
    x = torch.randn(2, 3, 6, 6)
    plain = F.conv2d(x, conv.weight, None, 1, 1)
    for stage in ("slow", "joint"):  # not listed: the plain convolution, observers untouched
        ctl.set_stage(stage)
        torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
        assert ctl.convs["0"].inp.lo is None
    ctl.set_stage("fast")
    y = model(x)
    lo, hi = float(x.min()), float(x.max())  # the first observed batch sets the range
    ref = F.conv2d(fake_quant_act(x, lo, hi), fake_quant_weight(conv.weight), None, 1, 1)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    assert not torch.allclose(y, plain, atol=1e-4)
    ctl.set_stage("joint")  # and off again after a listed stage
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)


def test_observer_range_is_an_ema_of_the_batch_min_max() -> None:
    c = 0.25
    obs = ActObserver(c)
    obs.observe(torch.tensor([-1.0, 0.5, 2.0]))  # first batch: (l1, h1) = (-1, 2)
    assert (float(obs.lo), float(obs.hi)) == (-1.0, 2.0)
    # (l2, h2) = (-0.2, 1), both inside (-1, 2): a running min/max would not move
    obs.observe(torch.tensor([-0.2, 1.0]))
    assert float(obs.lo) == pytest.approx(-1.0 + c * (-0.2 + 1.0))  # -0.8
    assert float(obs.hi) == pytest.approx(2.0 + c * (1.0 - 2.0))  # 1.75
    # the controller's observers use the config's averaging constant
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)).train()
    ctl = QatController(QatConfig(averaging_constant=0.1), model)
    ctl.set_stage("joint")
    a, b = torch.tensor([-2.0, 4.0]).view(1, 1, 1, 2), torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    model(a)
    model(b)
    inp = ctl.convs["0"].inp
    assert float(inp.lo) == pytest.approx(-2.0 + 0.1 * (1.0 + 2.0))
    assert float(inp.hi) == pytest.approx(4.0 + 0.1 * (3.0 - 4.0))


def test_saved_checkpoint_is_a_plain_fp32_state_dict(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    t = _tiny_qat_trainer(tmp_path)
    key = "slow.backbone.layer1.0.conv1.weight"
    before = t.model.state_dict()[key].clone()
    running = {k: v.clone() for k, v in t.model.state_dict().items() if "running_" in k}
    t.run()
    ck = torch.load(tmp_path / "stage_joint.pt", map_location="cpu", weights_only=True)
    plain = build_model(t.model_cfg)
    assert set(ck["state_dict"]) == set(plain.state_dict())
    assert not [k for k in ck["state_dict"] if "fake" in k or "observer" in k or "quant" in k]
    plain.load_state_dict(ck["state_dict"], strict=True)
    saved = ck["state_dict"][key]
    assert not torch.equal(saved, before)  # fine-tuning moved the weights
    # the trainer froze every BatchNorm (freeze_bn through set_stage): running statistics untouched
    assert running and all(torch.equal(ck["state_dict"][k], v) for k, v in running.items())
    assert not torch.equal(saved, fake_quant_weight(saved))  # the FP32 latent weights, not the s8 grid
    t.qat.detach()
    t.model.eval()
    plain.eval()
    x = torch.rand(1, 3, *t.model_cfg.input_size)
    with torch.no_grad():
        a, b = plain.step(x, None, True)[0], t.model.step(x, None, True)[0]
    torch.testing.assert_close(a["depth"], b["depth"], rtol=0, atol=0)


@pytest.mark.parametrize("qat, field", [
    ({"keep_float": ["heads", "bogus"]}, "qat.keep_float"),
    ({"stages": ["warmup"]}, "qat.stages"),
    ({"stages": ["slow"]}, "qat.stages"),  # the schedule below runs only a joint stage
    ({"averaging_constant": 0.0}, "qat.averaging_constant"),
    ({"per_channel": "yes"}, "qat.per_channel"),
    ({"steps": 100}, "qat.steps"),
])
def test_config_errors_name_the_field(qat: dict, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict({"model": "config/model/tiny.yaml", "stages": [{"name": "joint"}], "qat": qat})
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg, msg


def test_qat_needs_fp32_autocast_off() -> None:
    with pytest.raises(ConfigError, match=r"^amp: .*qat"):
        TrainConfig.from_dict({"model": "config/model/tiny.yaml", "amp": "bf16", "qat": {}})
    assert TrainConfig.from_dict({"model": "config/model/tiny.yaml", "qat": {}}).qat == QatConfig()


def test_an_all_zero_channel_or_range_gets_scale_one_as_onnxruntime() -> None:
    # a dead (all-zero) output channel: scale 1 (not 0 / 127), so it stays exactly 0 with a finite
    # straight-through gradient next to a live channel on its own grid
    w = torch.tensor([[0.0, 0.0], [1.0, -0.5]], requires_grad=True)
    y = fake_quant_weight(w)
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.0], [1.0, -64 / 127]]), rtol=0, atol=1e-7)
    y.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))
    # a constant-zero activation range: onnxruntime's compute_scale_zp gives (1, 0) too
    assert act_qparams(0.0, 0.0) == (1.0, 0)
    # on that unit grid [0, 255]: 0.4 -> 0, -0.6 -> clamped to 0, 1.6 -> 2
    torch.testing.assert_close(fake_quant_act(torch.tensor([0.0, 0.4, -0.6, 1.6]), 0.0, 0.0),
                               torch.tensor([0.0, 0.0, 0.0, 2.0]), rtol=0, atol=0)
