"""``mtl-train``'s adaptation mode (DenseMTL Sec. 4.5, App. B.3): what the :class:`Trainer` calls
when the config has an ``adapt:`` section (docs/adaptation.md).

* Data: every step of an adapted stage pairs the labelled source batch with an unlabelled batch of
  the same local size from ``data.target`` (any registered type; labels of a labelled type are
  ignored). The target order comes from an :class:`EpochSampler` of its own seed with the source
  sampler's (stage, epoch, skip, limit, rank, world), so it is fixed by (seed, stage, epoch,
  index) like the source: a resume replays it and torchrun ranks shard it.
* Network: the trainer runs the target clip through the same stage path as the source (slow /
  fast / joint with ILA and the step's keyframe offset); :meth:`Adaptation.loss` adds the output
  adversary's ``adv`` (network, lambda_adv-weighted) and ``disc`` (discriminators, on detached
  outputs) to the total, so one backward and one optimiser step train both sides.
* The adversary (:data:`ADAPTATION` method) is a module of the trainer's DDP-wrapped step module,
  in the stage's optimiser while the stage adapts, and in the checkpoint (``adaptation``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mtl_perception.model import MultiTaskVideoNet, build_model

from ..sampling import EpochSampler, SeededSamples, mix
from .output_adversary import ADAPTATION

TARGET_SEED_SALT = 0xADA  # the target order is independent of the source order of the same seed


def output_channels(model: MultiTaskVideoNet, intermediate: bool) -> tuple[dict[str, int], tuple[str, ...]]:
    """(task -> output channels, names of the auxiliary outputs) of ``model`` in training mode. The
    channels come from the config; only a cross-task decoder (``model.joint``) has auxiliary outputs,
    and their names come from one probe forward of a fresh copy of its architecture (the model
    itself, its BN statistics and the RNG streams are left untouched)."""
    chans = {t: model.cfg.task_channels(t) for t in model.tasks}
    if not intermediate or model.joint is None:
        return chans, ()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        probe = build_model(model.cfg).train()
        h, w = model.cfg.input_size
        out, _ = probe.step(torch.zeros(1, 3, h, w), None, True)
    return chans, tuple(k for k in out if k.startswith("aux."))


class Adaptation:
    """The adversary, the target data and the hooks the trainer calls (see the module docstring)."""

    def __init__(self, cfg: Any, model: MultiTaskVideoNet, device: torch.device) -> None:
        from ..data.registry import ClipSettings, build_dataset

        a, d = cfg.adapt, cfg.data
        self.cfg, self.stages = cfg, tuple(a.stages)
        chans, aux = output_channels(model, a.intermediate)
        method = ADAPTATION.get(a.method)
        build = getattr(method, "from_config", None)  # methods with their own config section
        self.adversary: nn.Module = (build(chans, aux, a) if build is not None
                                     else method(chans, a.disc_hidden, a.lambda_adv, aux)).to(device)
        self.model = model  # the teacher of methods that need it (keyframe_consistency)
        # The target clips are cut like the training clips (same length, stride, augmentation).
        from ..data import ClipAugment

        k = max([s.keyframe_interval for s in cfg.stages if s.name == "joint"] + [1])
        clip = ClipSettings(d.clip_len, min(k, d.clip_len), tuple(model.cfg.input_size), d.stride,
                            ClipAugment() if d.augment else None)
        self.target = build_dataset(d.target, "data.target", "target", clip)
        self.pin = device.type == "cuda"

    def active(self, stage: Any) -> bool:
        return stage.name in self.stages

    def parameters_for(self, stage: Any) -> list[Tensor]:
        """The discriminators' parameters for the stage's optimiser (none where it does not adapt).
        Called once per stage, so it also sets the stage's BN running-statistics rule."""
        on = self.active(stage)
        self.adversary.requires_grad_(on)
        self.freeze_bn_stats(on and self.cfg.adapt.bn_stats == "frozen")
        return list(self.adversary.parameters()) if on else []

    def freeze_bn_stats(self, frozen: bool) -> None:
        """``adapt.bn_stats: frozen``: momentum 0 on every BN layer of the model, so the running
        statistics stay at the init model's (the source's) while target batches pass in train mode;
        ``frozen=False`` restores each layer's own momentum."""
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if frozen:
                    if not hasattr(m, "_adapt_momentum"):
                        m._adapt_momentum = m.momentum  # type: ignore[assignment]
                    m.momentum = 0.0
                elif hasattr(m, "_adapt_momentum"):
                    m.momentum = m._adapt_momentum
                    del m._adapt_momentum

    def pair(self, source: DataLoader, sampler: EpochSampler, local_batch: int) -> Iterator[dict[str, Any]]:
        """The source batches of ``source`` (drawn by ``sampler``), each with ``target``: a batch
        of target clips (B, T, 3, H, W) drawn by the same positions of the target's own order."""
        seed = mix(self.cfg.seed, TARGET_SEED_SALT)
        s = sampler
        tsampler = EpochSampler(len(self.target), seed, s.stage, s.epoch, s.skip, s.limit, s.rank, s.world)
        target = DataLoader(SeededSamples(self.target, seed), batch_size=local_batch, sampler=tsampler,
                            num_workers=self.cfg.data.num_workers, drop_last=True, pin_memory=self.pin)
        for src, tgt in zip(source, target, strict=True):
            src["target"] = tgt["images"]
            yield src

    def loss(self, source_out: dict[str, Tensor], target_out: dict[str, Tensor],
             losses: dict[str, Tensor], clip: Tensor | None = None, stage: str = "",
             student: Callable[[Tensor], dict[str, Tensor]] | None = None) -> Tensor:
        """The method's terms for the step's total (``adv + disc`` for the adversaries,
        ``consistency`` for keyframe_consistency, which also gets the model, the target ``clip``,
        the ``stage`` name and ``student``, the stage's single-frame path as the trainer runs it);
        every term goes into ``losses`` (steps.jsonl)."""
        target_out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                      for k, v in target_out.items()}
        if getattr(self.adversary, "needs_model", False):
            if clip is None:
                raise ValueError(f"adapt.method {self.cfg.adapt.method!r} needs the target clip")
            terms = self.adversary(source_out, target_out, model=self.model, clip=clip, stage=stage,
                                   student=student)
        else:
            terms = self.adversary(source_out, target_out)
        losses.update(terms)
        return sum((terms[k] for k in getattr(self.adversary, "loss_keys", ("adv", "disc"))),
                   torch.zeros((), device=next(iter(terms.values())).device))
