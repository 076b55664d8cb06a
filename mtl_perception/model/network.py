"""The slow-fast multi-task video network (MILA, Sec. 3) and its single streaming path."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import astmt as _astmt  # noqa: F401 - registers cross-task decoders
from . import decoder as _decoder  # noqa: F401 - registers decoders
from . import densemtl as _densemtl  # noqa: F401 - registers cross-task decoders
from . import efficientnet as _efficientnet  # noqa: F401 - registers encoders
from . import encoder as _encoder  # noqa: F401 - registers encoders
from . import fusion as _fusion  # noqa: F401 - registers fusion modules
from . import ila as _ila  # noqa: F401 - registers propagation modules
from . import mti_net as _mti_net  # noqa: F401 - registers cross-task decoders
from .config import ModelConfig
from .decoder import softplus_inverse
from .fusion import Slot
from .ila import InterFrameAttention
from .registry import DECODERS, ENCODERS, FUSION, PROPAGATION
from .schedule import keyframe_flags
from .state import FrameMemory, StreamState

if TYPE_CHECKING:
    from ..keyframe_policy import KeyframePolicy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHARED = "shared"
MIN_DEPTH = 1e-3


class MultiTaskVideoNet(nn.Module):
    """Slow encoder on keyframes, fast encoder between them, one decoder per task.

    Per frame and per attention stream (each task, or one shared stream when
    ``propagation.task_specific`` is off) the current features ``f`` are fused with what the
    sources propagate by a normalised sum::

        f_fused = (f + sum_s w_s * ILA(h(f), h(f_s), f_s)) / (1 + sum_s w_s)

    Sources (Sec. 3.1): a keyframe receives from the last non-keyframe; a non-keyframe from the
    last keyframe and the last non-keyframe (only the keyframe without ``multi_frame``). Each ILA
    output is a convex combination of past features, so the average keeps the scale of ``f``
    whether a frame has 0, 1 or 2 sources: the decoder sees one distribution on keyframes,
    non-keyframes, right after a reset and at K = 1 (a plain residual sum grows with the number
    of sources). It keeps the frame's
    own evidence and adds no parameters; ``w_s`` is 1, or 0 for a slot the exporter feeds empty.
    ``propagation.fusion: concat`` replaces this average by a learned fusion (model/fusion.py).
    The memory stores the un-fused ``f`` and ``h(f)`` so each frame runs ``h`` once.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c = cfg.feature_channels
        self.slow = ENCODERS.get(cfg.slow.name)(cfg.slow, c)
        self.reuse = cfg.propagation.name == "reuse"
        # "reuse" never runs a fast encoder, so it has none.
        self.fast = None if self.reuse else ENCODERS.get(cfg.fast.name)(cfg.fast, c)
        p = cfg.propagation
        # Slots: from the last keyframe, and with multi_frame from the last non-keyframe (always
        # empty in a model that propagates nothing). The fusion has no parameters.
        self.fusion = FUSION.get(p.fusion)(c, 2 if p.multi_frame else 1)
        wide = {"head_channels": self.fusion.out_channels} if self.fusion.out_channels != c else {}
        self.decoders = nn.ModuleDict(
            {t: DECODERS.get(cfg.decoder.name)(cfg.decoder, c, cfg.task_channels(t), **wide)
             for t in cfg.tasks})
        build = PROPAGATION.get(p.name)
        streams = list(cfg.tasks) if p.task_specific else [SHARED]
        mods = {s: build(c, p.key_reduction, p.window) for s in streams}
        self.propagation = nn.ModuleDict({s: m for s, m in mods.items() if m is not None})
        self.streams = streams
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # A cross-task decoder (DenseMTL, MTI-Net, ...) adds one module that sees every task's
        # features at once; the per-task decoders keep select/SE (and their output convs).
        joint = getattr(DECODERS.get(cfg.decoder.name), "build_joint", None)
        self.joint = joint(cfg, self) if joint is not None else None
        if "depth" in self.decoders:
            self.decoders["depth"].init_output_bias(softplus_inverse(cfg.depth_init))

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.cfg.tasks

    # -- the streaming path -----------------------------------------------------------------
    def encode(self, image: Tensor, slow: bool) -> Tensor:
        """Shared encoder features of an RGB image in [0, 1], (B, 3, H, W)."""
        x = (image - self.mean) / self.std
        enc = self.slow if slow else self.fast
        if enc is None:
            raise RuntimeError("this model has no fast encoder (propagation: reuse)")
        return enc(x)

    def sources(self, state: StreamState, is_keyframe: bool) -> list[FrameMemory]:
        """The past frames the current frame receives features from (Sec. 3.1)."""
        if self.reuse or not self.propagation:
            return []
        multi = self.cfg.propagation.multi_frame
        if is_keyframe:
            return [state.nonkey] if multi and state.nonkey is not None else []
        out = [state.keyframe] if state.keyframe is not None else []
        if multi and state.nonkey is not None:
            out.append(state.nonkey)
        return out

    def slots(self, state: StreamState, is_keyframe: bool) -> list[FrameMemory | None]:
        """:meth:`sources` in the fusion's fixed slot order (last keyframe, last non-keyframe),
        ``None`` where the frame receives nothing from that slot."""
        n = self.fusion.slots
        if self.reuse or not self.propagation:
            return [None] * n
        key = None if is_keyframe else state.keyframe
        return [key, state.nonkey][:n]

    def step(self, image: Tensor, state: StreamState | None, is_keyframe: bool,
             return_features: bool = False) -> tuple[dict[str, Tensor], StreamState]:
        """Process one frame: ``(outputs, new_state)``.

        ``image``: float RGB in [0, 1], (B, 3, H, W), H and W multiples of the output stride.
        Outputs at input resolution: ``semantic`` logits (B, N, H, W), ``depth`` metres (B, 1, H, W)
        > 0, ``normals`` unit vectors (B, 3, H, W) in the camera optical frame. With
        ``return_features`` the encoder output is added under ``features`` (for alignment losses).
        """
        state = state if state is not None else StreamState()
        if not is_keyframe and state.empty:
            raise ValueError("a stream must start on a keyframe (the state is empty)")
        size = image.shape[-2:]
        outputs: dict[str, Tensor] = {}
        pyramid: list[Tensor] | None = None
        if self.reuse and not is_keyframe:
            assert state.keyframe is not None
            current = state.keyframe.features
            empty: list[Slot] = [None] * self.fusion.slots
            fused = {s: self.fusion(f, empty) for s, f in current.items()}
            memory = None
        else:
            feats, pyramid = self._encode(image, is_keyframe)
            if return_features:
                outputs["features"] = feats
            slots = self.slots(state, is_keyframe)
            if self.cfg.propagation.task_specific:
                current = {t: self.decoders[t].select(feats) for t in self.tasks}
            else:
                current = {SHARED: feats}
            streams = self._streams(current)
            keys = {s: prop.embed(current[s]) for s, prop in streams}
            propagated = self._propagate(streams, keys, slots, is_keyframe)
            fused = {s: self.fusion(f, propagated.get(s, [None] * len(slots))) for s, f in current.items()}
            memory = FrameMemory(current, keys)
        if self.joint is not None:
            task_feats = {t: fused[t] if t in fused else self.decoders[t].select(fused[SHARED])
                          for t in self.tasks}
            outputs.update(self._joint_heads(task_feats, size, pyramid, is_keyframe))
        for t in self.tasks if self.joint is None else ():
            f = fused[t] if t in fused else self.decoders[t].select(fused[SHARED])
            outputs[t] = self._finalize(t, self.decoders[t].predict(f), size)
        if memory is None:
            new_state = StreamState(state.keyframe, state.nonkey, state.frames + 1)
        elif is_keyframe:
            new_state = StreamState(memory, state.nonkey, state.frames + 1)
        else:
            new_state = StreamState(state.keyframe, memory, state.frames + 1)
        return outputs, new_state

    def _streams(self, current: dict[str, Tensor]) -> list[tuple[str, InterFrameAttention]]:
        """The attention streams of ``current`` that propagate (a stream may have no module)."""
        out = []
        for s in current:
            prop = self.propagation[s] if s in self.propagation else None
            if prop is not None:
                assert isinstance(prop, InterFrameAttention)
                out.append((s, prop))
        return out

    def _propagate(self, streams: list[tuple[str, InterFrameAttention]], queries: dict[str, Tensor],
                   slots: list[FrameMemory | None], is_keyframe: bool) -> dict[str, list[Slot]]:
        """Per stream, what each slot propagates, with its fusion weight (the memory's, times
        ``propagation.nonkey_slot_weight`` for the last non-keyframe's slot on a non-keyframe).
        Every (stream, slot) attention product of the frame goes to one call of the attention
        module (one per kind of module, if streams differ), which stacks them where that is faster
        (``ila.stack_products``)."""
        scale = [1.0] * len(slots)
        if not is_keyframe and len(slots) > 1:
            scale[1] = self.cfg.propagation.nonkey_slot_weight
        # (stream, slot index, memory) per product, grouped by modules that can share one call
        groups: list[tuple[InterFrameAttention, list[tuple[str, int, FrameMemory]]]] = []
        for s, prop in streams:
            for i, m in enumerate(slots):
                if m is None:
                    continue
                group = next((g for g in groups if g[0].batches_with(prop)), None)
                if group is None:
                    groups.append((prop, [(s, i, m)]))
                else:
                    group[1].append((s, i, m))
        out: dict[str, list[Slot]] = {s: [None] * len(slots) for s in queries}
        for prop, members in groups:
            results = prop.attend([queries[s] for s, _, _ in members],
                                  [m.keys[s] for s, _, m in members], [m.features[s] for s, _, m in members])
            for (s, i, m), r in zip(members, results):
                # no product for a weight of 1: the default model's graphs keep their nodes
                out[s][i] = (m.weight if scale[i] == 1.0 else m.weight * scale[i], r)
        return out

    def _encode(self, image: Tensor, slow: bool) -> tuple[Tensor, list[Tensor] | None]:
        """Encoder features, plus the trunk pyramid when the decoder needs it (MTI-Net)."""
        if not getattr(self.joint, "needs_pyramid", False):
            return self.encode(image, slow), None
        enc = self.slow if slow else self.fast
        assert enc is not None
        pyramid = enc.forward_pyramid((image - self.mean) / self.std)
        return enc.project(pyramid[-1]), pyramid  # == enc(x): forward is project(last level)

    def _joint_heads(self, feats: dict[str, Tensor], size: tuple[int, int] | torch.Size,
                     pyramid: list[Tensor] | None = None, is_keyframe: bool = True) -> dict[str, Tensor]:
        """Outputs of a cross-task decoder; its auxiliary (deep-supervision) outputs, named
        ``aux.<...>``, only in training mode, so exported graphs and the node never see them."""
        assert self.joint is not None
        raw, aux = self.joint(feats, self.decoders, pyramid, is_keyframe)
        out = {t: self._finalize(t, raw[t], torch.Size(size)) for t in self.tasks}
        if self.training:
            out.update({name: self._finalize(t, r, torch.Size(size)) for name, (t, r) in aux.items()})
        return out

    def decode(self, features: Tensor, size: tuple[int, int] | torch.Size,
               pyramid: list[Tensor] | None = None, is_keyframe: bool = True) -> dict[str, Tensor]:
        """Decode encoder features with no propagation (a frame with no past; "fast only").
        ``pyramid``/``is_keyframe``: the trunk levels and which encoder gave them, for a decoder
        that needs the pyramid (MTI-Net); :meth:`fast_only` passes both."""
        empty: list[Slot] = [None] * self.fusion.slots
        if self.joint is not None:
            return self._joint_heads({t: self.fusion(self.decoders[t].select(features), empty)
                                      for t in self.tasks}, size, pyramid, is_keyframe)
        return {t: self._finalize(t, self.decoders[t].predict(self.fusion(self.decoders[t].select(features),
                                                                          empty)),
                                  torch.Size(size)) for t in self.tasks}

    def fast_only(self, image: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """One frame with no past through the fast encoder (the trainer's fast stage, fast-only
        evaluation): ``(outputs, encoder features)``. The encoder pass also yields its trunk
        pyramid when the decoder needs one (MTI-Net), so every decoder works here."""
        feats, pyramid = self._encode(image, slow=False)
        return self.decode(feats, tuple(image.shape[-2:]), pyramid, is_keyframe=False), feats

    def _finalize(self, task: str, raw: Tensor, size: torch.Size) -> Tensor:
        raw = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
        if task == "depth":
            return F.softplus(raw) + MIN_DEPTH
        if task == "normals":
            return F.normalize(raw, dim=1, eps=1e-6)
        return raw

    def iter_clip(self, clip: Tensor, keyframe_interval: int | None = None, keyframe_offset: int = 0,
                  state: StreamState | None = None, return_features: bool = False,
                  policy: KeyframePolicy | None = None) -> Iterator[tuple[dict[str, Any], StreamState]]:
        """Run :meth:`step` over a clip (B, T, 3, H, W) frame by frame, yielding (outputs, state)
        per frame, so a long stream never holds every frame's outputs at once.

        Keyframes: the fixed schedule of :func:`keyframe_flags` (``keyframe_interval``,
        ``keyframe_offset``), or a keyframe ``policy`` object (mtl_perception.keyframe_policy, the
        node's own): it decides each frame from the frames so far, the clip starting a new stream
        (``state`` None), and each output also carries its ``keyframe_reason`` (str or None). A
        policy that looks at the images decides per stream, so it takes batch 1."""
        if policy is None:
            if keyframe_interval is None:
                raise ValueError("forward_clip: give a keyframe_interval or a keyframe policy")
            decisions: Iterable[bool | str | None] = keyframe_flags(clip.shape[1], keyframe_interval,
                                                                   keyframe_offset)
        else:
            from ..keyframe_policy import iter_reasons  # numpy only; no ROS

            if state is not None:
                raise ValueError("forward_clip: a keyframe policy starts a new stream (state must be None)")
            if policy.needs_image and clip.shape[0] != 1:
                raise ValueError(f"forward_clip: keyframe policy '{policy.name}' decides per stream; "
                                 f"give one clip (batch 1), got {clip.shape[0]}")
            # lazily, frame by frame: each decision sees only the frames up to it, as in the node
            frames = (clip[0, t].permute(1, 2, 0).detach().cpu().numpy() if policy.needs_image else None
                      for t in range(clip.shape[1]))
            decisions = iter_reasons(policy, frames)
        for t, decision in enumerate(decisions):
            is_key = decision if isinstance(decision, bool) else decision is not None
            out, state = self.step(clip[:, t], state, is_key, return_features)
            out["is_keyframe"] = torch.tensor(is_key)
            if policy is not None:
                out["keyframe_reason"] = decision
            yield out, state

    def forward_clip(self, clip: Tensor, keyframe_interval: int | None = None, keyframe_offset: int = 0,
                     state: StreamState | None = None, return_features: bool = False,
                     all_frames: bool = False, policy: KeyframePolicy | None = None
                     ) -> tuple[list[dict[str, Any]], StreamState]:
        """:meth:`iter_clip` collected: the outputs of the last frame (or of every frame with
        ``all_frames``) and the final state. Training and evaluation use exactly this loop."""
        results, last = [], clip.shape[1] - 1
        frames = self.iter_clip(clip, keyframe_interval, keyframe_offset, state, return_features, policy)
        for t, (out, state) in enumerate(frames):  # noqa: B007 - the last frame's state is returned
            if all_frames or t == last:
                results.append(out)
        assert state is not None
        return results, state

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        """Single-image (keyframe, no past) prediction: the slow network alone."""
        return self.step(image, None, True)[0]


def build_model(cfg: ModelConfig) -> MultiTaskVideoNet:
    return MultiTaskVideoNet(cfg)
