"""Linear interpolation of two fine-tunes of one network (WiSE-FT, Wortsman et al., CVPR 2022).

A model fine-tuned from another (here: the temporal adaptation runs from the shipped model) usually
stays in the same loss basin, so ``(1 - alpha) * base + alpha * tuned`` traces a trade-off curve
between the two without training; for issue 16 it kept the synthetic accuracy the adaptation lost
and much of the flicker it removed (models/mila_street_lite.md).
"""

from __future__ import annotations

import torch


class InterpolationError(ValueError):
    """The two state dicts are not the same network."""


def interpolate_state_dicts(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor (parameters and BN
    running statistics). Integer tensors (BN's ``num_batches_tracked``) cannot be mixed and are
    taken from ``base``: they only count updates. The two must hold the same keys and shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise InterpolationError(f"alpha: {alpha} is not in [0, 1]")
    if set(base) != set(tuned):
        diff = sorted(set(base) ^ set(tuned))
        raise InterpolationError(f"the checkpoints hold different tensors, e.g. {diff[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key, a in base.items():
        b = tuned[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            raise InterpolationError(f"{key}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}")
        out[key] = torch.lerp(a, b, alpha) if a.is_floating_point() else a.clone()
    return out
