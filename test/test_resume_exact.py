"""Kill-and-resume is exact for what a constant learning rate never exercises: the LR schedule
(``optim.lr_step``: x ``lr_gamma`` every step), the running epoch sums and the best score.

Run A stops at step 5; run B stops at step 4 (mid epoch 2, after epoch 1 set the best score) and
resumes to step 5. Their ``last.pt`` at step 5 must agree: weights, optimiser and scheduler state,
epoch sums, best score, epoch history. The LR is also checked against the hand value
``lr * gamma ** step``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from training.config import TrainConfig
from training.trainer import Trainer

H, W, T = 64, 128, 3
LR, GAMMA = 2e-3, 0.7
STEPS_PER_EPOCH, EPOCHS = 3, 2


class Clips(Dataset):
    """Deterministic random clips with labels (per index), enough to give non-zero losses."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 100 + i)
        cells = torch.randint(0, 8, (H // 16, W // 16), generator=g)
        sem = cells.repeat_interleave(16, 0).repeat_interleave(16, 1)
        return {"images": torch.rand(T, 3, H, W, generator=g), "semantic": sem.long(),
                "depth": (1.0 + sem.float()).unsqueeze(0),
                "normals": torch.nn.functional.normalize(torch.randn(3, H, W, generator=g), dim=0),
                "keyframe_interval": 1, "keyframe_offset": 0}


def _trainer(out: Path, **kw: Any) -> Trainer:
    cfg = TrainConfig.from_dict({
        "model": "config/model/tiny.yaml", "out": str(out), "seed": 5, "batch_size": 1, "ckpt_every": 1,
        "optim": {"lr": LR, "lr_step": 1, "lr_gamma": GAMMA}, "data": {"clip_len": T},
        "stages": [{"name": "slow", "epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH}],
        "val_offsets": "last"})
    return Trainer(cfg, progress=False, train_data=Clips(4), val_data=Clips(1, seed=9), **kw)


def _last(out: Path) -> dict[str, Any]:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, dict[str, Any], dict[str, Any]]:
    torch.set_num_threads(2)
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    _trainer(a, halt_at_step=5).run()
    _trainer(b, halt_at_step=4).run()
    assert _last(b)["progress"]["step"] == 4
    _trainer(b, resume=True, halt_at_step=5).run()
    return a, b, _last(a), _last(b)


def test_resumed_checkpoint_equals_uninterrupted(runs) -> None:
    _, _, ca, cb = runs
    assert ca["progress"] == cb["progress"] and ca["progress"]["step"] == 5
    # the epoch-1 validation set the best score; the resumed run must still know it
    assert math.isfinite(ca["best_score"]) and cb["best_score"] == pytest.approx(ca["best_score"], abs=1e-9)
    # two steps of epoch 2 summed, one before and one after the resume
    assert ca["progress"]["epoch_count"] == cb["progress"]["epoch_count"] == 2
    assert set(ca["epoch_sums"]) == set(cb["epoch_sums"]) and ca["epoch_sums"]
    for k, v in ca["epoch_sums"].items():
        assert cb["epoch_sums"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    # the LR schedule continued: 5 decays, by hand, in the optimiser and the scheduler
    lr5 = LR * GAMMA ** 5
    for c in (ca, cb):
        assert c["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr5, rel=1e-9)
        assert c["scheduler"]["last_epoch"] == 5
        assert c["scheduler"]["_last_lr"][0] == pytest.approx(lr5, rel=1e-9)
    for k, v in ca["state_dict"].items():
        torch.testing.assert_close(cb["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_epoch_history_agrees(runs) -> None:
    """The epoch-1 row (written before the kill) survives the resume, with the hand LR."""
    a, b, ca, cb = runs
    assert len(ca["history"]) == len(cb["history"]) == 1
    ra, rb = ca["history"][0], cb["history"][0]
    assert ra["lr"] == pytest.approx(LR * GAMMA ** STEPS_PER_EPOCH, rel=1e-9)
    for k, v in ra.items():  # epoch means of the training losses and the validation
        if k.startswith(("train_", "val_")) and isinstance(v, float) and k != "val_seconds":
            assert rb[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert json.loads((b / "metrics.json").read_text())[0]["lr"] == pytest.approx(ra["lr"], rel=1e-9)
