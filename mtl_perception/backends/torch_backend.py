"""PyTorch backend: the reference implementation, on CPU or CUDA.

On CUDA the backend runs its own copy of the model on the configured ``cuda:N``: the shared model
stays on the host, so a CPU fallback after a sticky CUDA error never has to copy weights off a
dead context. FP16 (autocast) gets the same parity check and FP32 fallback as TensorRT's FP16
engines; ILA keeps its logits in FP32 under autocast (``model/ila.py``). The encoder is timed
with CUDA events, not device synchronisations.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ..model import MultiTaskVideoNet, StreamState
from .base import Backend, StepResult, reduce_outputs
from .cuda_util import (
    EncoderTimer,
    check_frames,
    fp16_or_fp32,
    resolve_cuda_device,
    same_device,
    stream_parity,
)


class TorchBackend(Backend):
    """Runs ``MultiTaskVideoNet.step`` eagerly; argmax and layout changes happen on the device."""

    name = "torch"

    def __init__(self, model: MultiTaskVideoNet, device: str = "cpu", fp16: bool = False,
                 channels_last: bool = True, verify: bool = True) -> None:
        super().__init__(tuple(model.cfg.input_size), model.tasks, model.cfg.num_classes)
        d = torch.device(device)
        if d.type == "cuda":
            d = resolve_cuda_device(d, torch.cuda.current_device())
        self._device = d
        self.fp16 = fp16 and d.type == "cuda"
        self.notes: list[str] = []
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # A private device copy off the host; on the CPU the (host) model itself is used.
        src = model if d.type == "cpu" else copy.deepcopy(model)
        self.model = src.eval().to(d, memory_format=self.memory_format)
        # Encoder time comes from hooks so the model's single step path stays untouched. Hooks on
        # a shared (CPU) model react only inside this backend's own ``step``.
        self._timer = EncoderTimer(cuda=d.type == "cuda")
        self._running = False
        for enc in (self.model.slow, self.model.fast):
            if enc is not None:
                enc.register_forward_pre_hook(self._enc_start)
                enc.register_forward_hook(self._enc_end)
        if self.fp16 and verify:
            fp16_or_fp32(self._verify, self._to_fp32, self.notes, "PyTorch CUDA")
        self._set_name()

    def _set_name(self) -> None:
        self.name = f"torch-{self._device.type}" + ("-fp16" if self.fp16 else "")

    def _to_fp32(self) -> None:
        self.fp16 = False
        self._set_name()

    def _verify(self, frames: int = 6) -> Any:
        """Autocast FP16 vs this same model in FP32 on the same GPU, over real frames."""
        imgs, source = check_frames(self.input_size, frames)  # type: ignore[arg-type]
        self.notes.append(f"FP16 self-check on {source}")
        return stream_parity(lambda i, s, k: self._step(i, s, k, fp16=False),
                             lambda i, s, k: self._step(i, s, k, fp16=True), imgs)

    @property
    def device(self) -> str:
        if self._device.type == "cuda":
            return f"{self._device} ({torch.cuda.get_device_name(self._device)})"
        return str(self._device)

    def _enc_start(self, *_: Any) -> None:
        if self._running:
            self._timer.start()

    def _enc_end(self, *_: Any) -> None:
        if self._running:
            self._timer.stop()

    def step(self, image: np.ndarray, state: StreamState | None, is_keyframe: bool) -> StepResult:
        return self._step(image, state, is_keyframe, self.fp16)

    @torch.inference_mode()
    def _step(self, image: np.ndarray, state: StreamState | None, is_keyframe: bool,
              fp16: bool) -> StepResult:
        t0 = time.perf_counter()
        scope = torch.cuda.device(self._device) if self._device.type == "cuda" else nullcontext()
        with scope:
            x = torch.from_numpy(np.ascontiguousarray(image)).to(self._device, non_blocking=True)
            x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            x = x.contiguous(memory_format=self.memory_format)
            amp = torch.autocast("cuda", dtype=torch.float16) if fp16 else nullcontext()
            # Nothing else moves this backend's model; guard anyway, comparing the index too.
            if not same_device(next(self.model.parameters()).device, self._device):
                self.model.to(self._device, memory_format=self.memory_format)
            self._timer.reset()
            self._running = True
            try:
                with amp:
                    out, new_state = self.model.step(x, state, is_keyframe)
            finally:
                self._running = False
            host = {k: v.cpu().numpy() for k, v in reduce_outputs(out).items()}  # syncs the stream
            enc = self._timer.seconds()
        total = time.perf_counter() - t0
        return StepResult(host, new_state, {"encoder": enc, "decoder": max(0.0, total - enc)})

    def close(self) -> None:
        if self._device.type != "cpu":
            self.model = None  # type: ignore[assignment] - frees the private device copy
