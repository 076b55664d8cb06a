"""Training end to end on the tiny 64x128 model: losses fall, kill-and-resume is exact, the
checkpoint loads where the node loads it, the CLIs run.

The clips come from a small in-test dataset (coloured vertical bands with per-class depth and
normals, moving sideways over time), so the tests need neither the renderer nor files on disk.
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

H, W, T, N = 64, 128, 6, 8
COLORS = torch.rand(N, 3, generator=torch.Generator().manual_seed(1))
DEPTHS = torch.linspace(2.0, 8.0, N)  # metres; small so depth does not drown the other tasks
NORMALS = torch.nn.functional.normalize(torch.randn(N, 3, generator=torch.Generator().manual_seed(2)), dim=1)


class BandClips(Dataset):
    """Clip i: 8 random vertical bands drifting 2 px per frame; labels of every frame follow."""

    def __init__(self, n: int, seed: int = 0, augment: bool = False) -> None:
        self.n, self.seed, self.augment = n, seed, augment

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        cls = torch.randint(0, N, (W // 16 + 2,), generator=g)
        frames, sem = [], None
        for t in range(T):
            cols = (torch.arange(W) + 2 * t) // 16
            sem = cls[cols].view(1, W).expand(H, W)
            img = COLORS[sem].permute(2, 0, 1) + 0.02 * torch.randn(3, H, W, generator=g)
            frames.append(img.clamp(0, 1))
        assert sem is not None
        sem = sem.clone()
        sem[:2] = 255  # a few ignored rows
        depth = DEPTHS[sem.clamp(max=N - 1)].view(1, H, W) * (sem != 255)
        normals = NORMALS[sem.clamp(max=N - 1)].permute(2, 0, 1) * (sem != 255)
        images = torch.stack(frames)
        if self.augment and torch.rand(()) < 0.5:  # global torch RNG: the trainer must seed it
            images, sem, depth = images.flip(-1), sem.flip(-1), depth.flip(-1)
            normals = normals.flip(-1) * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
        return {"images": images, "semantic": sem.long(), "depth": depth.float(), "normals": normals.float(),
                "keyframe_interval": 5, "keyframe_offset": 0}


def _cfg(tmp: Path, stages: list[dict[str, Any]], **kw: Any) -> TrainConfig:
    data: dict[str, Any] = {
        "model": "config/model/tiny.yaml", "out": str(tmp), "seed": 3, "batch_size": 2, "ckpt_every": 2,
        "optim": {"lr": 2e-3}, "align": {"disc_hidden": 8}, "data": {"clip_len": T},
        "stages": stages, "val_offsets": "last",
    }
    data.update(kw)
    return TrainConfig.from_dict(data)


def _steps(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short three-stage run shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("tiny_run")
    torch.set_num_threads(2)
    cfg = _cfg(out, [{"name": "slow", "epochs": 2, "steps_per_epoch": 8},
                     {"name": "fast", "epochs": 1, "steps_per_epoch": 2},
                     {"name": "joint", "epochs": 1, "steps_per_epoch": 3, "keyframe_interval": 5}],
               optim={"lr": 5e-3})
    Trainer(cfg, progress=False, train_data=BandClips(16), val_data=BandClips(1, seed=9)).run()
    return out


def test_tiny_run_lowers_every_task_loss(tiny_run: Path) -> None:
    recs = [r for r in _steps(tiny_run) if r["stage"] == "slow"]
    assert len(recs) == 16
    for task in ("semantic", "depth", "normals"):
        first = sum(r[task] for r in recs[:3]) / 3
        last = sum(r[task] for r in recs[-3:]) / 3
        assert last < 0.95 * first, f"{task}: {first:.3f} -> {last:.3f}"
    joint = [r for r in _steps(tiny_run) if r["stage"] == "joint"]
    assert len(joint) == 3 and all("align_l1" in r and "align_adv" in r for r in joint)
    rows = json.loads((tiny_run / "metrics.json").read_text())
    assert [r["stage"] for r in rows] == ["slow", "slow", "fast", "joint"]
    assert (tiny_run / "metrics.csv").read_text().startswith("stage,epoch,step")
    assert rows[-1]["val_macs"] > 0 and not math.isnan(rows[-1]["val_miou"])


def test_checkpoint_loads_in_the_node_model(tiny_run: Path) -> None:
    from mtl_perception.model import load_model
    from mtl_perception.pipeline import load_backend

    for name in ("last.pt", "best.pt", "stage_joint.pt"):
        ckpt = torch.load(tiny_run / name, map_location="cpu", weights_only=True)
        assert ckpt["meta"]["trained"] is True
        model, meta = load_model(tiny_run / name)
        assert meta["variant"] == "full"
        out, _ = model.step(torch.rand(1, 3, H, W), None, True)
        assert out["semantic"].shape == (1, N, H, W)
    loaded = load_backend(checkpoint=str(tiny_run / "last.pt"), backend="torch", device="cpu", warmup=False)
    assert loaded.trained


def test_kill_and_resume_reproduces_losses(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    stages = [{"name": "slow", "epochs": 1, "steps_per_epoch": 3},
              {"name": "joint", "epochs": 2, "steps_per_epoch": 2, "keyframe_interval": 5}]

    def trainer(out: Path, **kw: Any) -> Trainer:
        cfg = _cfg(out, stages, loss={"weighting": "dwa"})
        return Trainer(cfg, progress=False, train_data=BandClips(8, augment=True),
                       val_data=BandClips(1, seed=9), **kw)

    full = tmp_path / "full"
    trainer(full).run()
    ref = _steps(full)
    assert len(ref) == 7
    cut = tmp_path / "cut"
    trainer(cut, halt_at_step=7).run()  # "killed" after step 7; the last checkpoint is step 6
    assert torch.load(cut / "last.pt", weights_only=True)["progress"]["step"] == 6
    trainer(cut, resume=True).run()
    got = _steps(cut)
    assert [r["step"] for r in got] == list(range(1, 8))
    for a, b in zip(ref, got):
        for k in ("semantic", "depth", "normals", "align_l1", "align_adv", "total"):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (a["step"], k)
    m_ref = json.loads((full / "metrics.json").read_text())
    m_cut = json.loads((cut / "metrics.json").read_text())
    assert len(m_ref) == len(m_cut) == 3
    assert m_cut[-1]["val_miou"] == pytest.approx(m_ref[-1]["val_miou"], rel=1e-5)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    from mtl_perception.model import ConfigError

    with pytest.raises(ConfigError, match="optim.lr"):
        _cfg(tmp_path, [{"name": "slow"}], optim={"lr": -1})
    with pytest.raises(ConfigError, match=r"stages\[0\].name"):
        _cfg(tmp_path, [{"name": "warmup"}])
    with pytest.raises(ConfigError, match="model_override"):
        _cfg(tmp_path, [{"name": "slow"}], model_override={"propagation": {"window": 4}})
    with pytest.raises(ConfigError, match="loss.bogus"):
        _cfg(tmp_path, [{"name": "slow"}], loss={"bogus": 1})


def test_cli_overrides_and_plot(tiny_run: Path, tmp_path: Path) -> None:
    from training.config import apply_overrides
    from training.plot import main as plot_main

    d = apply_overrides({"optim": {"lr": 1e-4}}, ["optim.lr=3e-4", "stages.2.epochs=4", "variant=x"])
    assert d["optim"]["lr"] == 3e-4 and d["stages"][2]["epochs"] == 4 and d["variant"] == "x"
    assert TrainConfig.from_dict(d).stages[2].epochs == 4
    assert plot_main([str(tiny_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "losses.png").stat().st_size > 1000
    assert (tmp_path / "validation.png").stat().st_size > 1000


def test_protocol_modes_and_table(tiny_run: Path) -> None:
    from mtl_perception.model import load_model
    from training.evaluate import add_delta_m, evaluate, format_table

    model, _ = load_model(tiny_run / "last.pt")
    data = BandClips(1, seed=9)
    rows = [(mode, evaluate(model, data, mode, keyframe_interval=5)) for mode in ("slow", "fast", "slowfast")]
    slow, fast, sf = (r[1] for r in rows)
    assert sf["evaluations"] == 5 * slow["evaluations"] == 5  # every offset 0..K-1
    assert fast["macs"] < sf["macs"] < slow["macs"]
    add_delta_m(rows)
    assert rows[0][1]["delta_m"] == pytest.approx(0.0)
    table = format_table(rows, baseline="slow")
    assert "mIoU" in table and "Δm" in table and table.count("\n|") >= 4


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    """A real ``kill -9`` of ``mtl-train`` between checkpoints; ``--resume`` replays exactly."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from training.data.cli import main as data_main

    data = tmp_path / "data"
    rc = data_main(["generate", "--clips", "3", "--frames", "6", "--size", "64x128", "--out", str(data)])
    assert rc == 0
    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config/train/tiny.yaml").read_text())
    cfg.update(model=str(root / "config/model/tiny.yaml"), threads=1, batch_size=2, ckpt_every=3,
               data={**cfg["data"], "train": str(data), "val": str(data), "val_max_clips": 1},
               stages=[{"name": "slow", "epochs": 1, "steps_per_epoch": 6},
                       {"name": "joint", "epochs": 1, "steps_per_epoch": 8, "keyframe_interval": 3}])
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "training.trainer", "--config", str(cfg_path), "--out",
                                 str(out), "--no-progress", *extra], env=env, cwd=root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    ref = tmp_path / "ref"
    assert train(ref).wait(timeout=600) == 0
    cut = tmp_path / "cut"
    proc = train(cut)
    deadline = time.time() + 600
    # kill once a checkpoint exists and the run has gone past it (step 10 of 14: checkpoint at 9)
    while time.time() < deadline and len(_lines(cut / "steps.jsonl")) < 10:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = len(_lines(cut / "steps.jsonl"))
    assert 10 <= killed_at < 14, "the run must be killed mid-way"
    resumed = train(cut, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    a, b = _steps(ref), _steps(cut)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 15))
    for x, y in zip(a, b):
        for k in ("semantic", "depth", "normals", "total"):
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), (x["step"], k)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
