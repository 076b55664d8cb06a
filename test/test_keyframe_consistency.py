"""``adapt.method: keyframe_consistency`` (training/adapt/keyframe_consistency.py, issue 16): the
loss is zero for a student equal to its teacher and has the hand-computed value on a small
example; the teacher gets no gradient and leaves the BN statistics alone; the shift perturbation
moves content by exactly (dy, dx) and the perturbation term compares the shifted student with the
teacher on the same content; in the fast stage the perturbation student runs through the fast
stage's own decoders; config errors name the field (exit 2); two adapted steps run through
``mtl-train`` and log the terms."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_resume_exact import Clips  # tiny labelled clips
from test_train_datasets import _synthetic, _video
from torch.utils.data import default_collate

from mtl_perception.model import build_model
from mtl_perception.model.config import ConfigError, ModelConfig
from training.adapt.keyframe_consistency import (
    ConsistencyConfig,
    KeyframeConsistency,
    consistency_loss,
    perturb,
    shift_slices,
    teacher_outputs,
)
from training.config import TrainConfig
from training.train import main as train_main
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
W = {"semantic": 1.0, "depth": 0.1, "normals": 1.0}


def _outputs(seed: int, b: int = 2, h: int = 4, w: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    return {"semantic": torch.randn(b, 8, h, w, generator=g),
            "depth": 1 + 9 * torch.rand(b, 1, h, w, generator=g), "normals": n}


def test_zero_when_student_equals_teacher() -> None:
    t = _outputs(0)
    total, parts = consistency_loss({k: v.clone() for k, v in t.items()}, t, W)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    assert all(float(v) == pytest.approx(0.0, abs=1e-6) for v in parts.values())
    # and not zero for another student (the property is not vacuous)
    assert float(consistency_loss(_outputs(1), t, W)[0]) > 0.1


def test_hand_computed_value() -> None:
    # semantic, 2 classes, 2 pixels: teacher logits (ln 3, 0) -> P_t = (3/4, 1/4), student (0, 0) ->
    # P_s = (1/2, 1/2); the second pixel agrees. depth: |1 - 2| and |2 - 4|. normals equal.
    s = {"semantic": torch.tensor([[[[0.0, 0.0]], [[0.0, 5.0]]]]), "depth": torch.tensor([[[[1.0, 2.0]]]])}
    t = {"semantic": torch.tensor([[[[math.log(3), 0.0]], [[0.0, 5.0]]]]),
         "depth": torch.tensor([[[[2.0, 4.0]]]])}
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(P_t || P_s), pixel 1
    total, parts = consistency_loss(s, t, {"semantic": 1.0, "depth": 0.1})
    assert float(parts["semantic"]) == pytest.approx(kl / 2, rel=1e-5)
    assert float(parts["depth"]) == pytest.approx(1.5, rel=1e-6)
    assert float(total) == pytest.approx(kl / 2 + 0.15, rel=1e-5)


def test_teacher_gets_no_gradient() -> None:
    s = {k: v.requires_grad_() for k, v in _outputs(1).items()}
    t = {k: v.requires_grad_() for k, v in _outputs(0).items()}
    consistency_loss(s, t, W)[0].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())
    assert all(v.grad is None for v in t.values())


def _tiny() -> torch.nn.Module:
    cfg = ModelConfig.from_yaml(ROOT / "config/model/tiny.yaml")
    torch.manual_seed(0)
    return build_model(cfg)


def test_teacher_is_the_eval_keyframe_output_and_leaves_the_model_alone() -> None:
    model = _tiny().train()
    model.fast.eval()  # a frozen part: its flag must survive the teacher call
    h, w = model.cfg.input_size
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(3))
    bn = {k: v.clone() for k, v in model.state_dict().items()}
    out = teacher_outputs(model, x)
    assert all(v.grad_fn is None and not v.requires_grad for v in out.values())
    assert model.training and not model.fast.training
    assert all(torch.equal(bn[k], v) for k, v in model.state_dict().items())  # running stats untouched
    with torch.no_grad():
        ref = model.eval().step(x, None, True)[0]
    assert torch.equal(out["semantic"], ref["semantic"]) and torch.equal(out["depth"], ref["depth"])


def test_keyframe_student_gets_no_kd_and_a_propagated_one_does() -> None:
    model = _tiny().train()
    h, w = model.cfg.input_size
    clip = torch.rand(2, 3, 3, h, w, generator=torch.Generator().manual_seed(4))
    method = KeyframeConsistency({"semantic": 8, "depth": 1, "normals": 3}).eval()
    method.cfg.perturb = 0.0
    teacher = teacher_outputs(model, clip[:, -1])
    same = method({}, {**teacher, "is_keyframe": torch.tensor(False)}, model=model, clip=clip, stage="joint")
    assert float(same["consistency"]) == pytest.approx(0.0, abs=1e-6)
    other = {**_outputs(5, 2, h, w), "is_keyframe": torch.tensor(False)}
    kd = consistency_loss(other, teacher, method.weights)[0]
    got = method({}, other, model=model, clip=clip, stage="joint")["consistency"]
    assert float(got) == pytest.approx(float(kd))
    other["is_keyframe"] = torch.tensor(True)
    assert float(method({}, other, model=model, clip=clip, stage="joint")["consistency"]) == 0.0


@pytest.mark.parametrize("dy,dx", [(0, 0), (2, -3), (-1, 4)])
def test_shift_moves_content_by_dy_dx(dy: int, dx: int) -> None:
    x = torch.rand(1, 3, 8, 10, generator=torch.Generator().manual_seed(6))
    one = torch.ones(1)
    y = perturb(x, dy, dx, one, one)
    dst, src = shift_slices(8, 10, dy, dx)
    assert torch.equal(y[..., dst[0], dst[1]], x[..., src[0], src[1]])
    # photometric part: brightness 0.5 halves a constant image (contrast leaves it alone)
    flat = torch.full((1, 3, 8, 10), 0.6)
    assert torch.allclose(perturb(flat, 0, 0, torch.tensor([0.5]), torch.tensor([1.7])), flat * 0.5)


def test_photometric_jitter_is_per_sample_around_the_mean_and_clamped() -> None:
    # sample 0: pixels 0.3 / 0.7 (mean 0.5), contrast 3 -> -0.1 / 1.1, clamped to 0 / 1;
    # sample 1: contrast 2 -> 0.1 / 0.9, then brightness 1.5 -> 0.15 / 1.35 -> 0.15 / 1
    x = torch.tensor([0.3, 0.7]).repeat(2, 3, 2, 1)  # (2, 3, 2, 2): each row 0.3, 0.7
    y = perturb(x, 0, 0, torch.tensor([1.0, 1.5]), torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(y[0], torch.tensor([0.0, 1.0]).repeat(3, 2, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(y[1], torch.tensor([0.15, 1.0]).repeat(3, 2, 1), rtol=0, atol=1e-6)


def test_task_weights_come_from_the_config() -> None:
    cfg = ConsistencyConfig(semantic=0.0, depth=0.3, normals=2.0)
    # a zero weight drops the task; a task the model lacks is skipped
    assert KeyframeConsistency({"semantic": 8, "depth": 1}, cfg).weights == {"depth": 0.3}
    a = TrainConfig.from_dict({"model": "config/model/tiny.yaml", "stages": [{"name": "joint"}],
                               "data": {"target": {"type": "synthetic", "root": "x"}},
                               "adapt": {"method": "keyframe_consistency",
                                         "consistency": {"depth": 0.3, "normals": 2.0}}}).adapt
    m = KeyframeConsistency.from_config({"semantic": 8, "depth": 1, "normals": 3}, (), a)
    assert m.weights == {"semantic": 1.0, "depth": 0.3, "normals": 2.0}


class _Identity(torch.nn.Module):
    """A model whose single-frame outputs are the image itself: depth = its red channel."""

    def step(self, x: torch.Tensor, state: Any, keyframe: bool) -> tuple[dict[str, torch.Tensor], None]:
        return {"depth": x[:, :1].clone()}, None

    def fast_only(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], None]:
        return self.step(x, None, True)


@pytest.mark.parametrize("stage", ["slow", "fast"])
def test_perturb_compares_the_shifted_student_with_the_teacher_on_the_same_content(stage: str) -> None:
    image = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(7))
    method = KeyframeConsistency({"depth": 1}, ConsistencyConfig(kd=0.0, perturb=1.0, jitter=0.0))
    one = torch.ones(2)
    method.draw = lambda b, generator=None: (3, -2, one, one)  # type: ignore[method-assign]
    # clip (B, T, 3, H, W) of one frame; kd is off, so ``target`` is not compared
    out = method({}, {"depth": image[:, :1]}, model=_Identity(), clip=image[:, None], stage=stage)
    # student(image shifted by (3, -2))[dst] is image[src], which is the teacher's [src]
    assert float(out["perturb"]) == 0.0 and float(out["consistency"]) == 0.0
    # the swapped crops compare different pixels: the pairing is what makes it zero
    dst, src = shift_slices(8, 10, 3, -2)
    shifted = perturb(image, 3, -2, one, one)[:, :1]
    swapped = consistency_loss({"depth": shifted[..., src[0], src[1]]},
                               {"depth": image[:, :1, dst[0], dst[1]]}, method.weights)[0]
    assert float(swapped) > 0.01


def test_fast_stage_perturb_student_uses_the_fast_stage_decoders(tmp_path: Path) -> None:
    _video(tmp_path / "v.mp4", 8)
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({
        "model": str(ROOT / "config/model/tiny.yaml"), "out": str(tmp_path / "out"), "seed": 1,
        "batch_size": 2, "optim": {"lr": 1e-3}, "align": {"disc_hidden": 8},
        "data": {"clip_len": 3, "target": {"type": "video", "paths": [str(tmp_path / "v.mp4")]}},
        "adapt": {"method": "keyframe_consistency", "stages": ["fast"]}, "val_offsets": "last",
        "stages": [{"name": "fast", "epochs": 1, "steps_per_epoch": 1, "own_decoders": True,
                    "align": False}]})
    t = Trainer(cfg, progress=False, train_data=Clips(4), val_data=Clips(1, seed=9))
    assert t.fast_decoders is not None and t.adaptation is not None
    model, method = t.model, t.adaptation.adversary
    t._set_train_mode()
    b, c = torch.tensor([0.9, 1.1]), torch.tensor([1.05, 0.95])
    method.draw = lambda n, generator=None: (3, -2, b, c)  # type: ignore[method-assign]
    seen: dict[str, Any] = {}
    forward = method.forward

    def spy(*args: Any, **kw: Any) -> dict[str, torch.Tensor]:
        seen.update(kw)
        return forward(*args, **kw)

    method.forward = spy  # type: ignore[method-assign]
    batch = default_collate([Clips(4)[i] for i in range(2)])
    batch["target"] = torch.rand(2, 3, 3, *model.cfg.input_size, generator=torch.Generator().manual_seed(8))
    losses = t.compute_losses(batch)
    # reference: the fast-only path through the fast stage's own decoders (train mode: batch statistics)
    image = batch["target"][:, -1]
    x = perturb(image, 3, -2, b, c)
    shared = model.decoders
    model.decoders = t.fast_decoders
    try:
        with torch.no_grad():
            ref = model.fast_only(x)[0]
    finally:
        model.decoders = shared
    with torch.no_grad():
        main = model.fast_only(x)[0]  # the shared decoders: what the perturbation term used to get
    assert not torch.allclose(main["depth"], ref["depth"], atol=1e-3)  # so the check below can fail
    dst, src = shift_slices(*image.shape[-2:], 3, -2)
    teacher = teacher_outputs(model, image)
    want = consistency_loss({k: v[..., dst[0], dst[1]] for k, v in ref.items()},
                            {k: v[..., src[0], src[1]] for k, v in teacher.items()}, method.weights)[0]
    assert float(losses["perturb"]) == pytest.approx(float(want), rel=1e-5)
    with torch.no_grad():  # the student the trainer handed over is that path
        got = seen["student"](x)
    for k in method.weights:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


def _cfg(data: Path, out: Path, consistency: dict[str, Any] | None = None) -> dict[str, Any]:
    syn = {"type": "synthetic", "root": str(data / "syn")}
    adapt = {"method": "keyframe_consistency", "stages": ["joint"], "consistency": consistency or {}}
    return {"model": str(ROOT / "config/model/tiny.yaml"), "out": str(out), "seed": 1, "threads": 1,
            "batch_size": 2, "ckpt_every": 10, "optim": {"lr": 1e-3}, "align": {"disc_hidden": 8},
            "data": {"train": syn, "val": syn, "target": {"type": "video", "paths": [str(data / "v.mp4")]},
                     "clip_len": 3, "val_max_clips": 1},
            "adapt": adapt, "val_offsets": "last",
            "stages": [{"name": "slow", "epochs": 1, "steps_per_epoch": 1},
                       {"name": "joint", "epochs": 1, "steps_per_epoch": 3, "keyframe_interval": 3}]}


@pytest.mark.parametrize("field,value,msg", [
    ("kd", -1.0, "adapt.consistency.kd: invalid value -1.0"),
    ("jitter", 1.5, "adapt.consistency.jitter: invalid value 1.5"),
    ("shift", -2, "adapt.consistency.shift: invalid value -2"),
    ("bogus", 1, "adapt.consistency.bogus: unknown field"),
])
def test_config_error_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str,
                                      value: Any, msg: str) -> None:
    cfg = _cfg(tmp_path, tmp_path / "out", {field: value})
    with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
        TrainConfig.from_dict(cfg)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and "Traceback" not in err[0]


def test_both_terms_off_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^adapt\.consistency\.kd: invalid value 0\.0"):
        ConsistencyConfig(kd=0.0, perturb=0.0).validate("adapt.consistency")
    ConsistencyConfig(kd=0.0, perturb=0.5).validate("adapt.consistency")  # one term is enough


def test_mtl_train_logs_the_terms(tmp_path: Path) -> None:
    _synthetic(tmp_path / "syn", clips=2, frames=4)
    _video(tmp_path / "v.mp4", 8)
    out = tmp_path / "run"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(tmp_path, out)))
    assert train_main(["--config", str(tmp_path / "c.yaml"), "--no-progress"]) == 0
    steps = [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines()]
    joint = [s for s in steps if s.get("stage") == "joint" or "consistency" in s]
    assert len(joint) == 3 and "consistency" not in steps[0]
    for s in joint:
        assert s["consistency"] == pytest.approx(s["kd"] + 0.5 * s["perturb"], rel=1e-5)
        assert s["perturb"] > 0
    # random keyframe offsets over 3 steps of K = 3: at least one propagated last frame has kd > 0
    assert any(s["kd"] > 0 for s in joint)
