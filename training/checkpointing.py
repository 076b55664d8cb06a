"""Training checkpoints on disk: which file a resume reads, atomic writes, and the step log.

``last.pt`` is written every ``ckpt_every`` steps and at each epoch end; before it is replaced
the previous one becomes ``last.prev.pt``, so a damaged ``last.pt`` costs at most
``ckpt_every`` steps. ``best.pt`` also holds the full training state. A resume reads the newest
(highest step) of these that loads, and says which one when it is not ``last.pt``.
Every write goes through :func:`mtl_perception.model.checkpoint.save_atomic` (temp file, fsync,
rename): a kill or a full disk mid-write leaves the previous file intact.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from mtl_perception.model.checkpoint import CheckpointError, read_checkpoint, save_atomic

from .data.registry import describe
from .sampling import rng_state, set_rng_state

RESUMABLE = ("last.pt", "last.prev.pt", "best.pt")


class NoSpaceError(OSError):
    """The disk filled up while writing ``path``; the previous file there is intact."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device writing {path} "
                                       "(the previous checkpoint there is intact)")
        self.path = path


def write_checkpoint(obj: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """``obj`` atomically at ``path``; ``keep_previous`` first moves the old file to NAME.prev.pt."""
    try:
        if keep_previous and path.exists():
            os.replace(path, path.with_suffix(".prev.pt"))
        save_atomic(obj, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpaceError(path) from None
        raise


def find_resume_checkpoint(out: Path) -> tuple[dict[str, Any], Path, list[str]] | None:
    """The readable full-state checkpoint of ``out`` with the highest step, its path and the
    reasons the files skipped on the way were unreadable. None when ``out`` holds no candidate;
    :class:`CheckpointError` when candidates exist but none loads."""
    paths = [out / n for n in RESUMABLE if (out / n).is_file()]
    if not paths:
        return None
    loaded: list[tuple[int, int, dict[str, Any], Path]] = []
    problems: list[str] = []
    for rank, path in enumerate(paths):
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            problems.append(f"{path.name} is not a torch checkpoint (truncated or overwritten?)")
            continue
        try:
            ckpt = read_checkpoint(path)
            step = int(ckpt["progress"]["step"])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            # torch's unpickling errors span several lines: keep the message to one short line
            why = " ".join(str(e).replace(str(path), path.name).split())
            problems.append(f"{path.name}: {why[:160] + '...' if len(why) > 160 else why}")
            continue
        loaded.append((step, -rank, ckpt, path))
    if not loaded:
        raise CheckpointError(f"--resume: no readable checkpoint in {out} ({'; '.join(problems)})")
    step, _, ckpt, path = max(loaded, key=lambda t: (t[0], t[1]))
    return ckpt, path, problems


# -- the per-step log -----------------------------------------------------------------------------
def append_step(out: Path, record: dict[str, Any]) -> None:
    try:
        with (out / "steps.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpaceError(out / "steps.jsonl") from None
        raise


def truncate_steps(out: Path, step: int) -> None:
    """Drop step records after ``step`` (written before a kill, redone after the resume)."""
    path = out / "steps.jsonl"
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def set_aside_steps(out: Path) -> Path | None:
    """A fresh start in a folder that already has a step log keeps the old log as
    ``steps.jsonl.N.bak`` instead of overwriting it; returns the backup's path."""
    path = out / "steps.jsonl"
    if not path.exists() or path.stat().st_size == 0:
        return None
    n = 0
    while (bak := out / f"steps.jsonl.{n}.bak").exists():
        n += 1
    os.replace(path, bak)
    return bak


class TrainerState:
    """The :class:`training.trainer.Trainer`'s files: step log, metrics, checkpoints (written by
    rank 0 only), resume and init. A mixin so the trainer module holds the training logic."""

    # -- logs (rank 0) ----------------------------------------------------------------------------
    def _log_step(self, vals: dict[str, float], lr: float) -> None:
        """One line of steps.jsonl: the step's losses and the learning rate it trained with."""
        if not self.dist.main:
            return
        append_step(self.out, {"step": self.step, "stage": self.stage.name, "epoch": self.epoch + 1,
                               **vals, "lr": lr})

    def _write_metrics(self) -> None:
        if not self.dist.main:
            return
        (self.out / "metrics.json").write_text(json.dumps(self.history, indent=1))
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        with (self.out / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)

    # -- checkpoints (rank 0 writes; every rank reads) --------------------------------------------
    def _meta(self, metrics: dict[str, float] | None) -> dict[str, Any]:
        return {"trained": True, "dataset": describe(self.cfg.data.train), "step": self.step,
                "stage": self.stage.name if self.stage_idx < len(self.cfg.stages) else "done",
                "variant": self.cfg.variant,
                "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}}

    def _save_model_only(self, path: Path) -> None:
        if self.dist.main:
            state = {"model_config": self.model_cfg.to_dict(), "state_dict": self.model.state_dict(),
                     "meta": self._meta(self.history[-1] if self.history else None)}
            write_checkpoint(state, path)

    def save(self, path: Path, metrics: dict[str, float] | None = None) -> None:
        """The full training state (rank 0); loadable with ``weights_only=True`` and by ``load_model``."""
        if not self.dist.main:
            return
        ckpt = {
            "model_config": self.model_cfg.to_dict(),
            "state_dict": self.model.state_dict(),
            "meta": self._meta(metrics),
            "train_config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "grad_scaler": self.precision.state_dict(),
            "weighting": self.weighting.state_dict(),
            "weighting_extra": self.weighting.extra_state(),
            "discriminator": self.disc.state_dict() if self.disc is not None else {},
            "task_adversary": self.task_adv.state_dict() if self.task_adv is not None else {},
            "adaptation": self.adaptation.adversary.state_dict() if self.adaptation is not None else {},
            "fast_decoders": self.fast_decoders.state_dict() if self.fast_decoders is not None else {},
            "progress": {"stage": self.stage_idx, "epoch": self.epoch, "batch": self.batch_in_epoch,
                         "step": self.step, "epoch_count": self.epoch_count},
            "epoch_sums": dict(self.epoch_sums),
            "best_score": self.best_score,
            "stage_baseline": dict(self.stage_baseline) if self.stage_baseline else {},
            "history": self.history,
            "rng": rng_state(),
        }
        write_checkpoint(ckpt, path, keep_previous=path.name == "last.pt")

    def _resume_checkpoint(self, resume: bool | str) -> dict[str, Any] | None:
        """The state to resume from: the file given, or the newest readable one of ``out``
        (saying so when that is not last.pt); None for a fresh start."""
        if not resume:
            return None
        if isinstance(resume, str):
            if not Path(resume).exists():
                raise FileNotFoundError(f"--resume: no checkpoint {resume}")
            return read_checkpoint(resume)
        found = find_resume_checkpoint(self.out)
        if found is None:
            # Nothing to resume (so `--resume` is safe to always pass); keep an old step log.
            bak = set_aside_steps(self.out) if self.dist.main else None
            self._say(f"--resume: no checkpoint in {self.out}; starting from step 0"
                      + (f" (the previous step log is kept as {bak.name})" if bak else ""))
            return None
        ckpt, path, problems = found
        if path.name != "last.pt":
            why = problems[0] if problems else "last.pt is missing"
            self._say(f"--resume: {why}; resuming from {path.name} (step {ckpt['progress']['step']})")
        return ckpt

    def _load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        self.weighting.load_state_dict(ckpt["weighting"])
        self.weighting.load_extra_state(ckpt.get("weighting_extra", {}))
        if self.disc is not None and ckpt.get("discriminator"):
            self.disc.load_state_dict(ckpt["discriminator"])
        if self.task_adv is not None and ckpt.get("task_adversary"):
            self.task_adv.load_state_dict(ckpt["task_adversary"])
        if self.adaptation is not None and ckpt.get("adaptation"):
            self.adaptation.adversary.load_state_dict(ckpt["adaptation"])
        p = ckpt["progress"]
        self.epoch, self.batch_in_epoch, self.step = int(p["epoch"]), int(p["batch"]), int(p["step"])
        self._enter_stage(int(p["stage"]))
        if self.fast_decoders is not None and ckpt.get("fast_decoders"):
            self.fast_decoders.load_state_dict(ckpt["fast_decoders"])
        self.epoch_count = int(p["epoch_count"])
        self.epoch_sums = {k: float(v) for k, v in ckpt.get("epoch_sums", {}).items()}
        self.best_score = float(ckpt.get("best_score", -math.inf))
        self.stage_baseline = dict(ckpt["stage_baseline"]) or None
        self.history = list(ckpt.get("history", []))
        if self.optimizer is not None and ckpt.get("optimizer"):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.precision.load_state_dict(ckpt.get("grad_scaler", {}))
        set_rng_state(ckpt["rng"])
        if self.dist.main:
            truncate_steps(self.out, self.step)
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
