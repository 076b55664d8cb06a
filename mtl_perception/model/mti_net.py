"""MTI-Net decoder (Vandenhende et al., "MTI-Net: Multi-Scale Task Interaction Networks",
Sec. 2.3-2.5) on the slow-fast streaming path.

The encoder that ran on this frame (slow on keyframes, fast otherwise) hands over its trunk
pyramid (``forward_pyramid``: levels at nominal strides 4, 8, 16, 32; a dilated output-stride-8
trunk gives 4, 8, 8, 8, which this decoder takes as they are). Per task ``t`` and scale ``s``
(deepest first)::

    deepest:  F_t = head_t(f_t)        f_t = SE_t(x) + ILA propagation (the network's streaming path)
    others:   F_t = head_t([adapt_s(pyramid_s), FPM(F_.,s+1)_t])         # feature propagation
    P_t,s = pred_t,s(F_t)                                                 # deep supervision (aux)
    D_t,s = F_t + sum_{l != t} sigmoid(W_tl F_l) * (W'_tl F_l)            # Eq. 1
    y_t   = final_t([up(D_t,s) for all s])                                # aggregation

FPM: harmonisation (concat, conv, split, softmax over tasks, attend, 1x1 to C), then per-task SE
refinement added to the task features (Fig. 3). Only the stride-8 task features ride the
StreamState, so export and the node are unchanged; the pyramid is recomputed each frame by the
encoder that runs anyway. Width per task and scale: ``decoder.hidden[1]``. ``propagation: reuse``
is refused (a reused frame has no pyramid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ConfigError, DecoderConfig, ModelConfig
from .decoder import SqueezeExcitation, _conv_bn_relu
from .densemtl import JointOutput
from .registry import DECODERS

if TYPE_CHECKING:
    from .network import MultiTaskVideoNet

LEVELS = 4


def resize(x: Tensor, like: Tensor) -> Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class MultiModalDistillation(nn.Module):
    """Eq. 1 at one scale: every task receives the other tasks' features through a per-pair
    spatial attention mask ``sigmoid(W_kl F_l)`` applied to ``W'_kl F_l``."""

    def __init__(self, tasks: tuple[str, ...], channels: int) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        pairs = [(k, m) for k in self.tasks for m in self.tasks if k != m]
        conv = lambda: nn.Conv2d(channels, channels, 3, padding=1)  # noqa: E731
        self.mask = nn.ModuleDict({f"{k}__{m}": conv() for k, m in pairs})  # W_kl
        self.value = nn.ModuleDict({f"{k}__{m}": conv() for k, m in pairs})  # W'_kl

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for k in self.tasks:
            x = feats[k]
            for m in self.tasks:
                if m != k:
                    x = x + self.mask[f"{k}__{m}"](feats[m]).sigmoid() * self.value[f"{k}__{m}"](feats[m])
            out[k] = x
        return out


class FeaturePropagation(nn.Module):
    """FPM (Fig. 3): task features of a lower scale -> refined task features for the next one."""

    def __init__(self, tasks: tuple[str, ...], channels: int, se_reduction: int) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        n = len(self.tasks)
        self.harmonise = _conv_bn_relu(n * channels, n * channels, 3)
        self.reduce = _conv_bn_relu(n * channels, channels, 1)
        self.se = nn.ModuleDict({t: SqueezeExcitation(channels, se_reduction) for t in self.tasks})

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        x = [feats[t] for t in self.tasks]
        b, c, h, w = x[0].shape
        logits = self.harmonise(torch.cat(x, 1)).view(b, len(x), c, h, w)
        mask = logits.softmax(dim=1)  # over the task dimension
        shared = self.reduce((mask * torch.stack(x, 1)).view(b, len(x) * c, h, w))
        return {t: feats[t] + self.se[t](shared) for t in self.tasks}


class MTINetJoint(nn.Module):
    needs_pyramid = True

    def __init__(self, cfg: ModelConfig, pyramid_channels: dict[str, list[int]]) -> None:
        super().__init__()
        self.tasks = tuple(cfg.tasks)
        c, r = cfg.decoder.hidden[1], cfg.decoder.se_reduction
        # one adapter per encoder: slow and fast trunks may differ in width (EfficientNet-Lite2/0)
        self.adapt = nn.ModuleDict({
            enc: nn.ModuleList([_conv_bn_relu(ch, c, 1) for ch in chans[:LEVELS - 1]])
            for enc, chans in pyramid_channels.items()})
        self.fpm = nn.ModuleList([FeaturePropagation(self.tasks, c, r) for _ in range(LEVELS - 1)])
        self.distill = nn.ModuleList([MultiModalDistillation(self.tasks, c) for _ in range(LEVELS)])

    def per_encoder(self) -> dict[str, nn.Module]:
        """Submodules that belong with one encoder (its pyramid adapters): the trainer trains the
        fast ones with the fast encoder in the fast stage, not with the frozen decoders."""
        return dict(self.adapt.items())

    def forward(self, feats: dict[str, Tensor], decoders: nn.ModuleDict, pyramid: list[Tensor] | None = None,
                is_keyframe: bool = True) -> JointOutput:
        if pyramid is None:
            raise RuntimeError("the mti_net decoder needs the encoder pyramid: run the network's step()")
        enc = "slow" if is_keyframe or "fast" not in self.adapt else "fast"
        aux: dict[str, tuple[str, Tensor]] = {}
        distilled: list[dict[str, Tensor]] = []
        task_f: dict[str, Tensor] = {}
        for s in reversed(range(LEVELS)):  # deepest (the propagated features) first
            if s == LEVELS - 1:
                task_f = {t: decoders[t].heads[s](feats[t]) for t in self.tasks}
            else:
                back = self.adapt[enc][s](pyramid[s])
                prop = self.fpm[s](task_f)
                task_f = {t: decoders[t].heads[s](torch.cat([back, resize(prop[t], back)], 1))
                          for t in self.tasks}
            for t in self.tasks:
                aux[f"aux.{t}.{s}"] = (t, decoders[t].initial[s](task_f[t]))
            distilled.append(self.distill[s](task_f))
        top = distilled[-1][self.tasks[0]]  # scale 0: the finest grid
        raw = {t: decoders[t].final(torch.cat([resize(d[t], top) for d in distilled], 1)) for t in self.tasks}
        return raw, aux


@DECODERS.register("mti_net")
class MTINetTaskDecoder(nn.Module):
    """Per-task part: SE (``select``, before ILA), per-scale heads and initial-prediction convs,
    and the final head on the aggregated scales."""

    def __init__(self, cfg: DecoderConfig, in_channels: int, out_channels: int,
                 head_channels: int | None = None) -> None:
        super().__init__()
        self.se = SqueezeExcitation(in_channels, cfg.se_reduction)
        h0, c = cfg.hidden
        deepest = _conv_bn_relu(head_channels or in_channels, c, 3)
        self.heads = nn.ModuleList([_conv_bn_relu(2 * c, c, 3) for _ in range(LEVELS - 1)] + [deepest])
        self.initial = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for _ in range(LEVELS)])
        self.final = nn.Sequential(_conv_bn_relu(LEVELS * c, h0, 3), nn.Conv2d(h0, out_channels, 1))

    @staticmethod
    def build_joint(cfg: ModelConfig, net: MultiTaskVideoNet | Any) -> MTINetJoint:
        if cfg.propagation.name == "reuse":
            raise ConfigError("decoder.name: mti_net needs an encoder pass per frame; "
                              "propagation.name 'reuse' has none on non-keyframes")
        chans = {"slow": list(net.slow.backbone.pyramid_channels)}
        if net.fast is not None:
            chans["fast"] = list(net.fast.backbone.pyramid_channels)
        return MTINetJoint(cfg, chans)

    def select(self, features: Tensor) -> Tensor:
        return self.se(features)

    def predict(self, features: Tensor) -> Tensor:
        """This task alone at the deepest scale (no pyramid): its initial prediction there."""
        return self.initial[LEVELS - 1](self.heads[LEVELS - 1](features))

    def init_output_bias(self, value: float) -> None:
        for conv in [*self.initial, self.final[-1]]:
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            nn.init.constant_(conv.bias, value)
