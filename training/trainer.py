"""The staged slow-fast multi-task training of MILA (supplementary A, Sec. 3.3, 4.1): the
:class:`Trainer` behind ``mtl-train`` (:mod:`training.train`).

Stages run in order (see :mod:`training.config`): ``slow`` (single frames, slow encoder + decoders),
``fast`` (single frames through the fast encoder, either into the frozen shared decoders with the
Eq. 3 alignment to the slow features, or, with ``own_decoders``, into its own decoders as the
paper's separate D18-MultiTask pretraining), ``joint`` (clips, keyframe interval K, random keyframe
offset per step, ILA in the loop, alignment on the annotated frame).

Reproducibility: the data order and augmentation are fixed by (seed, stage, epoch, index)
(:mod:`training.sampling`); the keyframe offset of a step is drawn from (seed, step). A resumed run
therefore replays exactly the batches and offsets the uninterrupted run would have seen,
independent of worker processes and of the number of torchrun processes, and the optimiser,
schedule, grad-scaler, weighting and discriminator states come from the checkpoint.

Outputs in ``out`` (rank 0 writes them): ``last.pt`` (every ``ckpt_every`` steps and each epoch
end; the one before is ``last.prev.pt``), ``best.pt`` (best validation Delta_m within the latest
stage), ``stage_NAME.pt``, ``steps.jsonl`` (losses and lr per step), ``metrics.csv`` /
``metrics.json`` (per epoch), ``config.yaml`` (resolved).
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mtl_perception.model import MultiTaskVideoNet, build_model
from mtl_perception.model.config import ConfigError
from mtl_perception.model.decoder import softplus_inverse

from . import checkpointing as ckio
from . import distributed as dist_utils
from .adapt.mode import Adaptation
from .adversarial import FeatureDiscriminator, alignment_losses
from .amp import Precision
from .aux_losses import aux_task_losses
from .checkpointing import TrainerState
from .config import DatasetSpec, StageConfig, TrainConfig
from .evaluate import evaluate
from .losses import task_losses, valid_mask
from .metrics import delta_m
from .parts import model_parts
from .qat import QatController
from .sampling import EpochSampler, SeededSamples, mix
from .schedules import build_scheduler
from .task_adversarial import build_task_adversary
from .weighting import TaskWeighting, build_weighting

LABEL_KEYS = ("semantic", "depth", "normals")


class _StepModule(nn.Module):
    """Everything a training step updates (model, loss weighting, discriminator, the paper
    recipe's fast decoders) as one module, so that DDP averages all of their gradients."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.model = trainer.model
        self.weighting = trainer.weighting
        self.disc = trainer.disc
        self.task_adv = trainer.task_adv
        self.fast_decoders = trainer.fast_decoders
        self.adversary = trainer.adaptation.adversary if trainer.adaptation is not None else None
        self._losses = trainer.compute_losses

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self._losses(batch)


@contextmanager
def _decoders(model: MultiTaskVideoNet, decoders: nn.ModuleDict | None) -> Iterator[None]:
    """``model`` decoding with ``decoders`` inside the block (the fast stage's own decoders)."""
    if decoders is None:
        yield
        return
    shared = model.decoders
    model.decoders = decoders
    try:
        yield
    finally:
        model.decoders = shared


class Trainer(TrainerState):
    """Runs the stages of a :class:`TrainConfig`; ``resume`` continues from the newest readable
    checkpoint of ``out`` (or the file given). Under torchrun each process builds one Trainer."""

    def __init__(self, cfg: TrainConfig, resume: bool | str = False, halt_at_step: int | None = None,
                 progress: bool = True, train_data: Dataset | None = None, val_data: Dataset | None = None,
                 dist: dist_utils.DistContext | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist = dist if dist is not None else dist_utils.context_from_env()
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.batch_size % self.dist.world:
            raise ConfigError(f"batch_size: {cfg.batch_size} (the global batch) is not divisible by "
                              f"{self.dist.world} processes")
        self.local_batch = cfg.batch_size // self.dist.world
        self.device = dist_utils.setup(self.dist, cfg.device, cfg.distributed.backend,
                                       cfg.distributed.timeout_s)
        self.halt_at_step = halt_at_step
        self._val_macs: dict[tuple[str, int], float] = {}
        self.progress = progress and self.dist.main
        self.messages: list[str] = []  # one-line notices (resume fallbacks), also printed
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.model_cfg = cfg.model_config()
        self.model: MultiTaskVideoNet = build_model(self.model_cfg)
        if cfg.distributed.sync_batchnorm and self.dist.enabled:
            dist_utils.convert_sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        # fake quantization around the convs (training/qat.py); the saved state_dict stays FP32
        self.qat = QatController(cfg.qat, self.model) if cfg.qat is not None and cfg.qat.enabled else None
        self.train_data = train_data if train_data is not None else self._dataset(cfg.data.train, "train")
        self.val_data = val_data if val_data is not None else self._dataset(cfg.data.val, "val")
        # Losses only for the tasks the training data labels (a normals model on Cityscapes: none).
        labelled = getattr(self.train_data, "tasks", self.model.tasks)
        self.tasks = tuple(t for t in self.model.tasks if t in labelled)
        self.weighting: TaskWeighting = build_weighting(cfg.loss.weighting, self.tasks,
                                                        cfg.loss.dwa_temperature).to(self.device)
        self.disc = (FeatureDiscriminator(self.model_cfg.feature_channels, cfg.align.disc_hidden)
                     .to(self.device) if cfg.align.adversarial else None)
        # ASTMT's task-gradient discriminator (None unless on; on by default for the astmt decoder)
        self.task_adv = build_task_adversary(cfg.task_adversarial, self.model_cfg.decoder.name,
                                             self.model_cfg.feature_channels, self.tasks)
        if self.task_adv is not None:
            self.task_adv.to(self.device)
        self.fast_decoders: nn.ModuleDict | None = None  # the paper recipe's D18-MultiTask decoders
        # Output-space UDA toward data.target (training/adapt/mode.py); None without `adapt:`.
        self.adaptation = Adaptation(cfg, self.model, self.device) if cfg.adapt is not None else None
        self.precision = Precision(cfg.amp, self.device)
        if len(self.train_data) < cfg.batch_size:  # type: ignore[arg-type]
            raise ConfigError(f"data.train: {len(self.train_data)} clip(s) < batch_size {cfg.batch_size}")  # type: ignore[arg-type]
        # progress counters
        self.stage_idx = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.epoch_sums: dict[str, float] = {}
        self.epoch_count = 0
        self.best_score = -math.inf
        self.stage_baseline: dict[str, float] | None = None
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.step_module: nn.Module | None = None
        resume_ckpt = self._resume_checkpoint(resume)
        if resume_ckpt is not None:
            self._load_state(resume_ckpt)
        else:
            if cfg.init:
                self._init_from(cfg.init)
            if self.dist.main:
                ckio.truncate_steps(self.out, 0)
                (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            self._enter_stage(0)

    def _say(self, msg: str) -> None:
        self.messages.append(msg)
        if self.dist.main:
            print(f"mtl-train: {msg}", file=sys.stderr)

    # -- data -------------------------------------------------------------------------------------
    def _dataset(self, spec: DatasetSpec, role: str) -> Dataset:
        """Every dataset is built here, from a registered type (training/data/registry.py)."""
        from .data import ClipAugment
        from .data.registry import ClipSettings, build_dataset

        d, train = self.cfg.data, role == "train"
        k = max([s.keyframe_interval for s in self.cfg.stages if s.name == "joint"] + [1])
        clip = ClipSettings(d.clip_len, min(k, d.clip_len), tuple(self.model_cfg.input_size),
                            d.stride if train else d.val_stride,
                            ClipAugment() if (train and d.augment) else None)
        m = self.model_cfg
        return build_dataset(spec, f"data.{role}", role, clip, m.tasks, m.num_classes)

    def _loader(self, stage: StageConfig) -> Iterable[dict[str, Any]]:
        n = len(self.train_data)  # type: ignore[arg-type]
        b = self.cfg.batch_size
        sampler = EpochSampler(n, self.cfg.seed, self.stage_idx, self.epoch, self.batch_in_epoch * b,
                               self.steps_per_epoch(stage) * b, self.dist.rank, self.dist.world)
        loader = DataLoader(SeededSamples(self.train_data, self.cfg.seed), batch_size=self.local_batch,
                            sampler=sampler, num_workers=self.cfg.data.num_workers, drop_last=True,
                            persistent_workers=False, pin_memory=self.device.type == "cuda")
        if self.adaptation is not None and self.adaptation.active(stage):  # + a target batch per step
            return self.adaptation.pair(loader, sampler, self.local_batch)
        return loader

    def steps_per_epoch(self, stage: StageConfig) -> int:
        return stage.steps_per_epoch or len(self.train_data) // self.cfg.batch_size  # type: ignore[arg-type]

    # -- stages -----------------------------------------------------------------------------------
    @property
    def stage(self) -> StageConfig:
        return self.cfg.stages[self.stage_idx]

    def _parts(self) -> dict[str, nn.Module | None]:
        return model_parts(self.model)  # a cross-task decoder's joint module goes with "decoders"

    def _stage_uses_align(self, stage: StageConfig) -> bool:
        a = self.cfg.align
        return stage.name in ("fast", "joint") and stage.align and (a.l1 or a.adversarial) and \
            self.model.fast is not None

    def _fresh_decoders(self) -> nn.ModuleDict:
        """Randomly initialised decoders of the model's architecture (D18-MultiTask's own)."""
        fresh = copy.deepcopy(self.model.decoders)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if "depth" in fresh and hasattr(fresh["depth"], "init_output_bias"):
            fresh["depth"].init_output_bias(softplus_inverse(self.model_cfg.depth_init))
        return fresh

    def _enter_stage(self, idx: int) -> None:
        """Set what trains in stage ``idx``; build its optimiser, schedule and DDP wrapper."""
        self.stage_idx = idx
        self.fast_decoders = None
        self.step_module = None
        if idx >= len(self.cfg.stages):
            return
        stage = self.stage
        trainable = set(stage.parts())
        params: list[Tensor] = []
        for name, part in self._parts().items():
            if part is None:
                continue
            on = name in trainable
            for p in part.parameters():
                p.requires_grad_(on)
                if on:
                    params.append(p)
        if stage.own_decoders and self.model.fast is not None:
            self.fast_decoders = self._fresh_decoders()
            params += list(self.fast_decoders.parameters())
        params += list(self.weighting.parameters())
        if self.task_adv is not None:
            params += list(self.task_adv.parameters())
        if self.adaptation is not None:
            params += self.adaptation.parameters_for(stage)
        if self.disc is not None:
            on = self._stage_uses_align(stage) and self.cfg.align.adversarial
            self.disc.requires_grad_(on)
            if on:
                params += list(self.disc.parameters())
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam(params, lr=stage.lr or o.lr, betas=tuple(o.betas),
                                          weight_decay=o.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, o.stage_schedule(stage), self.steps_per_epoch(stage),
                                         stage.epochs)
        if stage.name != "fast" or self.model.fast is not None:
            # A slow stage with its default parts uses every trainable parameter in every step.
            find_unused = not (stage.name == "slow" and trainable <= {"slow", "decoders"})
            self.step_module = dist_utils.wrap(_StepModule(self), self.dist, self.device, find_unused)

    def _set_train_mode(self) -> None:
        """Train mode for what the stage updates; eval mode (frozen BN statistics) for the rest."""
        self.model.train()
        trainable = set(self.stage.parts())
        for name, part in self._parts().items():
            if part is not None and name not in trainable:
                part.eval()
        for m in (self.disc, self.task_adv, self.fast_decoders):
            if m is not None:
                m.train()
        if self.qat is not None:
            self.qat.set_stage(self.stage.name)

    # -- one step ---------------------------------------------------------------------------------
    def _offset(self, stage: StageConfig) -> int:
        if not stage.random_offset:
            return stage.keyframe_interval - 1
        return random.Random(mix(self.cfg.seed, self.step, 11)).randrange(stage.keyframe_interval)

    def _forward(self, stage: StageConfig, clip: Tensor, use_align: bool
                 ) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
        """The network part of a step: outputs for the annotated (last) frame, and the slow / fast
        features the alignment compares (None where not computed)."""
        image = clip[:, -1]
        slow_f = fast_f = None
        want = self.task_adv is not None  # the task adversary reads the encoder output ("features")
        if stage.name == "slow":
            return self.model.step(image, None, True, return_features=want)[0], None, None
        if stage.name == "fast":
            if self.model.fast is None:
                raise ConfigError("stage 'fast': this model has no fast encoder (propagation: reuse)")
            with _decoders(self.model, self.fast_decoders):
                out, fast_f = self.model.fast_only(image)  # MTI-Net: with the fast trunk's pyramid
            if want:
                out["features"] = fast_f
        else:
            K = min(stage.keyframe_interval, clip.shape[1])
            offset = min(self._offset(stage), clip.shape[1] - 1)
            outs, _ = self.model.forward_clip(clip, K, offset, return_features=use_align or want)
            out = outs[-1]
            if use_align:
                if bool(out["is_keyframe"]):
                    slow_f = out["features"]
                    fast_f = self.model.encode(image, slow=False)
                else:
                    fast_f = out["features"]
        if use_align and fast_f is not None and slow_f is None:
            with torch.no_grad():
                slow_f = self.model.encode(image, slow=True)
        return out, slow_f, fast_f

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """All loss terms of one training step for the current stage (unweighted task losses,
        alignment terms) and ``total``, the scalar to back-propagate. The network runs under the
        AMP autocast; the losses are computed in FP32."""
        stage = self.stage
        clip = batch["images"].to(self.device, non_blocking=True)
        targets = {t: batch[t].to(self.device, non_blocking=True) for t in self.tasks}
        use_align = self._stage_uses_align(stage)
        with self.precision.autocast():
            out, slow_f, fast_f = self._forward(stage, clip, use_align)
        boundary = out.get("features")  # before the FP32 copy: the losses depend on this tensor
        out = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in out.items()}
        losses = task_losses(out, targets, self.tasks, self.cfg.loss.depth)
        if self.dist.enabled:
            losses = self._global_means(losses, targets)
        total = self.weighting(losses)
        aux = aux_task_losses(out, targets, self.tasks, self.cfg.loss.depth)  # cross-task decoders
        if aux:
            total = total + sum(aux.values())
            losses.update(aux)
        if self.task_adv is not None and boundary is not None and boundary.requires_grad:
            # ASTMT Sec. 4: the tasks' gradients at the shared features, classified through reversal
            losses["task_adv"] = self.task_adv(boundary, losses)
            total = total + self.cfg.task_adversarial.weight * losses["task_adv"]
        if use_align and fast_f is not None and slow_f is not None:
            a = self.cfg.align
            al = alignment_losses(slow_f.float(), fast_f.float(), self.disc, a.l1, a.adversarial)
            if "l1" in al:
                total = total + a.alpha * al["l1"]
                losses["align_l1"] = al["l1"]
            if "adv" in al:
                total = total + a.beta * al["adv"]
                losses["align_adv"] = al["adv"]
        if self.adaptation is not None and self.adaptation.active(stage):  # target through the same path
            with self.precision.autocast():
                target = batch["target"].to(self.device, non_blocking=True)
                target_out = self._forward(stage, target, False)[0]

            def student(x: Tensor) -> dict[str, Tensor]:  # the stage's single-frame path, its decoders
                with self.precision.autocast():  # a one-frame clip: a keyframe (fast stage: fast-only)
                    return self._forward(stage, x[:, None], False)[0]
            total = total + self.adaptation.loss(out, target_out, losses, target, stage.name, student)
        losses["total"] = total
        return losses

    def _global_means(self, losses: dict[str, Tensor], targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """Scale each rank's masked-mean task loss by ``world * n_rank / n_global`` (labelled pixels),
        so that DDP's gradient average is the gradient of the mean over the global batch's pixels,
        as in a one-process run, also when ranks hold different numbers of labelled pixels."""
        if not self.tasks:  # unlabelled data (alignment only)
            return losses
        local = torch.stack([valid_mask(t, targets[t]).sum() for t in self.tasks]).double()
        total = dist_utils.sum_over_ranks(local)
        scale = torch.where(total > 0, local * self.dist.world / total.clamp_min(1), torch.ones_like(total))
        return {t: losses[t] * scale[i].float() for i, t in enumerate(self.tasks)}

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step on this rank's share of the global batch; returns the losses
        averaged over ranks (what a one-process run on the global batch would log)."""
        assert self.optimizer is not None and self.scheduler is not None and self.step_module is not None
        self._set_train_mode()
        losses = self.step_module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.step(losses["total"], self.optimizer, self.cfg.optim.grad_clip)
        self.scheduler.step()
        vals = {k: float(v.detach()) for k, v in losses.items()}
        return dist_utils.mean_over_ranks(vals, self.device)

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end of the schedule (or ``halt_at_step``); returns the last validation."""
        last_val: dict[str, Any] = self.history[-1] if self.history else {}
        while self.stage_idx < len(self.cfg.stages):
            stage = self.stage
            if stage.name == "fast" and self.model.fast is None:
                if self.dist.main:
                    print(f"stage {self.stage_idx} (fast): skipped, the model has no fast encoder",
                          file=sys.stderr)
                self._next_stage()
                continue
            per_epoch = self.steps_per_epoch(stage)
            # One bar per stage (steps/s and ETA of the whole stage), on rank 0 only.
            bar = tqdm(total=stage.epochs * per_epoch, initial=self.epoch * per_epoch + self.batch_in_epoch,
                       disable=not self.progress, unit="step", dynamic_ncols=True, file=sys.stderr,
                       desc=f"{stage.name} ({self.stage_idx + 1}/{len(self.cfg.stages)})")
            while self.epoch < stage.epochs:
                for batch in self._loader(stage):
                    lr = self.optimizer.param_groups[0]["lr"] if self.optimizer else math.nan
                    vals = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    for k, v in vals.items():
                        self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                    self.epoch_count += 1
                    self._log_step(vals, lr)
                    bar.update(1)
                    bar.set_postfix(epoch=f"{self.epoch + 1}/{stage.epochs}", loss=f"{vals['total']:.3f}")
                    if self.step % self.cfg.ckpt_every == 0 and self.batch_in_epoch < per_epoch:
                        self.save(self.out / "last.pt")
                    if self.halt_at_step is not None and self.step >= self.halt_at_step:
                        bar.close()
                        return last_val
                last_val = self._end_epoch(stage, bar)
            bar.close()
            self._save_model_only(self.out / f"stage_{stage.name}.pt")
            self._next_stage()
            self.save(self.out / "last.pt")
        return last_val

    def _next_stage(self) -> None:
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_score = -math.inf
        self.stage_baseline = None
        self._enter_stage(self.stage_idx + 1)

    def _validate(self, stage: StageConfig) -> dict[str, Any]:
        mode = {"slow": "slow", "fast": "fast", "joint": "slowfast"}[stage.name]
        # MACs depend on the architecture and the schedule only: profile them once per (mode, K).
        macs_key = (mode, stage.keyframe_interval)
        with _decoders(self.model, self.fast_decoders if stage.name == "fast" else None):
            val = evaluate(self.model, self.val_data, mode=mode, keyframe_interval=stage.keyframe_interval,
                           offsets=self.cfg.val_offsets, max_clips=self.cfg.data.val_max_clips,
                           batch_size=self.cfg.batch_size, device=self.device,
                           count_macs=macs_key not in self._val_macs)
        val["macs"] = self._val_macs.setdefault(macs_key, val.get("macs", math.nan))
        return val

    def _end_epoch(self, stage: StageConfig, bar: tqdm | None = None) -> dict[str, Any]:
        # The epoch means are the same on every rank (step losses are averaged over ranks), so
        # DWA's weights stay identical; rank 0 validates and the others take its result.
        means = {k: v / max(1, self.epoch_count) for k, v in self.epoch_sums.items()}
        self.weighting.end_epoch({t: means[t] for t in self.tasks if t in means})
        t0 = time.time()
        val = self._validate(stage) if self.dist.main else None
        val = dist_utils.broadcast_from_main(val)
        if self.stage_baseline is None:
            self.stage_baseline = {k: v for k, v in val.items() if isinstance(v, float)}
        try:
            score = delta_m(val, self.stage_baseline)
        except ValueError:
            score = 0.0
        row: dict[str, Any] = {"stage": stage.name, "epoch": self.epoch + 1, "step": self.step,
                               "lr": self.optimizer.param_groups[0]["lr"] if self.optimizer else math.nan}
        row.update({f"train_{k}": v for k, v in means.items()})
        row.update({f"val_{k}": v for k, v in val.items()})
        row["val_score"] = score
        row["val_seconds"] = time.time() - t0
        self.history.append(row)
        self._write_metrics()
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums, self.epoch_count = {}, 0
        if score > self.best_score:
            self.best_score = score
            self.save(self.out / "best.pt", metrics=val)
        self.save(self.out / "last.pt", metrics=val)
        if self.progress:
            (bar.write if bar is not None else print)(
                f"[{stage.name} epoch {self.epoch}/{stage.epochs} step {self.step}] "
                + " ".join(f"{k}={v:.3f}" for k, v in means.items())
                + f" | val mIoU={val.get('miou', math.nan):.1f} abs={val.get('abs_err', math.nan):.3f}"
                f" angle={val.get('mean_angle', math.nan):.1f} score={score:+.2f}", file=sys.stderr)
        return row


def main(argv: list[str] | None = None) -> int:
    """``mtl-train`` (kept here for ``python -m training.trainer``; see :mod:`training.train`)."""
    from .train import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
