"""``mtl-train``'s adaptation mode (training/adapt/mode.py, docs/adaptation.md): a video file as the
unlabelled target, end to end through the CLI; kill + resume continues exactly; the target order
is seeded and sharded like the source; the discriminators train in the network's step without
their loss leaking into the network; config errors name the field (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_train_datasets import _synthetic, _video

from mtl_perception.model.config import ConfigError
from training.config import TrainConfig
from training.sampling import EpochSampler
from training.train import main as train_main
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("semantic", "depth", "normals")
STAGES = [{"name": "slow", "epochs": 1, "steps_per_epoch": 2},
          {"name": "fast", "epochs": 1, "steps_per_epoch": 1},
          {"name": "joint", "epochs": 1, "steps_per_epoch": 2, "keyframe_interval": 2}]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapt_data")
    _synthetic(root / "syn", clips=2, frames=4)  # grey source frames
    _video(root / "v.mp4", 8)  # red-ramp target frames: green = blue = 0
    return root


def _cfg(data: Path, out: Path, stages: list[dict[str, Any]] | None = None, augment: bool = True,
         **kw: Any) -> dict[str, Any]:
    syn = {"type": "synthetic", "root": str(data / "syn")}
    cfg = {"model": str(ROOT / "config/model/tiny.yaml"), "out": str(out), "seed": 1, "threads": 1,
           "batch_size": 2, "ckpt_every": 1, "optim": {"lr": 1e-3}, "align": {"disc_hidden": 8},
           "data": {"train": syn, "val": syn, "target": {"type": "video", "paths": [str(data / "v.mp4")]},
                    "clip_len": 3, "val_max_clips": 1, "augment": augment},
           "adapt": {"method": "mtl_uda", "disc_hidden": 8, "stages": ["slow", "fast", "joint"]},
           "stages": stages or STAGES, "val_offsets": "last"}
    cfg.update(kw)
    return cfg


def _steps(out: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines()]


def _cli(cfg: dict[str, Any], path: Path, *args: str) -> int:
    path.write_text(yaml.safe_dump(cfg))
    return train_main(["--config", str(path), "--no-progress", *args])


@pytest.fixture(scope="module")
def full_run(data: Path) -> Path:
    """Uninterrupted: slow 2 + fast 1 + joint 2 steps, each with a video target batch."""
    torch.set_num_threads(1)
    out = data / "full"
    assert _cli(_cfg(data, out), data / "full.yaml") == 0
    return out


def test_video_target_runs_end_to_end_through_mtl_train(full_run: Path) -> None:
    steps = _steps(full_run)
    assert [s["stage"] for s in steps] == ["slow", "slow", "fast", "joint", "joint"]
    for s in steps:
        adv = {t: s[f"adv_{t}"] for t in TASKS}
        assert all(0 < v < 10 for v in adv.values()) and s["disc"] > 0
        # the network's term: lambda_adv (5e-3) times the per-task BCEs (se_conv: no aux outputs)
        assert s["adv"] == pytest.approx(5e-3 * sum(adv.values()), rel=1e-5)
        # both terms are in the step's total: equal weighting + alignment (fast/joint) + adv + disc
        rest = sum(s[t] for t in TASKS) + s.get("align_l1", 0.0) + s.get("align_adv", 0.0)
        assert s["total"] == pytest.approx(rest + s["adv"] + s["disc"], rel=1e-5)
    ckpt = torch.load(full_run / "last.pt", weights_only=True)
    assert sorted(k.split(".")[1] for k in ckpt["adaptation"] if k.endswith("net.0.weight")) == sorted(TASKS)
    assert ckpt["train_config"]["adapt"]["method"] == "mtl_uda"


def test_kill_and_resume_continues_exactly(data: Path, full_run: Path) -> None:
    cut = data / "cut"
    assert _cli(_cfg(data, cut), data / "cut.yaml", "--halt-at-step", "4") == 0  # mid-joint
    assert len(_steps(cut)) == 4
    assert _cli(_cfg(data, cut), data / "cut.yaml", "--resume") == 0
    ref, got = _steps(full_run), _steps(cut)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    for a, b in zip(ref, got, strict=True):
        assert set(a) == set(b)
        for k in a:
            if k not in ("stage", "epoch"):
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), (a["step"], k)
    want = torch.load(full_run / "last.pt", weights_only=True)["adaptation"]
    have = torch.load(cut / "last.pt", weights_only=True)["adaptation"]
    for k in want:
        torch.testing.assert_close(have[k], want[k], rtol=1e-5, atol=1e-7)


def _trainer(data: Path, out: Path, stages: list[dict[str, Any]], **kw: Any) -> Trainer:
    torch.set_num_threads(1)
    return Trainer(TrainConfig.from_dict(_cfg(data, out, stages, **kw)), progress=False)


def test_target_batches_are_video_clips_seeded_and_sharded(data: Path) -> None:
    tr = _trainer(data, data / "order", STAGES[:1], augment=False)  # clips as decoded
    assert len(tr.adaptation.target) == 6  # 8 frames, clip_len 3: clips ending at frames 2..7
    reds = [float(tr.adaptation.target[i]["images"][-1, 0].mean()) for i in range(6)]

    def targets(rank: int, world: int, skip: int = 0) -> list[float]:
        sampler = EpochSampler(len(tr.train_data), 1, 0, 0, skip, 8, rank, world)
        fake = ({"images": torch.zeros(1)} for _ in range(len(sampler) // (2 // world)))
        return [float(c[-1, 0].mean()) for b in tr.adaptation.pair(fake, sampler, 2 // world)
                for c in b["target"]]

    one = targets(0, 1)
    assert len(one) == 8 and all(min(abs(r - x) for x in reds) < 1e-6 for r in one)
    assert one == targets(0, 1)  # seeded: the same epoch draws the same target clips
    two = [targets(0, 2), targets(1, 2)]
    assert sorted(two[0] + two[1]) == sorted(one)  # two ranks: the union of the one-process batches
    assert targets(0, 1, skip=4) == one[4:]  # a resume mid-epoch continues the same order
    batch = next(iter(tr._loader(tr.stage)))
    assert batch["target"].shape == (2, 3, 3, 64, 128) and float(batch["target"][:, :, 1:].abs().max()) < 0.1
    assert float(batch["images"][:, :, 1:].min()) > 0.1  # the source stays the grey source
    # the step runs the target's annotated frame through the stage's path (slow) after the source's
    seen: list[torch.Tensor] = []
    hook = tr.model.slow.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    tr._set_train_mode()
    losses = tr.compute_losses(batch)
    hook.remove()
    m = tr.model
    assert len(seen) == 2 and {f"adv_{t}" for t in TASKS} <= set(losses)
    torch.testing.assert_close(seen[1], (batch["target"][:, -1] - m.mean) / m.std)


def test_discriminators_train_in_the_step_without_training_the_network(data: Path) -> None:
    slow = [{"name": "slow", "epochs": 1, "steps_per_epoch": 1}]
    plain = _trainer(data, data / "plain", slow, adapt=None)
    off = _trainer(data, data / "lam0", slow, adapt={"lambda_adv": 0.0, "disc_hidden": 8, "stages": ["slow"]})
    on = _trainer(data, data / "lam1", slow, adapt={"lambda_adv": 1.0, "disc_hidden": 8, "stages": ["slow"]})
    disc0 = {k: v.clone() for k, v in off.adaptation.adversary.state_dict().items()}
    opt_params = {id(p) for g in off.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in off.adaptation.adversary.parameters())
    for tr in (plain, off, on):
        tr.run()
    net = {k: v for k, v in plain.model.state_dict().items() if "running" not in k and "batches" not in k}
    for k, v in net.items():  # lambda_adv = 0: the discriminator loss leaves the network alone
        torch.testing.assert_close(off.model.state_dict()[k], v, rtol=0, atol=0)
    assert any(not torch.equal(on.model.state_dict()[k], v) for k, v in net.items())
    moved = [k for k, v in off.adaptation.adversary.state_dict().items() if not torch.equal(v, disc0[k])]
    assert len(moved) == len(disc0)  # every discriminator weight took the step


@pytest.mark.parametrize("adapt,model,target,msg", [
    ({"method": "dann"}, {}, True, "adapt.method: invalid value 'dann'"),
    ({"method": "stl_uda"}, {}, True, "adapt.method: 'stl_uda' is for models with exactly 1 task"),
    ({"method": "mtl_uda"}, {"tasks": ["depth"]}, True,
     "adapt.method: 'mtl_uda' is for models with at least 2"),
    ({"stages": ["warmup"]}, {}, True, "adapt.stages: invalid value ['warmup']"),
    ({"lambda_adv": -1.0}, {}, True, "adapt.lambda_adv: invalid value -1.0"),
    ({"lr": 1.0}, {}, True, "adapt.lr: unknown field"),
    ({}, {}, False, "data.target: missing"),
    ({"method": "stl_uda"}, {"tasks": ["depth"]}, True, None),
])
def test_bad_adapt_config_names_the_field_exit_2(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  adapt: dict, model: dict, target: bool,
                                                  msg: str | None) -> None:
    cfg = _cfg(data, tmp_path / "run", STAGES[:1], model_override=model)
    cfg["adapt"] = {"stages": ["slow"], **adapt}
    if not target:
        del cfg["data"]["target"]
    if msg is None:  # the same file with a good field loads: the failures above are the fields
        assert TrainConfig.from_dict(cfg).adapt.method == "stl_uda"
        return
    with pytest.raises(ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_dict(json.loads(json.dumps(cfg)))
    assert _cli(cfg, tmp_path / "c.yaml", "--halt-at-step", "0") == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
