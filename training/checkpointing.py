"""Training checkpoints on disk: which file a resume reads, atomic writes, and the step log.

``last.pt`` is written every ``ckpt_every`` steps and at each epoch end; before it is replaced
the previous one becomes ``last.prev.pt``, so a damaged ``last.pt`` costs at most
``ckpt_every`` steps. ``best.pt`` also holds the full training state. A resume reads the newest
(highest step) of these that loads, and says which one when it is not ``last.pt``.
Every write goes through :func:`mtl_perception.model.checkpoint.save_atomic` (temp file, fsync,
rename): a kill or a full disk mid-write leaves the previous file intact.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from mtl_perception.model.checkpoint import CheckpointError, read_checkpoint, save_atomic

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
        try:
            ckpt = read_checkpoint(path)
            step = int(ckpt["progress"]["step"])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            problems.append(f"{path.name}: {e}" if not isinstance(e, CheckpointError) else str(e))
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
