"""PyTorch CPU with BF16 autocast, only on CPUs with native BF16 arithmetic; module groups per recipe.

oneDNN runs BF16 convolutions on AVX512-BF16 (Zen 4, Cooper Lake and later) or AMX, about twice as
fast as FP32 here (docs/bf16.md). Without those instructions it emulates BF16 and is
*slower* than FP32, so :func:`native_bf16` must hold before this backend is created. The stream
state and outputs stay float32 at the boundary (the reduction casts them), accuracy against FP32 is
checked by the same gates as INT8 (``mtl-perception-quantize`` records the result).

A :class:`Bf16Recipe` names which module groups (:data:`BF16_GROUPS`) run under autocast and which
groups inside them stay FP32 (autocast off, inputs cast up), the way INT8's recipes name the layers
kept float. Groups are switched by forward hooks on the (shared) model that act only inside this
backend's own ``step``: the model's single step path stays untouched. :data:`RECIPES` is the ladder
:func:`best_bf16` climbs, fastest first; ``mtl-perception-quantize`` records the recipe that passed,
and the backend reads it from that record when ``backend: auto`` (or ``torch-bf16``) creates it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..model import MultiTaskVideoNet
from .base import BackendError, StepResult
from .cpu_features import cpu_flags
from .gates import GateMeter, Gates, measure_against, stream_outputs
from .torch_backend import TorchBackend

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """(supported, why): oneDNN BF16 available and the CPU advertises AVX512-BF16 or AMX-BF16."""
    if not torch.backends.mkldnn.is_available():
        return False, "torch has no oneDNN (mkldnn)"
    flags = cpu_flags()
    have = [f for f in NATIVE_FLAGS if f in flags]
    if not have:
        return False, "CPU has no native BF16 (no avx512_bf16/amx_bf16 flag): BF16 would be emulated, slower"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN reports no BF16 support"
    return True, "native BF16 (" + ", ".join(have) + ")"


# -- module groups and recipes --------------------------------------------------------------------
def _encoders(m: MultiTaskVideoNet) -> list[nn.Module]:
    return [e for e in (m.slow, m.fast) if e is not None]


def _ila(m: MultiTaskVideoNet) -> list[Any]:
    return list(m.propagation.values())


def _convs(module: nn.Module) -> list[nn.Module]:
    return [c for c in module.modules() if isinstance(c, nn.Conv2d)]


def _pointwise_of(enc: nn.Module) -> list[nn.Module]:
    """The 1x1 convolutions of an encoder's trunk, in order (not its projection, not the stem):
    most of an EfficientNet's MACs, while its depthwise convolutions are memory-bound."""
    trunk = getattr(enc, "backbone", enc)
    return [c for c in _convs(trunk) if c.groups == 1 and tuple(c.kernel_size) == (1, 1)]


def _late(convs: list[nn.Module]) -> list[nn.Module]:
    return convs[len(convs) // 2:]


def _blocks_of(enc: nn.Module) -> list[nn.Module]:
    """The residual blocks of an encoder's trunk, in order (EfficientNet MBConvs, ResNet blocks)."""
    trunk = getattr(enc, "backbone", enc)
    if hasattr(trunk, "_blocks"):
        return list(trunk._blocks)
    layers = [getattr(trunk, n) for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(trunk, n)]
    return [b for layer in layers for b in layer]


# Group name -> the modules it covers. "all" (the whole step under autocast) is not a module group.
BF16_GROUPS: dict[str, Callable[[MultiTaskVideoNet], list[nn.Module]]] = {
    "slow": lambda m: [m.slow],  # keyframe encoder
    "fast": lambda m: [m.fast] if m.fast is not None else [],  # non-keyframe encoder
    "stem": lambda m: [c for e in _encoders(m) for c in _convs(e)[:1]],  # first conv (raw pixels)
    "project": lambda m: [e.project for e in _encoders(m) if hasattr(e, "project")],  # -> shared features
    # 1x1 convs of both trunks; "late": the deeper half of each trunk's (lower resolution; its BF16
    # rounding moved the default model's real-video outputs least, docs/bf16.md)
    "pointwise": lambda m: [c for e in _encoders(m) for c in _pointwise_of(e)],
    "pointwise_late": lambda m: [c for e in _encoders(m) for c in _late(_pointwise_of(e))],
    # each residual block of both trunks on its own: BF16 inside, the residual stream between
    # blocks (and the stem and projection) FP32
    "blocks": lambda m: [b for e in _encoders(m) for b in _blocks_of(e)],
    "blocks_late": lambda m: [b for e in _encoders(m) for b in _late(_blocks_of(e))],
    "ila_embed": lambda m: [p.h for p in _ila(m)],  # ILA key/query embedding conv
    "ila_attend": lambda m: [p.attend for p in _ila(m)],  # ILA logits, softmax, weighted sum
    "ila": lambda m: [x for p in _ila(m) for x in (p.h, p.attend)],
    "se": lambda m: [d.se for d in m.decoders.values() if hasattr(d, "se")],  # task channel selection
    # every task decoder part but its SE, plus a cross-task decoder's joint module
    "heads": lambda m: [c for d in m.decoders.values() for n, c in d.named_children() if n != "se"]
    + ([m.joint] if m.joint is not None else []),
    "head_out": lambda m: [c for d in m.decoders.values() for c in _convs(d)[-1:]],  # logits/depth/normals
}
ALL = "all"


@dataclass(frozen=True)
class Bf16Recipe:
    """``bf16``: groups run under autocast (``("all",)``: the whole step); ``fp32``: groups inside
    them kept FP32 (nested autocast off, their BF16 inputs cast up). A BF16 group's outputs are cast
    back to FP32 at its boundary, so the FP32 rest of the model (and the stream state) sees FP32."""

    name: str
    bf16: tuple[str, ...]
    fp32: tuple[str, ...] = ()

    def check(self) -> None:
        unknown = set(self.bf16 + self.fp32) - set(BF16_GROUPS) - {ALL}
        if unknown or ALL in self.fp32:
            raise ValueError(f"BF16 recipe {self.name!r}: unknown group(s) {sorted(unknown or {ALL})}; "
                             f"known: {sorted(BF16_GROUPS)} and {ALL!r} (bf16 only)")

    def describe(self) -> str:
        return f"{self.name} (BF16: {','.join(self.bf16)}; FP32: {','.join(self.fp32) or '-'})"


# The ladder of :func:`best_bf16`, fastest first. Measured on models/mila_street_lite.pt
# (docs/bf16.md "BF16 recipes"): BF16 rounding in the encoders is what moves the outputs
# (heads, ILA and SE in BF16 change nothing measurable), so the rungs keep more of the encoders FP32.
RECIPES = (
    Bf16Recipe("encoders", ("slow", "fast")),  # the rest FP32: faster than "all" (no BF16 resize/activations)
    Bf16Recipe("pointwise", ("pointwise",)),  # trunk 1x1 convs only; depthwise, stem, projection FP32
    Bf16Recipe("pointwise-late", ("pointwise_late",)),  # the deeper half of those
)
# Measured, not on the ladder (slower than a rung and no more accurate): by name only
EXTRA = (
    Bf16Recipe("all", (ALL,)),  # the whole step under autocast (the backend's first form)
    Bf16Recipe("all-fp32-heads", (ALL,), ("ila_attend", "se", "heads")),
    Bf16Recipe("encoders-fp32-ends", ("slow", "fast"), ("stem", "project")),
    Bf16Recipe("blocks", ("blocks",)),
    Bf16Recipe("blocks-late", ("blocks_late",)),
    Bf16Recipe("slow", ("slow",)),
)
BY_NAME = {r.name: r for r in RECIPES + EXTRA}
DEFAULT_RECIPE = "encoders"  # without a record (``backend: torch-bf16`` named by hand): the fastest


def _cast(x: Any, dtype: torch.dtype, src: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.dtype == src else x
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype, src) for v in x)
    if isinstance(x, dict):
        return {k: _cast(v, dtype, src) for k, v in x.items()}
    return x


def recorded_recipe(quant: dict[str, Any] | None) -> tuple[str, str]:
    """(recipe name, "recorded" or "default") from a quantize record as ``cpu_choice.read_record``
    returns it: the BF16 recipe ``mtl-perception-quantize`` gated, only if it passed."""
    cand = ((quant or {}).get("candidates") or {}).get("torch-cpu-bf16") or {}
    name = cand.get("recipe") if cand.get("passed") else None
    return (str(name), "recorded") if name else (DEFAULT_RECIPE, "default")


class TorchBf16Backend(TorchBackend):
    """``TorchBackend`` on the CPU with the module groups of a :class:`Bf16Recipe` in BF16.

    ``recipe``: a recipe or the name of one (:data:`BY_NAME`); None = the one recorded for this
    model by ``mtl-perception-quantize`` (in ``cache_dir``), else :data:`DEFAULT_RECIPE`;
    ``source``: where a given ``recipe`` came from, for the reason line (:func:`recorded_recipe`)."""

    def __init__(self, model: MultiTaskVideoNet, channels_last: bool = True, force: bool = False,
                 recipe: Bf16Recipe | str | None = None, cache_dir: str | Path | None = None,
                 source: str = "") -> None:
        ok, why = native_bf16()
        if not ok and not force:
            raise BackendError(why)
        super().__init__(model, device="cpu", channels_last=channels_last)
        if recipe is None:
            from .cpu_choice import read_record
            from .export import model_hash

            size = tuple(int(v) for v in self.model.cfg.input_size)
            recipe, source = recorded_recipe(read_record(model_hash(self.model), size, cache_dir))  # type: ignore[arg-type]
        if isinstance(recipe, str):
            if recipe not in BY_NAME:
                raise BackendError(f"BF16 recipe: unknown {recipe!r}; known: {sorted(BY_NAME)}")
            recipe = BY_NAME[recipe]
        recipe.check()
        self.recipe = recipe
        self.name = "torch-cpu-bf16"
        self.reason = f"{why}; recipe {recipe.describe()}" + (f" ({source})" if source else "")
        self._scopes: list[Any] = []
        self._handles: list[Any] = []
        for groups, enabled in ((() if ALL in recipe.bf16 else recipe.bf16, True), (recipe.fp32, False)):
            for g in groups:
                for mod in BF16_GROUPS[g](self.model):
                    self._hook(mod, enabled)

    def _hook(self, mod: nn.Module, bf16: bool) -> None:
        def pre(_: nn.Module, args: Any, kwargs: Any) -> Any:
            if not self._running:
                return None
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
            ctx.__enter__()
            self._scopes.append(ctx)
            # FP32 inside BF16: autocast off does not cast, so BF16 activations are cast up here
            return None if bf16 else (_cast(args, torch.float32, torch.bfloat16),
                                      _cast(kwargs, torch.float32, torch.bfloat16))

        def post(_: nn.Module, args: Any, kwargs: Any, out: Any) -> Any:
            if not self._running or not self._scopes:
                return None
            self._scopes.pop().__exit__(None, None, None)
            # a BF16 group hands FP32 on (the FP32 rest of the model would reject BF16 inputs)
            return _cast(out, torch.float32, torch.bfloat16) if bf16 and out is not None else None

        self._handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        self._handles.append(mod.register_forward_hook(post, with_kwargs=True, always_call=True))

    def step(self, image: np.ndarray, state: Any, is_keyframe: bool) -> StepResult:
        outer = torch.autocast("cpu", dtype=torch.bfloat16, enabled=ALL in self.recipe.bf16)
        try:
            with outer:
                return super().step(image, state, is_keyframe)
        finally:
            while self._scopes:  # a forward that raised before its post-hook
                self._scopes.pop().__exit__(None, None, None)

    def close(self) -> None:
        """Removes this backend's hooks from the (shared) model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        super().close()


# -- the ladder -----------------------------------------------------------------------------------
@dataclass
class Bf16Result:
    """The first recipe of the ladder that met the gates (None: none did) and every tried one's line."""

    recipe: Bf16Recipe | None
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)


def measure_recipe(model: MultiTaskVideoNet, recipe: Bf16Recipe, clips: Sequence[np.ndarray],
                   ref_outs: Sequence[Sequence[dict[str, np.ndarray]]], keyframe_interval: int = 5,
                   labels: Sequence[Sequence[dict[str, np.ndarray]]] | None = None,
                   force: bool = False) -> GateMeter:
    """The gate metrics of ``recipe`` on ``clips`` against FP32's outputs ``ref_outs`` (streamed
    once by the caller with the same ``keyframe_interval``)."""
    b = TorchBf16Backend(model, recipe=recipe, force=force)
    try:
        return measure_against(ref_outs, b, clips, keyframe_interval, labels)
    finally:
        b.close()


def best_bf16(model: MultiTaskVideoNet, held_out: Sequence[np.ndarray], keyframe_interval: int = 5,
              labels: Sequence[Sequence[dict[str, np.ndarray]]] | None = None,
              recipes: Sequence[Bf16Recipe] = RECIPES, gates: Gates | None = None,
              force: bool = False) -> Bf16Result:
    """Gate each recipe on ``held_out`` against PyTorch FP32 (streamed once), fastest first, and
    return the first that passes; ``labels``: ground truth per clip and frame (else FP32 is)."""
    gates = gates or Gates()
    ref = TorchBackend(model, "cpu")
    ref_outs = [stream_outputs(ref, c, keyframe_interval) for c in held_out]
    tried: list[dict[str, Any]] = []
    for i, r in enumerate(recipes):
        meter = measure_recipe(model, r, held_out, ref_outs, keyframe_interval, labels, force)
        fails = meter.failures(gates)
        tried.append({"recipe": r.name, "passed": not fails, "failures": fails, "summary": meter.summary(),
                      "metrics": meter.metrics()})
        if not fails:
            return Bf16Result(r, f"recipe {i + 1}/{len(recipes)} {r.describe()}: gates passed: "
                              f"{meter.summary()}", meter.metrics(), tried)
    why = "; ".join(f"recipe {t['recipe']}: " + "; ".join(t["failures"]) for t in tried)
    return Bf16Result(None, "BF16 missed the gates with every recipe (" + why + ")", {}, tried)
