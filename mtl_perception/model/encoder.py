"""Encoders: a dilated ResNet trunk projected to the shared feature width."""

from __future__ import annotations

from torch import Tensor, nn

from .config import EncoderConfig
from .registry import ENCODERS
from .resnet import ResNet, load_resnet_weights


@ENCODERS.register("resnet")
class ResNetEncoder(nn.Module):
    """DeepLab-style ResNet followed by 1x1 conv + BN + ReLU to ``out_channels``.

    The projection puts the slow (2048-channel R101) and fast (512-channel R18) encoders into
    one feature space, so the same decoders, attention and alignment losses apply to both.
    """

    def __init__(self, cfg: EncoderConfig, out_channels: int) -> None:
        super().__init__()
        self.backbone = ResNet(cfg.depth, cfg.output_stride, cfg.width, cfg.deeplab_v2)
        self.project = nn.Sequential(
            nn.Conv2d(self.backbone.out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.output_stride = cfg.output_stride
        if cfg.weights:
            load_resnet_weights(self.backbone, cfg.weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.backbone(x))

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Trunk features of layer1..layer4 (channels in ``backbone.pyramid_channels``), nominal
        strides 4, 8, 16, 32. A dilated trunk has no deeper strides: at output stride 8 the four
        levels sit at strides 4, 8, 8, 8 (at 16: 4, 8, 16, 16), i.e. level ``s`` is at
        ``min(s, output_stride)``, as in the EfficientNet-Lite encoder. ``project`` of the last
        level is exactly :meth:`forward`."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        out = []
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = layer(x)
            out.append(x)
        return out
