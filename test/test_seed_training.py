"""The seed decoders under ``mtl-train`` (issue 13): ASTMT's task-gradient adversary wired into the
trainer (value of the reversed gradient at the shared layers, its discriminator trained and
checkpointed), MTI-Net through every stage (the fast stage uses the fast trunk's pyramid), and the
cross-task joint module trained as part of the decoders.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_train import BandClips, _cfg, _steps

from training.losses import task_losses
from training.trainer import Trainer


def _trainer(tmp: Path, model: str, stages: list[dict[str, Any]], **kw: Any) -> Trainer:
    torch.set_num_threads(2)
    cfg = _cfg(tmp, stages, model=model, data={"clip_len": 6, "val_max_clips": 1}, **kw)
    return Trainer(cfg, progress=False, train_data=BandClips(4), val_data=BandClips(1, seed=9))


def _copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items() if k in before)


# -- ASTMT: adversarial task-gradient disentanglement in mtl-train -------------------------------
def test_task_adversary_on_by_default_for_astmt_only() -> None:
    from mtl_perception.model.config import ConfigError
    from training.config import TrainConfig
    from training.task_adversarial import build_task_adversary

    tasks = ("semantic", "depth", "normals")
    default = TrainConfig().task_adversarial
    assert build_task_adversary(default, "astmt", 32, tasks) is not None  # the paper's ASTMT
    assert build_task_adversary(default, "se_conv", 32, tasks) is None
    assert build_task_adversary(default, "astmt", 32, ("semantic",)) is None  # nothing to tell apart
    off = TrainConfig.from_dict({"task_adversarial": {"enabled": False}}).task_adversarial
    assert build_task_adversary(off, "astmt", 32, tasks) is None
    on = TrainConfig.from_dict({"task_adversarial": {"enabled": True}}).task_adversarial
    assert build_task_adversary(on, "densemtl", 32, tasks) is not None
    with pytest.raises(ConfigError, match="task_adversarial.scale"):
        TrainConfig.from_dict({"task_adversarial": {"scale": 2.0}})


def test_task_adversary_reverses_the_discriminator_gradient_into_the_shared_layers(tmp_path: Path) -> None:
    """The trainer's ``task_adv`` term gives the shared layers exactly ``-scale`` times the gradient
    the same cross-entropy (written out here, no reversal) gives them, and the discriminator its
    plain gradient."""
    scale = 0.4
    slow = [{"name": "slow", "epochs": 1, "steps_per_epoch": 1}]
    tr = _trainer(tmp_path, "config/model/astmt_tiny.yaml", slow, task_adversarial={"scale": scale})
    tr._set_train_mode()
    batch = next(iter(tr._loader(tr.stage)))
    model, disc = tr.model, tr.task_adv.disc
    params = {"encoder": next(model.slow.parameters()),
              "shared decoder layer": model.joint.layers[0].weight,
              "discriminator": disc.net[0].weight}
    got = torch.autograd.grad(tr.compute_losses(batch)["task_adv"], list(params.values()))

    # reference: the tasks' gradients at the encoder output, normalised, classified; no reversal
    out = model.step(batch["images"][:, -1], None, True, return_features=True)[0]
    targets = {t: batch[t] for t in tr.tasks}
    losses = task_losses(out, targets, tr.tasks, tr.cfg.loss.depth)
    terms = []
    for label, t in enumerate(tr.tasks):
        (g,) = torch.autograd.grad(losses[t], out["features"], create_graph=True)
        g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        terms.append(F.cross_entropy(disc(g), torch.full((g.shape[0],), label)))
    ref = torch.autograd.grad(torch.stack(terms).mean(), list(params.values()))
    for (name, _), a, r in zip(params.items(), got, ref):
        assert r.abs().max() > 0, name
        expected = r if name == "discriminator" else -scale * r
        torch.testing.assert_close(a, expected, rtol=1e-4, atol=1e-7, msg=name)


def test_astmt_trains_with_the_task_adversary_and_checkpoints_it(tmp_path: Path) -> None:
    stages = [{"name": "slow", "epochs": 1, "steps_per_epoch": 2},
              {"name": "joint", "epochs": 1, "steps_per_epoch": 1, "keyframe_interval": 2}]
    tr = _trainer(tmp_path, "config/model/astmt_tiny.yaml", stages)
    assert tr.task_adv is not None
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_ids for p in tr.task_adv.parameters())
    step_module = tr.step_module.module if hasattr(tr.step_module, "module") else tr.step_module
    assert step_module.task_adv is tr.task_adv  # DDP averages its gradients with the model's
    disc0, joint0 = _copy(tr.task_adv), _copy(tr.model.joint)
    tr.run()
    recs = _steps(tmp_path)
    assert [r["stage"] for r in recs] == ["slow", "slow", "joint"]
    assert all(0 < r["task_adv"] < 10 for r in recs)
    # a fresh discriminator over T = 3 tasks starts near uniform: its cross-entropy is about ln 3
    assert recs[0]["task_adv"] == pytest.approx(math.log(3), abs=0.3)
    assert _changed(disc0, tr.task_adv), "the discriminator did not train"
    assert _changed(joint0, tr.model.joint), "ASTMT's shared decoder layers did not train"
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    for k, v in tr.task_adv.state_dict().items():
        assert torch.equal(ckpt["task_adversary"][k], v)
    resumed = Trainer(tr.cfg, resume=True, progress=False, train_data=BandClips(4),
                      val_data=BandClips(1, seed=9))
    for k, v in tr.task_adv.state_dict().items():
        assert torch.equal(resumed.task_adv.state_dict()[k], v)


# -- MTI-Net through every stage -----------------------------------------------------------------
def test_mti_net_fast_only_uses_the_fast_trunks_pyramid() -> None:
    """A fast-only frame of model A must equal a keyframe with no past of model B, a copy of A whose
    slow trunk and slow pyramid adapters are A's fast ones: the fast path takes the fast encoder's
    pyramid and adapters (not the slow ones, and not no pyramid)."""
    import copy

    from mtl_perception.model import ModelConfig, build_model

    cfg = ModelConfig.from_yaml("config/model/mti_net_tiny.yaml").to_dict()
    cfg["slow"] = dict(cfg["fast"])  # the same trunk architecture, different weights
    torch.manual_seed(0)
    a = build_model(ModelConfig.from_dict(cfg)).eval()
    b = copy.deepcopy(a)
    b.slow.load_state_dict(a.fast.state_dict())
    b.joint.adapt["slow"].load_state_dict(a.joint.adapt["fast"].state_dict())
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        fast, feats = a.fast_only(x)
        key = b.step(x, None, True, return_features=True)[0]
        slow_a = a.step(x, None, True)[0]
    assert not torch.allclose(fast["semantic"], slow_a["semantic"])  # A's two paths do differ
    torch.testing.assert_close(feats, key["features"], rtol=0, atol=0)
    for t in a.tasks:
        torch.testing.assert_close(fast[t], key[t], rtol=0, atol=0)


def test_mti_net_trains_through_all_stages(tmp_path: Path) -> None:
    stages = [{"name": "slow", "epochs": 1, "steps_per_epoch": 1},
              {"name": "fast", "epochs": 1, "steps_per_epoch": 2},
              {"name": "joint", "epochs": 1, "steps_per_epoch": 1, "keyframe_interval": 2}]
    tr = _trainer(tmp_path, "config/model/mti_net_tiny.yaml", stages)
    joint = tr.model.joint
    parts = {"distill": joint.distill, "fpm": joint.fpm, "adapt.slow": joint.adapt["slow"],
             "adapt.fast": joint.adapt["fast"], "fast": tr.model.fast}
    before = {n: _copy(m) for n, m in parts.items()}
    tr.halt_at_step = 1
    tr.run()  # the slow stage: the cross-task part trains with the decoders, the fast side does not
    assert _changed(before["distill"], joint.distill) and _changed(before["fpm"], joint.fpm)
    assert _changed(before["adapt.slow"], joint.adapt["slow"])
    assert not _changed(before["adapt.fast"], joint.adapt["fast"])
    distill, slow_adapt = _copy(joint.distill), _copy(joint.adapt["slow"])
    tr.halt_at_step = 3
    tr.run()  # the fast stage: the fast encoder and the adapters of its pyramid, nothing shared
    assert tr.stage.name == "fast"
    assert _changed(before["fast"], tr.model.fast)
    assert _changed(before["adapt.fast"], joint.adapt["fast"])
    assert not _changed(distill, joint.distill) and not _changed(slow_adapt, joint.adapt["slow"])
    tr.halt_at_step = None
    tr.run()
    recs = _steps(tmp_path)
    assert [r["stage"] for r in recs] == ["slow", "fast", "fast", "joint"]
    assert all("aux_semantic" in r for r in recs)
    assert _changed(distill, joint.distill)  # the joint stage trains everything again
    rows = [r for r in tr.history if r["stage"] == "fast"]
    assert rows and rows[0]["val_miou"] == rows[0]["val_miou"]  # fast-only validation ran (not NaN)


@pytest.mark.parametrize("variant", ["tiny", "densemtl_tiny", "mti_net_tiny", "astmt_tiny"])
def test_every_parameter_belongs_to_exactly_one_part(variant: str) -> None:
    """Else a stage could never train it (the joint module before training/parts.py) or two parts
    would claim it."""
    from mtl_perception.model import ModelConfig, build_model
    from training.parts import model_parts

    model = build_model(ModelConfig.from_yaml(f"config/model/{variant}.yaml"))
    claimed = [id(p) for part in model_parts(model).values() if part is not None for p in part.parameters()]
    assert sorted(claimed) == sorted(id(p) for p in model.parameters())
