"""Learning-rate schedules, one per stage, restarted at every stage (each stage has its own
optimiser). Epoch-based as in supplementary A (x0.1 every 40 of 120 pretraining epochs), so the
decay of one stage never runs into the next.

Built from torch's schedulers and stepped once per optimiser step; their ``state_dict`` goes into
the checkpoint, so a resumed run continues at exactly the learning rate it stopped at.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, StepLR

from .config import SCHEDULES, ScheduleConfig

__all__ = ["SCHEDULES", "build_scheduler"]


def build_scheduler(optimizer: torch.optim.Optimizer, sched: ScheduleConfig, steps_per_epoch: int,
                    epochs: int) -> LRScheduler:
    """``constant``; ``step``: x ``gamma`` every ``every`` epochs (or steps, ``unit: step``);
    ``cosine``: from the stage's lr down to ``min_lr`` over the stage's steps."""
    per_unit = steps_per_epoch if sched.unit == "epoch" else 1
    if sched.name == "step" and sched.every > 0:
        return StepLR(optimizer, step_size=max(1, sched.every * per_unit), gamma=sched.gamma)
    if sched.name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(1, steps_per_epoch * epochs), eta_min=sched.min_lr)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)
