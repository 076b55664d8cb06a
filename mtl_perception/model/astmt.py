"""ASTMT decoder (Maninis et al., "Attentive Single-Tasking of Multiple Tasks", Sec. 3-4) on the
slow-fast streaming path.

The decoder layers are *shared* by all tasks and every task modulates them (Sec. 3): per task a
squeeze-and-excitation gate after each shared layer, a residual adapter beside it
(``L_t(x) = L(x) + RA_t(x)``, a 1x1 conv) and its own batch norm. ``select`` is the task's SE on
the encoder features (before ILA), so the StreamState keeps one stream per task as in MILA.

Single-tasking on a node that answers all tasks per frame: ASTMT runs one task per forward pass.
Here the T task passes of the shared decoder are *batched*: the T task feature maps are stacked
along the batch axis and every shared conv runs once on a batch of T*B, the task-specific parts
(BN, SE, adapters) on their own slice. One graph, one call per frame; the MACs are those of T
single-task passes of the decoder (what a per-task decoder costs anyway), not T encoder passes:
the encoder is shared and unmodulated (the paper's "SE decoder-only" point, Table 3c), because
modulating the encoder per task would multiply the per-frame encoder cost by T.

The adversarial task-gradient disentanglement (Sec. 4) is training-side: see
:mod:`training.task_adversarial` (gradients of each task's loss at the shared features, through
:func:`training.adversarial.grad_reverse`, into a task discriminator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig, ModelConfig
from .decoder import SqueezeExcitation
from .densemtl import JointOutput
from .registry import DECODERS

if TYPE_CHECKING:
    from .network import MultiTaskVideoNet


class ASTMTJoint(nn.Module):
    """The shared decoder layers, run once on the T tasks stacked along the batch axis."""

    needs_pyramid = False

    def __init__(self, tasks: tuple[str, ...], in_channels: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        # False: one decoder pass per task instead (same outputs; bench/seed_systems.py compares)
        self.batched = True
        h0, h1 = hidden
        self.layers = nn.ModuleList([nn.Conv2d(in_channels, h0, 3, padding=1, bias=False),
                                     nn.Conv2d(h0, h1, 1, bias=False)])

    def forward(self, feats: dict[str, Tensor], decoders: nn.ModuleDict, pyramid: list[Tensor] | None = None,
                is_keyframe: bool = True) -> JointOutput:
        del pyramid, is_keyframe
        out: dict[str, Tensor] = {}
        for group in [self.tasks] if self.batched else [(t,) for t in self.tasks]:
            xs = [feats[t] for t in group]
            for i, layer in enumerate(self.layers):
                shared = layer(torch.cat(xs, 0)).chunk(len(group), 0)  # one call for the group
                xs = [decoders[t].modulate(i, y, x) for t, y, x in zip(group, shared, xs)]
            out.update({t: decoders[t].out(x) for t, x in zip(group, xs)})
        return out, {}


@DECODERS.register("astmt")
class ASTMTTaskDecoder(nn.Module):
    """Per-task part: SE on the encoder features (``select``), and per shared layer a residual
    adapter, batch norm and SE gate; the task's output conv."""

    def __init__(self, cfg: DecoderConfig, in_channels: int, out_channels: int,
                 head_channels: int | None = None) -> None:
        super().__init__()
        self.se = SqueezeExcitation(in_channels, cfg.se_reduction)
        h0, h1 = cfg.hidden
        cin = head_channels or in_channels
        self.adapters = nn.ModuleList([nn.Conv2d(cin, h0, 1, bias=False), nn.Conv2d(h0, h1, 1, bias=False)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(h0), nn.BatchNorm2d(h1)])
        self.gates = nn.ModuleList([SqueezeExcitation(h0, cfg.se_reduction),
                                    SqueezeExcitation(h1, cfg.se_reduction)])
        self.out = nn.Conv2d(h1, out_channels, 1)

    @staticmethod
    def build_joint(cfg: ModelConfig, net: MultiTaskVideoNet | Any) -> ASTMTJoint:
        fusion = getattr(net, "fusion", None)
        cin = getattr(fusion, "out_channels", cfg.feature_channels)
        return ASTMTJoint(cfg.tasks, cin, cfg.decoder.hidden)

    def modulate(self, i: int, shared: Tensor, x: Tensor) -> Tensor:
        """Task modulation of shared layer ``i``: ``SE_t(ReLU(BN_t(L(x) + RA_t(x))))``."""
        return self.gates[i](F.relu(self.bns[i](shared + self.adapters[i](x))))

    def select(self, features: Tensor) -> Tensor:
        return self.se(features)

    def predict(self, features: Tensor) -> Tensor:
        raise RuntimeError("astmt: the decoder layers are shared; run the network's step()")

    def init_output_bias(self, value: float) -> None:
        assert self.out.bias is not None
        nn.init.constant_(self.out.bias, value)
