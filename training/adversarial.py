"""Slow/fast feature alignment (MILA Eq. 3, supplementary E).

``L = min_fast ( alpha * L1(slow, fast) - beta * min_D L_adv )`` with the standard GAN objective
``L_adv = log D(slow) + log(1 - D(fast))``. Encoder and discriminator are trained in one backward
pass through a gradient-reversal layer (Ganin & Lempitsky 2015): the discriminator minimises its
binary cross-entropy, and the reversed gradient makes the fast encoder maximise it (confuse D).
Slow features are the target and are detached: the fast network mimics the slow one, not the
other way round.

Scale: ``adv`` is the *sum* ``BCE(D(slow), 1) + BCE(D(fast), 0)`` (each averaged over the batch),
i.e. ``-L_adv`` of Eq. 3, so ``beta * adv`` gives the fast encoder exactly ``beta`` times the
gradient of ``log(1 - D(fast))``; an earlier version averaged the two terms, which halved the
effective beta (0.5 where the paper uses alpha = beta = 1).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # noqa: ANN401
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN401
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; multiplies the gradient by ``-scale`` backward."""
    return _GradReverse.apply(x, scale)


class GradientReversal(nn.Module):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.scale)


class FeatureDiscriminator(nn.Module):
    """Three 3x3 convs with ReLU between them, global average pooling, sigmoid -> one
    probability per image that the features come from the slow network (supplementary E)."""

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            # The third conv outputs the single logit map; no ReLU on it: a ReLU right before
            # the sigmoid would pin D(x) >= 0.5 and can die (zero gradient) for good.
            nn.Conv2d(hidden, 1, 3, padding=1),
        )

    def logits(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(x))


def alignment_losses(slow: Tensor, fast: Tensor, discriminator: FeatureDiscriminator | None,
                     use_l1: bool = True, use_adversarial: bool = True,
                     grl_scale: float = 1.0) -> dict[str, Tensor]:
    """``l1``: mean |slow - fast| (slow detached); ``adv``: the sum of the discriminator's BCE on
    slow (label 1, detached) and on gradient-reversed fast (label 0) features. Add
    ``alpha*l1 + beta*adv`` to the loss: D descends on ``adv`` while the fast encoder, through the
    reversal, ascends on it."""
    out: dict[str, Tensor] = {}
    target = slow.detach()
    if use_l1:
        out["l1"] = (fast - target).abs().mean()
    if use_adversarial:
        if discriminator is None:
            raise ValueError("adversarial alignment needs a discriminator")
        real = discriminator.logits(target)
        fake = discriminator.logits(grad_reverse(fast, grl_scale))
        out["adv"] = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    return out
