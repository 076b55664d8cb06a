"""Deep-supervision losses for the auxiliary outputs of cross-task decoders (issue 13).

DenseMTL puts task losses before and after its exchange block (``aux.<task>``), MTI-Net on the
initial predictions of every scale (``aux.<task>.<scale>``). Each auxiliary output is scored by
its task's loss against the same labels; a task's auxiliary losses are averaged (MTI-Net's four
scales weigh as much as DenseMTL's one pre-block output) and added to the total with weight 1.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .losses import task_losses

AUX = "aux."


def output_task(name: str) -> str:
    """The task of an output name: ``depth`` -> depth, ``aux.depth`` / ``aux.depth.2`` -> depth."""
    return name[len(AUX):].split(".")[0] if name.startswith(AUX) else name


def aux_task_losses(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor], tasks: tuple[str, ...],
                    depth_kind: str = "l1") -> dict[str, Tensor]:
    """``{"aux_<task>": mean task loss over its aux outputs}`` for the labelled ``tasks``; empty
    for a decoder without auxiliary outputs (or in eval mode, where the network emits none)."""
    per_task: dict[str, list[Tensor]] = {}
    for name, out in outputs.items():
        if name.startswith(AUX):
            task = output_task(name)
            if task in tasks:
                loss = task_losses({task: out}, targets, (task,), depth_kind)[task]
                per_task.setdefault(task, []).append(loss)
    return {f"aux_{t}": sum(v) / len(v) for t, v in per_task.items()}  # type: ignore[misc]
