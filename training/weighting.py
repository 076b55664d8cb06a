"""Task weighting: equal, uncertainty (Kendall et al. 2018) and DWA (Liu et al. 2019, MTAN).

All three take the per-task losses of a step and return the scalar to back-propagate; DWA also
needs the per-epoch average losses (:meth:`end_epoch`). State round-trips through
``state_dict`` as tensors/plain numbers so it fits a ``weights_only`` checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

WEIGHTINGS = ("equal", "uncertainty", "dwa")


class TaskWeighting(nn.Module):
    """Base: equal weights (the paper's default, Sec. 4.3 "Weighting Strategies")."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)

    def weights(self) -> dict[str, float]:
        return {t: 1.0 for t in self.tasks}

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        w = self.weights()
        return sum(w[t] * losses[t] for t in self.tasks)  # type: ignore[return-value]

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        """Called with the epoch's average unweighted loss per task."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        del state


class UncertaintyWeighting(TaskWeighting):
    """``sum_t exp(-s_t) L_t + s_t`` with learnable ``s_t = log sigma_t^2`` (Kendall et al.).

    One form for all tasks (the regression/classification factor 1/2 is absorbed into s_t), as
    in the MTAN and MTI-Net code bases; s_t starts at 0, i.e. equal weighting.
    """

    def __init__(self, tasks: tuple[str, ...]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def weights(self) -> dict[str, float]:
        return {t: math.exp(-self.log_vars[i].item()) for i, t in enumerate(self.tasks)}

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        total = self.log_vars.sum() * 0.0
        for i, t in enumerate(self.tasks):
            total = total + torch.exp(-self.log_vars[i]) * losses[t] + self.log_vars[i]
        return total


class DWAWeighting(TaskWeighting):
    """Dynamic Weight Average: ``w_t = T_tasks * softmax_t(r_t / temp)`` with
    ``r_t = L_t(e-1) / L_t(e-2)`` from the previous two epochs' average losses; equal weights
    for the first two epochs."""

    def __init__(self, tasks: tuple[str, ...], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        self.temperature = temperature
        self.history: list[list[float]] = []

    def weights(self) -> dict[str, float]:
        if len(self.history) < 2:
            return super().weights()
        prev, prev2 = self.history[-1], self.history[-2]
        ratios = [a / max(b, 1e-12) for a, b in zip(prev, prev2)]
        exps = [math.exp(r / self.temperature) for r in ratios]
        s = sum(exps)
        return {t: len(self.tasks) * e / s for t, e in zip(self.tasks, exps)}

    def end_epoch(self, mean_losses: Mapping[str, float]) -> None:
        self.history.append([float(mean_losses[t]) for t in self.tasks])
        self.history = self.history[-2:]

    def extra_state(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.history = [list(map(float, h)) for h in state.get("history", [])]


def build_weighting(name: str, tasks: tuple[str, ...], dwa_temperature: float = 2.0) -> TaskWeighting:
    if name == "equal":
        return TaskWeighting(tasks)
    if name == "uncertainty":
        return UncertaintyWeighting(tasks)
    if name == "dwa":
        return DWAWeighting(tasks, dwa_temperature)
    raise ValueError(f"task weighting {name!r}; allowed: {list(WEIGHTINGS)}")
