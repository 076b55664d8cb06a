"""Training-step cost of ASTMT's adversarial task-gradient disentanglement (issue 13).

The adversary needs each task's gradient at the shared features as a differentiable tensor
(double back-propagation), so a training step with it costs more than one without. This times
``mtl-train``'s own step (``Trainer.train_step``, slow and joint stages) on the tiny ASTMT model
with ``task_adversarial.enabled`` true and false, same data and seed, and prints one table.

    python bench/astmt_adversary.py [--steps 6 --batch 2 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torch.utils.data import Dataset  # noqa: E402

from training.config import TrainConfig  # noqa: E402
from training.trainer import Trainer  # noqa: E402


class RandomClips(Dataset):
    """Labelled 6-frame 64x128 clips of noise: the step's cost does not depend on the content."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"images": torch.rand(6, 3, 64, 128, generator=g),
                "semantic": torch.randint(0, 8, (64, 128), generator=g),
                "depth": 1 + 9 * torch.rand(1, 64, 128, generator=g),
                "normals": torch.nn.functional.normalize(torch.randn(3, 64, 128, generator=g), dim=0)}


def step_times(stage: dict, enabled: bool, steps: int, batch: int, out: Path) -> list[float]:
    cfg = TrainConfig.from_dict({
        "model": str(ROOT / "config/model/astmt_tiny.yaml"), "out": str(out), "seed": 0, "batch_size": batch,
        "data": {"clip_len": 6, "val_max_clips": 1}, "stages": [stage], "val_offsets": "last",
        "task_adversarial": {"enabled": enabled}})
    tr = Trainer(cfg, progress=False, train_data=RandomClips(batch * (steps + 1)), val_data=RandomClips(1))
    times = []
    for i, b in enumerate(tr._loader(tr.stage)):
        t0 = time.perf_counter()
        tr.train_step(b)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
        if len(times) == steps:
            break
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"tiny ASTMT (config/model/astmt_tiny.yaml), 64x128, batch {a.batch}, {a.threads} thread(s), "
          f"median of {a.steps} steps\n")
    print("| stage | without adversary ms/step | with adversary ms/step | ratio |\n|---|---|---|---|")
    for stage in ({"name": "slow", "epochs": 1, "steps_per_epoch": a.steps + 1},
                  {"name": "joint", "epochs": 1, "steps_per_epoch": a.steps + 1, "keyframe_interval": 5}):
        with tempfile.TemporaryDirectory() as tmp:
            off = statistics.median(step_times(stage, False, a.steps, a.batch, Path(tmp) / "off"))
            on = statistics.median(step_times(stage, True, a.steps, a.batch, Path(tmp) / "on"))
        print(f"| {stage['name']} | {1e3 * off:.0f} | {1e3 * on:.0f} | {on / off:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
