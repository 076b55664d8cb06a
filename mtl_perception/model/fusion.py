"""How a frame's own features join what its memory slots propagate (config ``propagation.fusion``).

The MILA paper does not say; ``average`` is this package's default (the normalised sum), and
``concat`` is the learned alternative: the decoder's first 3x3 conv sees the current features and
every slot's propagated features side by side and learns how to weigh them.

Slots are fixed per model, in this order: what the last keyframe propagates, then (with
``multi_frame``) what the last non-keyframe propagates. A slot with nothing in it (a keyframe has
no keyframe source; the start of a stream; a weight-0 slot the exporter feeds) contributes
nothing to ``average`` and zeros to ``concat``, so an exported graph keeps one static shape.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import FUSION

# One slot's contribution: (weight, propagated features), or None for an empty slot.
Slot = tuple[Tensor | float, Tensor] | None


@FUSION.register("average")
class AverageFusion(nn.Module):
    """``(f + sum_s w_s p_s) / (1 + sum_s w_s)``: keeps the scale of ``f`` whatever the number
    of sources, adds no parameters (see :class:`~mtl_perception.model.network.MultiTaskVideoNet`)."""

    widens = False

    def __init__(self, channels: int, slots: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.slots = slots

    def forward(self, current: Tensor, slots: list[Slot]) -> Tensor:
        out, norm, any_source = current, 1.0, False
        for s in slots:
            if s is not None:
                w, p = s
                out, norm, any_source = out + w * p, norm + w, True
        return out / norm if any_source else current


@FUSION.register("concat")
class ConcatFusion(nn.Module):
    """``[f, w_1 p_1, ..., w_n p_n]`` along channels, zeros for an empty slot: the decoder's first
    conv then has ``(1 + slots) C`` inputs (learned fusion). On a non-keyframe of the paper's
    model this triples that conv's MACs."""

    widens = True

    def __init__(self, channels: int, slots: int) -> None:
        super().__init__()
        self.out_channels = channels * (1 + slots)
        self.slots = slots

    def forward(self, current: Tensor, slots: list[Slot]) -> Tensor:
        if len(slots) != self.slots:
            raise ValueError(f"concat fusion: {len(slots)} slots given, built for {self.slots}")
        # zeros_like(current): an empty slot needs no graph input, the shape stays static
        parts = [current] + [torch.zeros_like(current) if s is None else s[0] * s[1] for s in slots]
        return torch.cat(parts, dim=1)
