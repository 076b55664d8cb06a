"""``mtl-train``: the staged slow-fast multi-task training of MILA (supplementary A, Sec. 3.3, 4.1).

Stages run in order (see :mod:`training.config`): ``slow`` (single frames, slow encoder + decoders),
``fast`` (single frames through the fast encoder into the frozen shared decoders, plus the Eq. 3
alignment to the slow features of the same image), ``joint`` (clips, keyframe interval K, random
keyframe offset per step, ILA in the loop, alignment on the annotated frame).

Reproducibility: the sample order of an epoch is a permutation seeded by (seed, stage, epoch);
each sample's augmentation runs under a torch seed derived from (seed, stage, epoch, index); the
keyframe offset of a step is drawn from (seed, step). A resumed run therefore replays exactly the
batches and offsets the uninterrupted run would have seen, independent of worker processes, and
the optimiser, scheduler, weighting and discriminator states come from the checkpoint.

Outputs in ``out``: ``last.pt`` (every ``ckpt_every`` steps and each epoch end), ``best.pt``
(best validation Delta_m within the latest stage), ``stage_NAME.pt``, ``steps.jsonl`` (losses per
step), ``metrics.csv`` / ``metrics.json`` (per epoch), ``config.yaml`` (resolved).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mtl_perception.model import MultiTaskVideoNet, build_model
from mtl_perception.model.checkpoint import read_checkpoint, save_atomic
from mtl_perception.model.config import ConfigError

from .adversarial import FeatureDiscriminator, alignment_losses
from .config import DatasetSpec, StageConfig, TrainConfig
from .data.registry import describe
from .evaluate import evaluate, fast_step
from .losses import task_losses
from .metrics import delta_m
from .weighting import TaskWeighting, build_weighting

LABEL_KEYS = ("semantic", "depth", "normals")


def _mix(*ints: int) -> int:
    """A deterministic 63-bit seed from integers (Python's hash of ints is not salted, but be explicit)."""
    h = 1469598103934665603
    for v in ints:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


class _EpochSampler(Sampler):
    """Yields ``(stage, epoch, index)`` for a seeded permutation, skipping the first ``skip`` items
    (the batches a resumed run already trained on)."""

    def __init__(self, n: int, seed: int, stage: int, epoch: int, skip: int, limit: int) -> None:
        self.n, self.seed, self.stage, self.epoch, self.skip, self.limit = n, seed, stage, epoch, skip, limit

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(_mix(self.seed, self.stage, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        # An epoch longer than the data (steps_per_epoch > n / batch) keeps drawing permutations.
        rep = 1
        while len(order) < self.limit:
            g2 = torch.Generator().manual_seed(_mix(self.seed, self.stage, self.epoch, rep))
            order += torch.randperm(self.n, generator=g2).tolist()
            rep += 1
        for i in order[self.skip:self.limit]:
            yield (self.stage, self.epoch, i)

    def __len__(self) -> int:
        return max(0, self.limit - self.skip)


class _SeededSamples(Dataset):
    """Runs each ``__getitem__`` of the wrapped dataset under a torch seed fixed by the sample key,
    so random augmentation is the same in any process and after a resume."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        stage, epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, stage, epoch, index, 7))
            return self.dataset[index]


# -- RNG state as checkpoint-safe plain data ------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


# -- the trainer ----------------------------------------------------------------------------------
class Trainer:
    """Runs the stages of a :class:`TrainConfig`; ``resume`` continues from ``out/last.pt``."""

    def __init__(self, cfg: TrainConfig, resume: bool | str = False, halt_at_step: int | None = None,
                 progress: bool = True, train_data: Dataset | None = None, val_data: Dataset | None = None
                 ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device)
        self.halt_at_step = halt_at_step
        self._val_macs: dict[tuple[str, int], float] = {}
        self.progress = progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.model_cfg = cfg.model_config()
        self.model: MultiTaskVideoNet = build_model(self.model_cfg).to(self.device)
        self.train_data = train_data if train_data is not None else self._dataset(cfg.data.train, "train")
        self.val_data = val_data if val_data is not None else self._dataset(cfg.data.val, "val")
        # Losses only for the tasks the training data labels (a normals model on Cityscapes: none).
        labelled = getattr(self.train_data, "tasks", self.model.tasks)
        self.tasks = tuple(t for t in self.model.tasks if t in labelled)
        self.weighting: TaskWeighting = build_weighting(cfg.loss.weighting, self.tasks,
                                                        cfg.loss.dwa_temperature).to(self.device)
        self.disc = (FeatureDiscriminator(self.model_cfg.feature_channels, cfg.align.disc_hidden)
                     .to(self.device) if cfg.align.adversarial else None)
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
        resume_ckpt = self._resume_checkpoint(resume)
        if resume_ckpt is not None:
            self._load_state(resume_ckpt)
        else:
            if cfg.init:
                self._init_from(cfg.init)
            self._truncate_logs(0)
            (self.out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            self._enter_stage(0)

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

    def _loader(self, stage: StageConfig) -> DataLoader:
        n = len(self.train_data)  # type: ignore[arg-type]
        per_epoch = stage.steps_per_epoch or n // self.cfg.batch_size
        sampler = _EpochSampler(n, self.cfg.seed, self.stage_idx, self.epoch,
                                self.batch_in_epoch * self.cfg.batch_size, per_epoch * self.cfg.batch_size)
        return DataLoader(_SeededSamples(self.train_data, self.cfg.seed), batch_size=self.cfg.batch_size,
                          sampler=sampler, num_workers=self.cfg.data.num_workers, drop_last=True,
                          persistent_workers=False)

    def steps_per_epoch(self, stage: StageConfig) -> int:
        return stage.steps_per_epoch or len(self.train_data) // self.cfg.batch_size  # type: ignore[arg-type]

    # -- stages -----------------------------------------------------------------------------------
    @property
    def stage(self) -> StageConfig:
        return self.cfg.stages[self.stage_idx]

    def _parts(self) -> dict[str, nn.Module | None]:
        m = self.model
        return {"slow": m.slow, "fast": m.fast, "decoders": m.decoders, "propagation": m.propagation}

    def _stage_uses_align(self, stage: StageConfig) -> bool:
        a = self.cfg.align
        return stage.name in ("fast", "joint") and stage.align and (a.l1 or a.adversarial) and \
            self.model.fast is not None

    def _enter_stage(self, idx: int) -> None:
        """Set what trains in stage ``idx`` and build its optimiser and scheduler."""
        self.stage_idx = idx
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
        params += list(self.weighting.parameters())
        if self.disc is not None and self._stage_uses_align(stage) and self.cfg.align.adversarial:
            params += list(self.disc.parameters())
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam(params, lr=stage.lr or o.lr, betas=tuple(o.betas),
                                          weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=o.lr_step or 1, gamma=o.lr_gamma if o.lr_step else 1.0)

    def _set_train_mode(self) -> None:
        """Train mode for what the stage updates; eval mode (frozen BN statistics) for the rest."""
        self.model.train()
        trainable = set(self.stage.parts())
        for name, part in self._parts().items():
            if part is not None and name not in trainable:
                part.eval()

    # -- one step ---------------------------------------------------------------------------------
    def _offset(self, stage: StageConfig) -> int:
        if not stage.random_offset:
            return stage.keyframe_interval - 1
        return random.Random(_mix(self.cfg.seed, self.step, 11)).randrange(stage.keyframe_interval)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """All loss terms of one training step for the current stage (unweighted task losses,
        alignment terms) and ``total``, the scalar to back-propagate."""
        stage = self.stage
        clip = batch["images"].to(self.device)
        targets = {t: batch[t].to(self.device) for t in self.tasks}
        image = clip[:, -1]
        use_align = self._stage_uses_align(stage)
        slow_f = fast_f = None
        if stage.name == "slow":
            out = self.model.step(image, None, True)[0]
        elif stage.name == "fast":
            if self.model.fast is None:
                raise ConfigError("stage 'fast': this model has no fast encoder (propagation: reuse)")
            out = fast_step(self.model, image, return_features=True)
            fast_f = out["features"]
        else:
            K = min(stage.keyframe_interval, clip.shape[1])
            offset = min(self._offset(stage), clip.shape[1] - 1)
            outs, _ = self.model.forward_clip(clip, K, offset, return_features=use_align)
            out = outs[-1]
            if use_align:
                if bool(out["is_keyframe"]):
                    slow_f = out["features"]
                    fast_f = self.model.encode(image, slow=False)
                else:
                    fast_f = out["features"]
        losses = task_losses(out, targets, self.tasks, self.cfg.loss.depth)
        total = self.weighting(losses)
        if use_align and fast_f is not None:
            if slow_f is None:
                with torch.no_grad():
                    slow_f = self.model.encode(image, slow=True)
            a = self.cfg.align
            al = alignment_losses(slow_f, fast_f, self.disc, a.l1, a.adversarial)
            if "l1" in al:
                total = total + a.alpha * al["l1"]
                losses["align_l1"] = al["l1"]
            if "adv" in al:
                total = total + a.beta * al["adv"]
                losses["align_adv"] = al["adv"]
        losses["total"] = total
        return losses

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        assert self.optimizer is not None and self.scheduler is not None
        self._set_train_mode()
        if self.disc is not None:
            self.disc.train()
        losses = self.compute_losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if self.cfg.optim.grad_clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to the end of the schedule (or ``halt_at_step``); returns the last validation."""
        last_val: dict[str, Any] = self.history[-1] if self.history else {}
        while self.stage_idx < len(self.cfg.stages):
            stage = self.stage
            if stage.name == "fast" and self.model.fast is None:
                print(f"stage {self.stage_idx} (fast): skipped, the model has no fast encoder",
                      file=sys.stderr)
                self._next_stage()
                continue
            while self.epoch < stage.epochs:
                per_epoch = self.steps_per_epoch(stage)
                bar = tqdm(self._loader(stage), total=per_epoch, initial=self.batch_in_epoch,
                           disable=not self.progress, leave=False,
                           desc=f"{stage.name} {self.epoch + 1}/{stage.epochs}")
                for batch in bar:
                    vals = self.train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    for k, v in vals.items():
                        self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                    self.epoch_count += 1
                    self._log_step(vals)
                    bar.set_postfix(loss=f"{vals['total']:.3f}")
                    if self.step % self.cfg.ckpt_every == 0 and self.batch_in_epoch < per_epoch:
                        self.save(self.out / "last.pt")
                    if self.halt_at_step is not None and self.step >= self.halt_at_step:
                        bar.close()
                        return last_val
                bar.close()
                last_val = self._end_epoch(stage)
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

    def _end_epoch(self, stage: StageConfig) -> dict[str, Any]:
        means = {k: v / max(1, self.epoch_count) for k, v in self.epoch_sums.items()}
        self.weighting.end_epoch({t: means[t] for t in self.tasks if t in means})
        mode = {"slow": "slow", "fast": "fast", "joint": "slowfast"}[stage.name]
        t0 = time.time()
        # MACs depend on the architecture and the schedule only: profile them once per (mode, K).
        macs_key = (mode, stage.keyframe_interval)
        val = evaluate(self.model, self.val_data, mode=mode, keyframe_interval=stage.keyframe_interval,
                       offsets=self.cfg.val_offsets, max_clips=self.cfg.data.val_max_clips,
                       batch_size=self.cfg.batch_size, device=self.device,
                       count_macs=macs_key not in self._val_macs)
        val["macs"] = self._val_macs.setdefault(macs_key, val.get("macs", math.nan))
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
            print(f"[{stage.name} epoch {self.epoch}/{stage.epochs} step {self.step}] "
                  + " ".join(f"{k}={v:.3f}" for k, v in means.items())
                  + f" | val mIoU={val.get('miou', math.nan):.1f} abs={val.get('abs_err', math.nan):.3f}"
                  f" angle={val.get('mean_angle', math.nan):.1f} score={score:+.2f}", file=sys.stderr)
        return row

    # -- logs -------------------------------------------------------------------------------------
    def _log_step(self, vals: dict[str, float]) -> None:
        rec = {"step": self.step, "stage": self.stage.name, "epoch": self.epoch + 1, **vals}
        with (self.out / "steps.jsonl").open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def _truncate_logs(self, step: int) -> None:
        """Drop step records after ``step`` (written before a kill, redone after the resume)."""
        path = self.out / "steps.jsonl"
        if not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))

    def _write_metrics(self) -> None:
        (self.out / "metrics.json").write_text(json.dumps(self.history, indent=1))
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        with (self.out / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)

    # -- checkpoints ------------------------------------------------------------------------------
    def _meta(self, metrics: dict[str, float] | None) -> dict[str, Any]:
        return {"trained": True, "dataset": describe(self.cfg.data.train), "step": self.step,
                "stage": self.stage.name if self.stage_idx < len(self.cfg.stages) else "done",
                "variant": self.cfg.variant,
                "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}}

    def _save_model_only(self, path: Path) -> None:
        save_atomic({"model_config": self.model_cfg.to_dict(), "state_dict": self.model.state_dict(),
                     "meta": self._meta(self.history[-1] if self.history else None)}, path)

    def save(self, path: Path, metrics: dict[str, float] | None = None) -> None:
        """The full training state; loadable with ``weights_only=True`` and by ``load_model``."""
        ckpt = {
            "model_config": self.model_cfg.to_dict(),
            "state_dict": self.model.state_dict(),
            "meta": self._meta(metrics),
            "train_config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "weighting": self.weighting.state_dict(),
            "weighting_extra": self.weighting.extra_state(),
            "discriminator": self.disc.state_dict() if self.disc is not None else {},
            "progress": {"stage": self.stage_idx, "epoch": self.epoch, "batch": self.batch_in_epoch,
                         "step": self.step, "epoch_count": self.epoch_count},
            "epoch_sums": dict(self.epoch_sums),
            "best_score": self.best_score,
            "stage_baseline": dict(self.stage_baseline) if self.stage_baseline else {},
            "history": self.history,
            "rng": rng_state(),
        }
        save_atomic(ckpt, path)

    def _resume_checkpoint(self, resume: bool | str) -> dict[str, Any] | None:
        if not resume:
            return None
        path = Path(resume) if isinstance(resume, str) else self.out / "last.pt"
        if not path.exists():
            if isinstance(resume, str):
                raise FileNotFoundError(f"--resume: no checkpoint {path}")
            return None  # nothing to resume: a fresh start (so `--resume` is safe to always pass)
        return read_checkpoint(path)

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        self.weighting.load_state_dict(ckpt["weighting"])
        self.weighting.load_extra_state(ckpt.get("weighting_extra", {}))
        if self.disc is not None and ckpt.get("discriminator"):
            self.disc.load_state_dict(ckpt["discriminator"])
        p = ckpt["progress"]
        self._enter_stage(int(p["stage"]))
        self.epoch, self.batch_in_epoch, self.step = int(p["epoch"]), int(p["batch"]), int(p["step"])
        self.epoch_count = int(p["epoch_count"])
        self.epoch_sums = {k: float(v) for k, v in ckpt.get("epoch_sums", {}).items()}
        self.best_score = float(ckpt.get("best_score", -math.inf))
        self.stage_baseline = dict(ckpt["stage_baseline"]) or None
        self.history = list(ckpt.get("history", []))
        if self.optimizer is not None and ckpt.get("optimizer"):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self._truncate_logs(self.step)
        self._write_metrics()

    def _init_from(self, path: str) -> None:
        """Initial weights from another checkpoint (e.g. shared pretraining); parts this model does
        not have, or has with another shape, are skipped and reported."""
        sd = read_checkpoint(path)["state_dict"]
        own = self.model.state_dict()
        ok = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(ok, strict=False)
        skipped = sorted(set(own) - set(ok))
        if skipped and self.progress:
            print(f"init from {path}: {len(ok)} tensors loaded, {len(skipped)} new "
                  f"(e.g. {skipped[:2]})", file=sys.stderr)


# -- CLI ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config/train/NAME.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set optim.lr=3e-4")
    p.add_argument("--out", help="run folder (overrides `out`)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from OUT/last.pt (or CKPT) where the run stopped")
    p.add_argument("--halt-at-step", type=int, help="stop after this global step as if killed (tests)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else [])
    try:
        cfg = TrainConfig.from_yaml(args.config, overrides)
        trainer = Trainer(cfg, resume=args.resume, halt_at_step=args.halt_at_step,
                          progress=not args.no_progress)
    except (ConfigError, FileNotFoundError) as e:
        print(f"mtl-train: {e}", file=sys.stderr)
        return 2
    trainer.run()
    print(f"mtl-train: done at step {trainer.step}; checkpoints in {trainer.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
