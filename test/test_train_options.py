"""Trainer options on the tiny model: epoch-based per-stage schedules (resumed exactly), bf16
autocast and the fp16 grad-scaler logic, the paper recipe's own fast decoders, and what
``mtl-train --resume`` does with a corrupt, missing or unwritable checkpoint (real CLI entry)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_train import BandClips, _cfg, _steps

from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, stages: list[dict[str, Any]], resume: bool = False, halt: int | None = None,
         **kw: Any) -> Trainer:
    torch.set_num_threads(2)
    t = Trainer(_cfg(out, stages, **kw), resume=resume, halt_at_step=halt, progress=False,
                train_data=BandClips(8, augment=True), val_data=BandClips(1, seed=9))
    t.run()
    return t


def test_step_schedule_is_per_stage_epoch_based_and_resumes_exactly(tmp_path: Path) -> None:
    # x0.5 every epoch (2 steps) in the slow stage; the joint stage restarts at its own lr.
    stages = [{"name": "slow", "epochs": 3, "steps_per_epoch": 2,
               "schedule": {"name": "step", "every": 1, "unit": "epoch", "gamma": 0.5}},
              {"name": "joint", "epochs": 1, "steps_per_epoch": 1, "keyframe_interval": 3, "lr": 4e-3}]
    full = tmp_path / "full"
    _run(full, stages)
    lrs = [r["lr"] for r in _steps(full)]
    # the lr step s trained with: halved after every 2-step epoch of the stage
    expect = [2e-3 * 0.5 ** ((s - 1) // 2) for s in range(1, 7)] + [4e-3]
    assert lrs == pytest.approx(expect, rel=1e-9)
    cut = tmp_path / "cut"
    _run(cut, stages, halt=3)  # killed mid-epoch 2: the last checkpoint is the end of epoch 1
    _run(cut, stages, resume=True)
    got = _steps(cut)
    assert [r["lr"] for r in got] == pytest.approx(expect, rel=1e-9)
    assert [r["total"] for r in got] == pytest.approx([r["total"] for r in _steps(full)], rel=1e-5)


def test_bf16_autocast_runs_the_network_in_bf16_and_trains(tmp_path: Path) -> None:
    stages = [{"name": "slow", "epochs": 1, "steps_per_epoch": 4}]
    seen: list[torch.dtype] = []
    torch.set_num_threads(2)
    t = Trainer(_cfg(tmp_path / "bf16", stages, amp="bf16"), progress=False,
                train_data=BandClips(8), val_data=BandClips(1, seed=9))
    conv = next(m for m in t.model.slow.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    t.run()
    assert seen and all(d == torch.bfloat16 for d in seen[:4])  # 4 training steps in bf16
    fp32 = _run(tmp_path / "fp32", stages)
    a, b = _steps(tmp_path / "fp32"), _steps(tmp_path / "bf16")
    assert b[0]["total"] != a[0]["total"]  # really another precision...
    assert b[0]["total"] == pytest.approx(a[0]["total"], rel=2e-2)  # ...of the same computation
    assert all(torch.isfinite(p).all() for p in fp32.model.parameters())


def test_fp16_grad_scaler_skips_overflowing_steps_and_round_trips() -> None:
    """The fp16 path's scaler logic on CPU (torch.amp.GradScaler('cpu')): an inf gradient skips the
    step and halves the scale; a finite one steps with the unscaled gradient."""
    from training.amp import Precision

    p = Precision("fp16", torch.device("cpu"))
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    s0 = p.scaler.get_scale()
    assert p.step((w * torch.tensor([float("inf"), 1.0])).sum(), opt) is False
    assert torch.equal(w.detach(), torch.tensor([1.0, 2.0])) and p.scaler.get_scale() == s0 / 2
    opt.zero_grad()
    assert p.step((w * torch.tensor([3.0, 1.0])).sum(), opt, grad_clip=100.0) is True
    assert torch.allclose(w.detach(), torch.tensor([1.0 - 0.3, 2.0 - 0.1]))
    q = Precision("fp16", torch.device("cpu"))
    q.load_state_dict(p.state_dict())
    assert q.scaler.get_scale() == s0 / 2
    assert Precision("off", torch.device("cpu")).state_dict() == {}


def test_amp_fp16_on_cpu_is_refused_by_name(tmp_path: Path) -> None:
    from mtl_perception.model import ConfigError

    with pytest.raises(ConfigError, match="amp"):
        _cfg(tmp_path, [{"name": "slow"}], amp="fp16")


def test_paper_recipe_trains_own_fast_decoders_and_leaves_the_shared_ones(tmp_path: Path) -> None:
    stages = [{"name": "slow", "epochs": 1, "steps_per_epoch": 2},
              {"name": "fast", "epochs": 1, "steps_per_epoch": 4, "own_decoders": True, "align": False}]
    out = tmp_path / "paper"
    _run(out, stages, halt=5)  # killed mid fast stage; its own decoders are in last.pt (step 4)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["progress"]["step"] == 4 and ckpt["fast_decoders"]
    t = _run(out, stages, resume=True)
    after_slow = torch.load(out / "stage_slow.pt", weights_only=True)["state_dict"]
    for k, v in t.model.state_dict().items():
        if k.startswith("decoders."):  # the shared decoders did not train in the fast stage
            assert torch.equal(v, after_slow[k]), k
    assert any(not torch.equal(v, after_slow[k]) for k, v in t.model.state_dict().items()
               if k.startswith("fast.") and v.is_floating_point())
    ref = tmp_path / "ref"
    _run(ref, stages)
    assert [r["total"] for r in _steps(out)] == pytest.approx([r["total"] for r in _steps(ref)], rel=1e-5)
    from mtl_perception.model import load_model

    model, _ = load_model(out / "stage_fast.pt")  # model-only: the extra decoders are not in it
    assert set(model.state_dict()) == set(t.model.state_dict())


# -- mtl-train --resume through the CLI entry point -------------------------------------------------
@pytest.fixture(scope="module")
def cli_cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.data.cli import main as data_main

    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "data"
    rc = data_main(["generate", "--clips", "4", "--frames", "6", "--size", "64x128", "--out", str(data)])
    assert rc == 0
    cfg = yaml.safe_load((ROOT / "config/train/tiny.yaml").read_text())
    cfg.update(model=str(ROOT / "config/model/tiny.yaml"), threads=2, batch_size=2, ckpt_every=2,
               data={**cfg["data"], "train": str(data), "val": str(data), "val_max_clips": 1},
               stages=[{"name": "slow", "epochs": 1, "steps_per_epoch": 5}], val_offsets="last")
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(cfg: Path, out: Path, *extra: str) -> int:
    from training.train import main

    return main(["--config", str(cfg), "--out", str(out), "--no-progress", *extra])


def test_resume_with_a_corrupt_last_checkpoint_falls_back_and_says_so(
        cli_cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = tmp_path / "ref"
    assert _train(cli_cfg, ref) == 0
    out = tmp_path / "run"
    assert _train(cli_cfg, out, "--halt-at-step", "5") == 0  # checkpoints at 2 and 4 (prev = 2)
    (out / "last.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert _train(cli_cfg, out, "--resume") == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mtl-train:")]
    assert len(err) == 1 and "last.pt" in err[0] and "resuming from last.prev.pt (step 2)" in err[0], err
    assert [r["total"] for r in _steps(out)] == pytest.approx([r["total"] for r in _steps(ref)], rel=1e-5)


def test_resume_without_any_readable_checkpoint_fails_with_one_line(
        cli_cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"garbage")
    (out / "steps.jsonl").write_text('{"step": 1, "stage": "slow", "total": 1.0}\n')
    assert _train(cli_cfg, out, "--resume") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtl-train: --resume: no readable checkpoint"), err
    assert (out / "steps.jsonl").read_text().startswith('{"step": 1')  # untouched


def test_resume_with_no_checkpoint_keeps_the_step_log(
        cli_cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    old = '{"step": 1, "stage": "slow", "total": 1.0}\n'
    (out / "steps.jsonl").write_text(old)
    assert _train(cli_cfg, out, "--resume") == 0
    assert (out / "steps.jsonl.0.bak").read_text() == old
    assert "starting from step 0" in capsys.readouterr().err
    assert [r["step"] for r in _steps(out)] == [1, 2, 3, 4, 5]


def test_disk_full_says_no_space_left(cli_cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import training.checkpointing as ckio

    def full(obj: Any, path: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckio, "save_atomic", full)
    assert _train(cli_cfg, tmp_path / "run") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device" in err[0] and "last.pt" in err[0], err
    assert json.loads((tmp_path / "run/steps.jsonl").read_text().splitlines()[-1])["step"] == 2
