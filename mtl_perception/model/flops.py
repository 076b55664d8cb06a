"""Multiply-accumulate counts with ``thop`` (the paper's tool; its "GFLOPs" are GMACs).

thop hooks leaf modules, so it counts ILA's 3x3 conv ``h`` but not the attention products, which
are functional; a custom rule on the parameter-free :class:`LocalAttention` /
:class:`GlobalAttention` leaves adds them (L^2 * (Ck + C) MACs per pixel for the local window).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .ila import GlobalAttention, InterFrameAttention, LocalAttention
from .network import MultiTaskVideoNet


def _count_attention(module: LocalAttention | GlobalAttention, inputs: tuple[Tensor, ...],
                     output: Tensor) -> None:
    module.total_ops += torch.DoubleTensor([float(module.macs(inputs[0], inputs[2]))])


CUSTOM_OPS = {LocalAttention: _count_attention, GlobalAttention: _count_attention}


def count_macs(module: nn.Module, *inputs: Tensor) -> int:
    """MACs of ``module(*inputs)`` (thop, plus the attention rule)."""
    from thop import profile  # optional dependency: only the benchmarks and tests count FLOPs
    from thop.vision.basic_hooks import count_convNd

    from .efficientnet import SameConv2d

    # thop looks hooks up by exact type: a Conv2d subclass (EfficientNet's "same"-padded conv)
    # would otherwise count zero.
    ops = {**CUSTOM_OPS, SameConv2d: count_convNd}
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        macs, _ = profile(module, inputs=inputs, custom_ops=ops, verbose=False)
    _strip_thop_buffers(module)
    return int(macs)


def _strip_thop_buffers(module: nn.Module) -> None:
    # thop leaves total_ops/total_params buffers behind, which would pollute state_dicts.
    for m in module.modules():
        for name in ("total_ops", "total_params"):
            if name in m._buffers:
                del m._buffers[name]


class _Call(nn.Module):
    """``fn(image)`` as a module call, with ``model`` as a submodule so thop hooks its leaves."""

    def __init__(self, model: nn.Module, fn: Callable[[Tensor], object]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, image: Tensor) -> object:
        return self.fn(image)


def call_macs(model: nn.Module, fn: Callable[[Tensor], object], image: Tensor) -> int:
    """MACs of ``fn(image)``, a computation of ``model`` (one stream step, a fast-only frame...)."""
    return count_macs(_Call(model, fn), image)


def frame_macs(model: MultiTaskVideoNet, input_size: tuple[int, int] | None = None) -> dict[str, int]:
    """MACs of one frame in steady state (every memory slot filled), batch 1.

    ``keyframe``: slow encoder + decoders + attention from the last non-keyframe;
    ``keyframe_alone``: a keyframe with no non-keyframe before it (the K = 1 stream);
    ``nonkey``: fast encoder + decoders + attention from the last keyframe and non-keyframe.
    """
    h, w = input_size or tuple(model.cfg.input_size)
    model = model.eval()
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        _, s1 = model.step(x, None, True)
        has_nonkey_step = model.fast is not None or model.reuse
        s2 = model.step(x, s1, False)[1] if has_nonkey_step else s1
    out = {"keyframe_alone": call_macs(model, lambda im: model.step(im, None, True)[0], x),
           "keyframe": call_macs(model, lambda im: model.step(im, s2, True)[0], x)}
    if has_nonkey_step:
        out["nonkey"] = call_macs(model, lambda im: model.step(im, s2, False)[0], x)
    return out


def average_macs(macs: dict[str, int], keyframe_interval: int) -> float:
    """Average MACs per frame of a stream with one keyframe every K frames."""
    if keyframe_interval == 1:
        return float(macs["keyframe_alone"])
    return (macs["keyframe"] + (keyframe_interval - 1) * macs["nonkey"]) / keyframe_interval


def ila_macs(module: InterFrameAttention, channels: int, feature_hw: tuple[int, int]) -> dict[str, int]:
    """MACs of one ILA propagation at a feature size: the h conv of the current frame plus one
    attention product (the previous frame's embedding is cached in the stream state)."""
    h, w = feature_hw
    f = torch.rand(1, channels, h, w)
    conv = count_macs(module.h, f)
    q = module.h(f).detach()
    attn = count_macs(module.attend, q, q, f)
    return {"conv": conv, "attention": attn, "total": conv + attn,
            "params": sum(p.numel() for p in module.parameters())}
