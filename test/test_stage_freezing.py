"""Stage freezing: in a stage only its parts change. Frozen parts keep every tensor bit for bit,
BatchNorm running statistics included (they run in eval mode although their outputs are used),
while the stage's own parts, weights and statistics, do change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_resume_exact import Clips  # the same tiny labelled clips

from training.config import TrainConfig
from training.trainer import Trainer

PARTS = ("slow", "fast", "decoders", "propagation")


def _run(out: Path, stage: dict[str, Any], steps: int = 2) -> tuple[dict[str, torch.Tensor], dict]:
    cfg = TrainConfig.from_dict({
        "model": "config/model/tiny.yaml", "out": str(out), "seed": 1, "batch_size": 1, "ckpt_every": 100,
        "optim": {"lr": 1e-2}, "data": {"clip_len": 3}, "align": {"disc_hidden": 8},
        "stages": [{**stage, "epochs": 1, "steps_per_epoch": steps}], "val_offsets": "last"})
    t = Trainer(cfg, progress=False, train_data=Clips(4), val_data=Clips(1, seed=9), halt_at_step=steps)
    before = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
    t.run()
    return before, t.model.state_dict()


def _changed(before: dict, after: dict, part: str, suffix: str = "") -> tuple[int, int]:
    keys = [k for k in before if k.startswith(part + ".") and k.endswith(suffix)]
    return sum(not torch.equal(before[k], after[k]) for k in keys), len(keys)


@pytest.mark.parametrize("stage, trained", [
    ({"name": "fast"}, ("fast",)),  # decoders and slow run (features, alignment) but are frozen
    ({"name": "slow"}, ("slow", "decoders")),
    ({"name": "joint", "keyframe_interval": 2, "trainable": ["propagation"], "align": False},
     ("propagation",)),
])
def test_only_the_stage_parts_change(tmp_path: Path, stage: dict[str, Any], trained: tuple[str, ...]) -> None:
    torch.set_num_threads(2)
    before, after = _run(tmp_path, stage)
    for part in PARTS:
        n, total = _changed(before, after, part)
        if part in trained:
            w, nw = _changed(before, after, part, ".weight")
            assert w > nw // 2, f"{part}: only {w} of {nw} weights changed"
            if part in ("slow", "fast", "decoders"):  # trained BatchNorm layers update their statistics
                assert _changed(before, after, part, "running_mean")[0] > 0, part
        else:
            changed = [k for k in before if k.startswith(part + ".") and not torch.equal(before[k], after[k])]
            assert not changed, f"frozen {part} changed in stage {stage['name']}: {changed[:4]}"
