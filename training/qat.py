"""Quantization-aware fine-tuning (QAT) for the ONNX Runtime INT8 recipe (docs/int8.md).

The ``qat:`` section of a training config fake-quantizes, while the trainer fine-tunes, exactly
the tensors that ``mtl_perception.backends.quantize`` later quantizes post-training (static QDQ):

* every ``Conv2d`` weight per output channel, s8 symmetric in [-127, 127] (ONNX Runtime's
  symmetric s8 range), scale = max|w| / 127 from the current weights on every step;
* every such conv's input and output per tensor, u8 asymmetric, the range widened to include 0
  as ONNX Runtime's ``compute_scale_zp`` does, tracked by an EMA min/max observer. The exported
  graph folds BatchNorm into the conv, so a conv followed by a BatchNorm has the *BatchNorm's*
  output fake-quantized (the folded conv's output). Per-channel symmetric weight quantization
  commutes with the folding's positive-or-negative per-channel factor, so with frozen BatchNorm
  statistics (``freeze_bn``) the weight grid is the one the folded graph gets.
* convs in the ``keep_float`` groups (the default INT8 recipe keeps ``head_out`` float) stay float.
  ILA's MatMul / Gather / Transpose are not fake-quantized (quantizing them changed nothing
  measurable post-training).

Gradients are straight-through inside the representable range and zero outside (torch's
``fake_quantize_per_*_affine``). Nothing is added to the model: each conv gets an instance-level
``_conv_forward`` and each paired BatchNorm a forward hook, so ``model.state_dict()`` (what the
trainer saves) is the plain FP32 model's, which the export + PTQ pipeline then quantizes. The
observer ranges are not saved: a resumed run re-initialises them from its first batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtl_perception.model.config import require

W_QMIN, W_QMAX = -127, 127  # onnxruntime quant_utils: symmetric INT8 range
A_QMIN, A_QMAX = 0, 255  # QUInt8 activations
# Torch module names of backends.quantize.FLOAT_GROUPS (those match the ONNX scope names of the
# same modules: e.g. ONNX "/head/head.2/Conv" is decoders.<task>.head.2 here).
GROUPS = {
    "ila_embed": r"^propagation\.[^.]+\.h$",
    "se": r"\.se\.",
    "head_in": r"^decoders\.[^.]+\.head\.0\.",
    "head_out": r"^decoders\.[^.]+\.head\.2$",
    "heads": r"^decoders\.[^.]+\.head\.",
    "stem": r"^(slow|fast)\.backbone\.(conv1|_conv_stem)$",
    "project": r"^(slow|fast)\.project\.",
    "slow": r"^slow\.",
    "fast": r"^fast\.",
}


@dataclass
class QatConfig:
    """``qat:`` of a training config; absent (null) = plain FP32 training."""

    enabled: bool = True
    stages: tuple[str, ...] = ()  # stage names that fake-quantize; empty = every stage
    per_channel: bool = True  # weights per output channel (the INT8 recipe's); false = per tensor
    keep_float: tuple[str, ...] = ("head_out",)  # GROUPS left float (the default recipe's)
    quantize_outputs: bool = True  # conv outputs too (ONNX Runtime's QDQ Conv quantizes them)
    averaging_constant: float = 0.01  # EMA weight of each batch's min/max
    freeze_bn: bool = True  # BatchNorm in eval mode: running statistics = the folded graph's

    def validate(self, prefix: str, stage_names: list[str]) -> None:
        # The trainer's stage names (training.config.STAGES); imported here because training.config
        # imports this module at its top.
        from .config import STAGES

        require(all(s in STAGES for s in self.stages), f"{prefix}.stages", list(self.stages),
                f"names from {list(STAGES)} (empty: every stage)")
        require(not self.stages or any(s in stage_names for s in self.stages), f"{prefix}.stages",
                list(self.stages), f"at least one stage the schedule runs ({stage_names})")
        require(all(g in GROUPS for g in self.keep_float), f"{prefix}.keep_float", list(self.keep_float),
                f"names from {sorted(GROUPS)}")
        require(0 < self.averaging_constant <= 1, f"{prefix}.averaging_constant",
                self.averaging_constant, "in (0, 1]")


def weight_qparams(w: Tensor, per_channel: bool = True) -> Tensor:
    """Symmetric s8 scale(s): max|w| / 127 per output channel (axis 0) or per tensor; an all-zero
    channel gets scale 1 (as onnxruntime does) instead of a division by zero."""
    absmax = w.detach().abs().flatten(1).amax(1) if per_channel else w.detach().abs().amax().reshape(1)
    return torch.where(absmax > 0, absmax / W_QMAX, torch.ones_like(absmax)).float()


def fake_quant_weight(w: Tensor, per_channel: bool = True) -> Tensor:
    """``w`` rounded to its s8 symmetric grid, straight-through gradient."""
    scale = weight_qparams(w, per_channel)
    if per_channel:
        zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, W_QMIN, W_QMAX)
    zp = torch.zeros((), dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_tensor_affine(w, scale[0], zp, W_QMIN, W_QMAX)


def act_qparams_tensor(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """u8 asymmetric (scale float64, zero point int32) of the range [lo, hi] (0-d tensors), widened
    to include 0 (so zero padding is exact), like onnxruntime.quantization.quant_utils.compute_scale_zp.
    Computed in float64 on the tensors' device: no host sync in the training step."""
    lo, hi = lo.double().clamp(max=0.0), hi.double().clamp(min=0.0)
    scale = (hi - lo) / (A_QMAX - A_QMIN)
    degenerate = scale < torch.finfo(torch.float32).tiny
    zp = torch.where(degenerate, torch.zeros_like(scale), torch.round(A_QMIN - lo / scale))
    return torch.where(degenerate, torch.ones_like(scale), scale), zp.int()


def act_qparams(lo: float, hi: float) -> tuple[float, int]:
    """:func:`act_qparams_tensor` of Python numbers, as Python numbers."""
    scale, zp = act_qparams_tensor(*(torch.tensor(v, dtype=torch.float64) for v in (lo, hi)))
    return float(scale), int(zp)


def fake_quant_act(x: Tensor, lo: float | Tensor, hi: float | Tensor) -> Tensor:
    """``x`` on the u8 grid of [lo, hi]: straight-through inside, zero gradient where clamped."""
    lo_t, hi_t = (torch.as_tensor(v, dtype=torch.float64, device=x.device) for v in (lo, hi))
    scale, zp = act_qparams_tensor(lo_t, hi_t)
    return torch.fake_quantize_per_tensor_affine(x, scale.float(), zp, A_QMIN, A_QMAX)


class ActObserver:
    """EMA of each training batch's min and max (the first batch sets them); frozen in eval. The
    range stays a pair of float64 0-d tensors on the activations' device (no host sync per step)."""

    def __init__(self, averaging_constant: float = 0.01) -> None:
        self.c = averaging_constant
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        lo, hi = (v.double() for v in torch.aminmax(x.detach()))
        if self.lo is None or self.hi is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.c * (lo - self.lo)
            self.hi = self.hi + self.c * (hi - self.hi)

    def __call__(self, x: Tensor, observe: bool) -> Tensor:
        if observe:
            self.observe(x)
        if self.lo is None or self.hi is None:  # eval before any training batch: nothing to use
            return x
        return fake_quant_act(x, self.lo, self.hi)


class _ConvForward:
    """Stands in for one conv's ``_conv_forward``: fake-quantized input and weight (and output,
    for a conv without a BatchNorm after it). Not a Module, so it adds no state_dict keys."""

    def __init__(self, ctl: QatController, conv: nn.Conv2d, quantize_output: bool) -> None:
        self.ctl, self.conv = ctl, conv
        self.inp = ActObserver(ctl.cfg.averaging_constant)
        self.out = ActObserver(ctl.cfg.averaging_constant) if quantize_output else None
        self.bn_out: ActObserver | None = None  # the output observer when a BatchNorm follows

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        conv = self.conv
        if not self.ctl.active:
            return nn.Conv2d._conv_forward(conv, x, weight, bias)
        x = self.inp(x, conv.training)
        y = nn.Conv2d._conv_forward(conv, x, fake_quant_weight(weight, self.ctl.cfg.per_channel), bias)
        return self.out(y, conv.training) if self.out is not None else y


def _conv_bn_pairs(model: nn.Module) -> dict[str, str]:
    """conv name -> the BatchNorm applied to its output: the conv's next sibling when that is a
    BatchNorm2d of its width (MBConv's _expand_conv/_bn0, ResNet's conv1/bn1, Sequential(conv, bn))."""
    pairs: dict[str, str] = {}
    for pname, parent in model.named_modules():
        kids = list(parent.named_children())
        for (a, m), (b, n) in zip(kids, kids[1:]):
            if isinstance(m, nn.Conv2d) and isinstance(n, nn.modules.batchnorm._BatchNorm) and \
                    n.num_features == m.out_channels:
                pre = f"{pname}." if pname else ""
                pairs[pre + a] = pre + b
    return pairs


class QatController:
    """Attaches fake quantization to ``model`` (see the module docstring); :meth:`detach` restores
    the plain model. The trainer calls :meth:`set_stage` whenever it sets train mode."""

    def __init__(self, cfg: QatConfig, model: nn.Module) -> None:
        self.cfg, self.model = cfg, model
        self.active = True
        keep = [re.compile(GROUPS[g]) for g in cfg.keep_float]
        pairs = _conv_bn_pairs(model)
        modules = dict(model.named_modules())
        self.convs: dict[str, _ConvForward] = {}
        self._hooks: list[Any] = []
        for name, m in modules.items():
            if not isinstance(m, nn.Conv2d) or any(p.search(name) for p in keep):
                continue
            bn = pairs.get(name)
            fwd = _ConvForward(self, m, cfg.quantize_outputs and bn is None)
            m._conv_forward = fwd  # type: ignore[method-assign]  # instance attribute: no state
            self.convs[name] = fwd
            if cfg.quantize_outputs and bn is not None:
                fwd.bn_out = ActObserver(cfg.averaging_constant)
                self._hooks.append(modules[bn].register_forward_hook(self._bn_hook(fwd.bn_out, m)))
        self.float_convs = sorted(n for n, m in modules.items()
                                  if isinstance(m, nn.Conv2d) and n not in self.convs)

    def _bn_hook(self, obs: ActObserver, conv: nn.Conv2d) -> Any:
        # observes while its conv trains (a frozen BatchNorm itself is in eval mode)
        def hook(bn: nn.Module, args: Any, out: Tensor) -> Tensor | None:
            return obs(out, conv.training) if self.active else None
        return hook

    def set_stage(self, stage: str) -> None:
        """Fake quantization on in the configured stages; BatchNorm statistics frozen."""
        self.active = not self.cfg.stages or stage in self.cfg.stages
        if self.active and self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def detach(self) -> None:
        for name in self.convs:
            self.model.get_submodule(name).__dict__.pop("_conv_forward", None)
        for h in self._hooks:
            h.remove()
        self.convs, self._hooks = {}, []
