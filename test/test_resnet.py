"""The hand-written ResNet: torchvision parameter names, dilation, DeepLab-v2 options."""

from __future__ import annotations

import pytest
import torch

from mtl_perception.model.resnet import ResNet, load_resnet_weights


def torchvision_style_state_dict(depth: int, width: int = 8) -> dict[str, torch.Tensor]:
    """A state dict laid out the way torchvision's resnet{depth}() names and shapes it, built
    from the architecture tables (not from our module), with distinct values per tensor."""
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    exp = 4 if bottleneck else 1
    sd: dict[str, torch.Tensor] = {}
    counter = iter(range(10_000))

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        sd[f"{name}.weight"] = torch.full((cout, cin, k, k), float(next(counter)))

    def bn(name: str, c: int) -> None:
        v = float(next(counter))
        sd.update({f"{name}.weight": torch.full((c,), v), f"{name}.bias": torch.full((c,), -v),
                   f"{name}.running_mean": torch.full((c,), v / 10),
                   f"{name}.running_var": torch.full((c,), 1 + v),
                   f"{name}.num_batches_tracked": torch.tensor(7)})

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    inplanes = width
    for stage, n in enumerate(blocks, start=1):
        planes = width * 2 ** (stage - 1)
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (stage > 1 or inplanes != planes * exp):
                conv(f"{p}.downsample.0", planes * exp, inplanes, 1)
                bn(f"{p}.downsample.1", planes * exp)
            inplanes = planes * exp
    sd["fc.weight"] = torch.zeros(1000, inplanes)
    sd["fc.bias"] = torch.zeros(1000)
    return sd


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_state_dict_loads(depth: int) -> None:
    sd = torchvision_style_state_dict(depth)
    net = ResNet(depth, output_stride=8, width=8)
    ignored = load_resnet_weights(net, {f"module.{k}": v for k, v in sd.items()})
    assert set(ignored) == {"module.fc.weight", "module.fc.bias"}
    own = net.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_weights_from_file_and_errors(tmp_path) -> None:
    sd = torchvision_style_state_dict(18)
    torch.save(sd, tmp_path / "r18.pth")
    net = ResNet(18, 8, width=8)
    load_resnet_weights(net, tmp_path / "r18.pth")
    assert torch.equal(net.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    bad = dict(sd)
    bad["layer2.0.conv1.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight has shape"):
        load_resnet_weights(net, bad)
    missing = {k: v for k, v in sd.items() if not k.startswith("layer3.1.")}
    with pytest.raises(ValueError, match=r"missing keys \['layer3\.1\."):
        load_resnet_weights(net, missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1\.0\.bn3"):
        load_resnet_weights(net, torchvision_style_state_dict(50))
    with pytest.raises(ValueError, match="no such file"):
        load_resnet_weights(net, tmp_path / "nope.pth")


@pytest.mark.parametrize(("os_", "depth"), [(8, 18), (16, 18), (8, 50), (32, 34)])
def test_output_stride_and_channels(os_: int, depth: int) -> None:
    net = ResNet(depth, output_stride=os_, width=8, deeplab_v2=False).eval()
    with torch.no_grad():
        y = net(torch.rand(1, 3, 64, 128))
    assert y.shape == (1, net.out_channels, 64 // os_, 128 // os_)
    assert net.out_channels == 8 * 8 * (4 if depth >= 50 else 1)
    # DeepLab-v2's ceil-mode max-pool keeps one more row/column (Caffe): 64x128 -> 9x17 at OS8.
    caffe = ResNet(depth, output_stride=os_, width=8, deeplab_v2=True).eval()
    with torch.no_grad():
        yc = caffe(torch.rand(1, 3, 64, 128))
    assert yc.shape[-2:] == (-(-64 // os_) + 1, -(-128 // os_) + 1)


def test_basic_blocks_are_dilated_at_os8() -> None:
    net = ResNet(18, output_stride=8, width=8)
    assert net.layer3[1].conv1.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)
    assert net.layer4[0].conv1.stride == (1, 1)


def test_deeplab_v2_strides_the_1x1_conv() -> None:
    caffe = ResNet(50, output_stride=8, width=8, deeplab_v2=True)
    tv = ResNet(50, output_stride=8, width=8, deeplab_v2=False)
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    assert tv.layer2[0].conv1.stride == (1, 1) and tv.layer2[0].conv2.stride == (2, 2)
    assert caffe.maxpool.ceil_mode and not tv.maxpool.ceil_mode
