"""Task decoders (Sec. 4.1): SE block -> [propagation, done by the network] -> 3x3/1x1/1x1 convs."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig
from .registry import DECODERS


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al.): a task picks its channels out of the shared features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * (self.fc2(F.relu(self.fc1(s)))).sigmoid()


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


@DECODERS.register("se_conv")
class TaskDecoder(nn.Module):
    """``select`` (SE) runs before propagation, ``predict`` (the conv head) after it."""

    def __init__(self, cfg: DecoderConfig, in_channels: int, out_channels: int,
                 head_channels: int | None = None) -> None:
        super().__init__()
        self.se = SqueezeExcitation(in_channels, cfg.se_reduction)
        h0, h1 = cfg.hidden
        # head_channels: what the fusion hands the head (wider than the SE's for concat fusion)
        head_in = head_channels or in_channels
        self.head = nn.Sequential(_conv_bn_relu(head_in, h0, 3), _conv_bn_relu(h0, h1, 1),
                                  nn.Conv2d(h1, out_channels, 1))

    def select(self, features: Tensor) -> Tensor:
        return self.se(features)

    def predict(self, features: Tensor) -> Tensor:
        return self.head(features)

    def init_output_bias(self, value: float) -> None:
        last = self.head[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, value)


def softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))
