"""Mixed precision for training: ``--amp bf16|fp16|off``.

``bf16`` autocasts the forward pass to bfloat16 on CPU (AVX-512 BF16 / AMX) and CUDA; it has
FP32's exponent range, so no loss scaling. ``fp16`` (CUDA) also needs a
:class:`torch.amp.GradScaler`: the loss is multiplied before backward so small gradients do not
flush to zero, and steps whose gradients overflowed are skipped while the scale backs off. With
``off`` (or ``bf16``) the scaler is disabled and :meth:`Precision.step` is a plain backward + step,
so there is one code path. Loss terms are computed in FP32 from the autocast outputs, and
validation always runs in FP32 so metrics stay comparable across runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in AMP_MODES:
            raise ValueError(f"amp {mode!r}; allowed: {list(AMP_MODES)}")
        self.mode, self.device = mode, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=mode == "fp16")

    def autocast(self) -> AbstractContextManager:
        """The forward-pass context: autocast to bf16/fp16, or nothing for ``off``."""
        return torch.autocast(self.device.type, dtype=_DTYPES.get(self.mode, torch.float32),
                              enabled=self.mode != "off")

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer, grad_clip: float = 0.0) -> bool:
        """Backward, optional gradient-norm clipping (on the unscaled gradients), optimiser step.
        Returns False when fp16 gradients overflowed and the step was skipped."""
        self.scaler.scale(loss).backward()
        if grad_clip:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(optimizer)
        self.scaler.update()
        # The scaler lowers its scale exactly when it skipped the step (inf/NaN gradients).
        return not (self.scaler.is_enabled() and self.scaler.get_scale() < scale)

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler.is_enabled() else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
