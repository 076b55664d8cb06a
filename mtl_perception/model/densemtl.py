"""DenseMTL decoder (Lopes et al., "Cross-task Attention Mechanism for Dense Multi-task
Learning", Sec. 3): a multi-task exchange block (mTEB) with one bidirectional cross-task
attention module (xTAM) per task pair, placed before the last layer of the task decoders.

Per task ``t`` (config ``decoder: {name: densemtl, hidden: [h0, h1]}``)::

    f_t   = body_t(SE_t(x) [+ ILA propagation, done by the network])   # conv3x3 h0, conv1x1 h1
    aux_t = pre_t(f_t)                      # "before the block" prediction (training loss only)
    f~_t  = f_t + F_{->t}([f_{j->t} for j != t])                        # Eq. 5
    y_t   = out_t(f~_t)                                                 # final prediction

The SE selection and the ILA streaming path are those of the plain ``se_conv`` decoder, so
StreamState, export and the node work unchanged; the block runs on every frame after propagation.
Fixed choices the paper leaves open: projection width ``d = max(1, h1 // 4)``, downscale ``s = 2``
(queries at 1/s, keys and values at 1/s^2 of the decoder grid), 3x3 convs for F_f and F_m.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig, ModelConfig
from .decoder import SqueezeExcitation, _conv_bn_relu
from .registry import DECODERS

if TYPE_CHECKING:
    from .network import MultiTaskVideoNet

DOWNSCALE = 2
KEY_REDUCTION = 4
# What a cross-task decoder returns: raw outputs per task, and auxiliary raw outputs by name
# (name -> (task, tensor)) for deep supervision.
JointOutput = tuple[dict[str, Tensor], dict[str, tuple[str, Tensor]]]


def downscale(x: Tensor, s: int) -> Tensor:
    # ceil_mode: grids not divisible by s (output stride 16/32 at small inputs) still work
    return x if s == 1 else F.avg_pool2d(x, s, s, ceil_mode=True)


class DirectionalXTAM(nn.Module):
    """``xTAM_{j->i}``: what task ``j`` contributes to task ``i`` (Eq. 1-4).

    Correlation-guided attention: ``K = P_Q(down_s f_i)``, ``Q = P_K(down_{s^2} f_j)``,
    ``V = P_V(down_{s^2} f_j)``, ``C = softmax(K^T Q / sqrt(d))`` over the positions of ``j``,
    ``xtask = up_s(V C^T)`` back to the grid of ``f_i``. Self-attention:
    ``self = F_f(f_j) * sigmoid(F_m(f_j))``. Output ``[diag(alpha) xtask, self]`` (2c channels),
    ``alpha`` per channel, initialised to 0 so training starts from self-attention alone.
    """

    def __init__(self, channels: int, dim: int, scale: int = DOWNSCALE) -> None:
        super().__init__()
        self.scale, self.dim = scale, dim
        self.p_q = nn.Conv2d(channels, dim, 1)
        self.p_k = nn.Conv2d(channels, dim, 1)
        self.p_v = nn.Conv2d(channels, channels, 1)
        self.f_f = nn.Conv2d(channels, channels, 3, padding=1)
        self.f_m = nn.Conv2d(channels, channels, 3, padding=1)
        self.alpha = nn.Parameter(torch.zeros(channels))

    def xtask(self, f_i: Tensor, f_j: Tensor) -> Tensor:
        """Correlation-guided attention features (Eq. 1-2), on the grid of ``f_i``."""
        k = self.p_q(downscale(f_i, self.scale))
        q = self.p_k(downscale(f_j, self.scale ** 2))
        v = self.p_v(downscale(f_j, self.scale ** 2))
        b, _, h, w = k.shape
        corr = torch.bmm(k.flatten(2).transpose(1, 2), q.flatten(2)) / math.sqrt(self.dim)  # (B, Ni, Nj)
        att = corr.softmax(dim=-1)
        x = torch.bmm(v.flatten(2), att.transpose(1, 2)).view(b, v.shape[1], h, w)
        return F.interpolate(x, size=f_i.shape[-2:], mode="bilinear", align_corners=False)

    def self_attention(self, f_j: Tensor) -> Tensor:
        return self.f_f(f_j) * self.f_m(f_j).sigmoid()  # Eq. 3

    def forward(self, f_i: Tensor, f_j: Tensor) -> Tensor:
        return torch.cat([self.alpha.view(1, -1, 1, 1) * self.xtask(f_i, f_j), self.self_attention(f_j)], 1)


class BidirectionalXTAM(nn.Module):
    """One xTAM per task pair (i, j): returns ``(f_{j->i}, f_{i->j})``."""

    def __init__(self, channels: int, dim: int, scale: int = DOWNSCALE) -> None:
        super().__init__()
        self.to_i = DirectionalXTAM(channels, dim, scale)
        self.to_j = DirectionalXTAM(channels, dim, scale)

    def forward(self, f_i: Tensor, f_j: Tensor) -> tuple[Tensor, Tensor]:
        return self.to_i(f_i, f_j), self.to_j(f_j, f_i)


class MultiTaskExchangeBlock(nn.Module):
    """mTEB: one bidirectional xTAM per task pair; per task the directional features towards it
    are concatenated, fused by 1x1 conv + BN + ReLU (``F_{->i}``) and added to its features."""

    def __init__(self, tasks: tuple[str, ...], channels: int, dim: int, scale: int = DOWNSCALE) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.pairs = list(itertools.combinations(self.tasks, 2))
        self.xtam = nn.ModuleDict({f"{i}__{j}": BidirectionalXTAM(channels, dim, scale)
                                   for i, j in self.pairs})
        n_in = 2 * channels * (len(self.tasks) - 1)
        self.fuse = nn.ModuleDict({t: _conv_bn_relu(n_in, channels, 1) for t in self.tasks} if n_in else {})

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.pairs:  # a single task has nobody to exchange with
            return dict(feats)
        towards: dict[str, list[Tensor]] = {t: [] for t in self.tasks}
        for i, j in self.pairs:
            to_i, to_j = self.xtam[f"{i}__{j}"](feats[i], feats[j])
            towards[i].append(to_i)
            towards[j].append(to_j)
        return {t: feats[t] + self.fuse[t](torch.cat(towards[t], 1)) for t in self.tasks}


class DenseMTLJoint(nn.Module):
    """The cross-task part the network calls with every task's (propagated) features."""

    needs_pyramid = False

    def __init__(self, tasks: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.mteb = MultiTaskExchangeBlock(tasks, channels, max(1, channels // KEY_REDUCTION))

    def forward(self, feats: dict[str, Tensor], decoders: nn.ModuleDict, pyramid: list[Tensor] | None = None,
                is_keyframe: bool = True) -> JointOutput:
        del pyramid, is_keyframe
        f = {t: decoders[t].body(x) for t, x in feats.items()}
        aux = {f"aux.{t}": (t, decoders[t].pre(x)) for t, x in f.items()}
        refined = self.mteb(f)
        return {t: decoders[t].out(x) for t, x in refined.items()}, aux


@DECODERS.register("densemtl")
class DenseMTLTaskDecoder(nn.Module):
    """Per-task part: SE (``select``), body convs, pre-block and final 1x1 output convs."""

    def __init__(self, cfg: DecoderConfig, in_channels: int, out_channels: int,
                 head_channels: int | None = None) -> None:
        super().__init__()
        self.se = SqueezeExcitation(in_channels, cfg.se_reduction)
        h0, h1 = cfg.hidden
        self.body = nn.Sequential(_conv_bn_relu(head_channels or in_channels, h0, 3),
                                  _conv_bn_relu(h0, h1, 1))
        self.pre = nn.Conv2d(h1, out_channels, 1)
        self.out = nn.Conv2d(h1, out_channels, 1)

    @staticmethod
    def build_joint(cfg: ModelConfig, net: MultiTaskVideoNet | Any) -> DenseMTLJoint:
        del net
        return DenseMTLJoint(cfg.tasks, cfg.decoder.hidden[1])

    def select(self, features: Tensor) -> Tensor:
        return self.se(features)

    def predict(self, features: Tensor) -> Tensor:
        """This task alone (no exchange): the pre-block prediction."""
        return self.pre(self.body(features))

    def init_output_bias(self, value: float) -> None:
        for conv in (self.pre, self.out):
            assert conv.bias is not None
            nn.init.constant_(conv.bias, value)
