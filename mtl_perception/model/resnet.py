"""Dilated ResNet-18/34/50/101 with torchvision's parameter names.

Written here because torchvision's CPU import fails against this torch and its BasicBlock refuses
dilation, which ResNet-18 at output stride 8 needs. Parameter names follow torchvision
(``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) so an ImageNet state dict
a user brings loads with :func:`load_resnet_weights`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# blocks per stage
RESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, stride_on_1x1: bool = False) -> None:
        super().__init__()
        del stride_on_1x1  # only meaningful for bottlenecks
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, stride_on_1x1: bool = False) -> None:
        super().__init__()
        # DeepLab-v2 (Caffe ResNet) strides the first 1x1 conv; torchvision strides the 3x3.
        s1, s3 = (stride, 1) if stride_on_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, s3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk (no classifier) whose last stages trade stride for dilation.

    ``output_stride`` 8 dilates layer3 by 2 and layer4 by 4 (DeepLab); 16 dilates layer4 by 2;
    32 is the plain classification network.
    """

    def __init__(self, depth: int = 101, output_stride: int = 8, width: int = 64,
                 deeplab_v2: bool = True) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(f"depth: {depth} not in {sorted(RESNET_LAYERS)}")
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if depth < 50 else Bottleneck
        strides, dilations = {8: ((2, 1, 1), (1, 2, 4)), 16: ((2, 2, 1), (1, 1, 2)),
                              32: ((2, 2, 2), (1, 1, 1))}[output_stride]
        self.depth, self.output_stride = depth, output_stride
        self._stride_on_1x1 = deeplab_v2
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        # DeepLab-v2 uses a ceil-mode max-pool (Caffe); it changes 256x512 maps by a pixel or so.
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=deeplab_v2)
        layers = RESNET_LAYERS[depth]
        self.layer1 = self._make_layer(block, width, layers[0], 1, 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], strides[0], dilations[0])
        self.layer3 = self._make_layer(block, width * 4, layers[2], strides[1], dilations[1])
        self.layer4 = self._make_layer(block, width * 8, layers[3], strides[2], dilations[2])
        self.out_channels = width * 8 * block.expansion
        # Channels of layer1..layer4 (what forward_pyramid returns).
        self.pyramid_channels = [width * m * block.expansion for m in (1, 2, 4, 8)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # The first block of a dilated stage uses half the dilation so its receptive field grows
        # smoothly (as torchvision's replace_stride_with_dilation does).
        first_dilation = max(1, dilation // 2) if stride == 1 and dilation > 1 else 1
        layers = [block(self.inplanes, planes, stride, first_dilation, downsample, self._stride_on_1x1)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation, None, self._stride_on_1x1)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


_PREFIXES = ("module.", "backbone.", "encoder.", "model.")


def load_resnet_weights(net: ResNet, source: str | Path | dict[str, Tensor]) -> list[str]:
    """Load a torchvision-style ResNet state dict (path or dict) into ``net``.

    Common wrapper prefixes (``module.``, ``backbone.``) are stripped and the classifier ``fc.*``
    is ignored. Any other unknown or missing key, or a shape mismatch, raises ``ValueError``
    naming the key. Returns the keys that were ignored.
    """
    if isinstance(source, str | Path):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"encoder weights: no such file {str(path)!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    else:
        state = source
    if not isinstance(state, dict):
        raise ValueError(f"encoder weights: expected a state dict, got {type(state).__name__}")
    cleaned: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        k = key
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        if k.startswith("fc.") or k.endswith("num_batches_tracked") and k not in net.state_dict():
            ignored.append(key)
            continue
        cleaned[k] = value
    own = net.state_dict()
    unexpected = sorted(set(cleaned) - set(own))
    if unexpected:
        raise ValueError(f"encoder weights: unexpected keys {unexpected[:5]} (a ResNet-{net.depth} "
                         f"with torchvision names was expected)")
    missing = sorted(k for k in own if k not in cleaned and not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"encoder weights: missing keys {missing[:5]} for ResNet-{net.depth}")
    for k, v in cleaned.items():
        if own[k].shape != v.shape:
            raise ValueError(f"encoder weights: {k} has shape {tuple(v.shape)}, "
                             f"the model expects {tuple(own[k].shape)}")
    net.load_state_dict(cleaned, strict=False)
    return ignored
