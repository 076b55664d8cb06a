"""PyTorch backend: the reference implementation, on CPU or CUDA."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ..model import MultiTaskVideoNet, StreamState
from .base import Backend, StepResult, reduce_outputs


class TorchBackend(Backend):
    """Runs ``MultiTaskVideoNet.step`` eagerly; argmax and layout changes happen on the device."""

    name = "torch"

    def __init__(self, model: MultiTaskVideoNet, device: str = "cpu", fp16: bool = False,
                 channels_last: bool = True) -> None:
        super().__init__(tuple(model.cfg.input_size), model.tasks, model.cfg.num_classes)
        self._device = torch.device(device)
        self.fp16 = fp16 and self._device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self._device, memory_format=self.memory_format)
        self.name = f"torch-{self._device.type}" + ("-fp16" if self.fp16 else "")
        # Encoder time comes from hooks so the model's single step path stays untouched.
        self._enc_t0 = 0.0
        self._enc_s = 0.0
        # Hooks stay on the (shared) model; only the backend inside its own ``step`` reacts, so a
        # second TorchBackend on the same model (e.g. the CPU fallback after a CUDA one) never
        # syncs a dead device or counts another backend's time.
        self._running = False
        for enc in (model.slow, model.fast):
            if enc is not None:
                enc.register_forward_pre_hook(self._enc_start)
                enc.register_forward_hook(self._enc_end)

    @property
    def device(self) -> str:
        if self._device.type == "cuda":
            return f"{self._device} ({torch.cuda.get_device_name(self._device)})"
        return str(self._device)

    def _sync(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _enc_start(self, *_: Any) -> None:
        if not self._running:
            return
        self._sync()
        self._enc_t0 = time.perf_counter()

    def _enc_end(self, *_: Any) -> None:
        if not self._running:
            return
        self._sync()
        self._enc_s += time.perf_counter() - self._enc_t0

    @torch.inference_mode()
    def step(self, image: np.ndarray, state: StreamState | None, is_keyframe: bool) -> StepResult:
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self._device, non_blocking=True)
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0).contiguous(memory_format=self.memory_format)
        self._enc_s = 0.0
        amp = torch.autocast("cuda", dtype=torch.float16) if self.fp16 else nullcontext()
        # The model may have been moved by another backend sharing it; bring it back.
        if next(self.model.parameters()).device.type != self._device.type:
            self.model.to(self._device, memory_format=self.memory_format)
        self._running = True
        try:
            with amp:
                out, new_state = self.model.step(x, state, is_keyframe)
        finally:
            self._running = False
        host = {k: v.cpu().numpy() for k, v in reduce_outputs(out).items()}
        total = time.perf_counter() - t0
        return StepResult(host, new_state, {"encoder": self._enc_s, "decoder": max(0.0, total - self._enc_s)})
