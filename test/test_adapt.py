"""Output-space UDA (DenseMTL Sec. 4.5): the self-information map by hand, and the two sides of
the adversarial game moving the way they should."""

from __future__ import annotations

import math

import pytest
import torch

from training.adapt import ADAPTATION, MultiTaskOutputAdversary, minmax_normalise, self_information


def test_self_information_map_hand_computed() -> None:
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # softmax -> P = (1/4, 3/4)
    got = self_information(logits)[0, :, 0, 0]
    expect = torch.tensor([-0.25 * math.log(0.25), -0.75 * math.log(0.75)])
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    # a confident pixel carries (almost) no self-information
    assert float(self_information(torch.tensor([50.0, 0.0]).view(1, 2, 1, 1)).sum()) < 1e-12


def test_minmax_normalise_uses_the_given_source_range() -> None:
    x = torch.tensor([2.0, 6.0, 10.0]).view(1, 1, 1, 3)
    got = minmax_normalise(x, torch.tensor(2.0).view(1, 1, 1, 1), torch.tensor(6.0).view(1, 1, 1, 1))
    torch.testing.assert_close(got.flatten(), torch.tensor([0.0, 1.0, 2.0]))


def test_discriminator_learns_and_adversary_pulls_target_toward_source() -> None:
    torch.manual_seed(0)
    adv = ADAPTATION.get("mtl_uda")({"depth": 1}, hidden=8, lambda_adv=1.0)
    assert isinstance(adv, MultiTaskOutputAdversary)
    # source depth maps: smooth ramps; target: the network's output, a free tensor starting as noise
    ramp = torch.linspace(1, 20, 16).view(1, 1, 1, 16).expand(4, 1, 16, 16).contiguous()
    target = (5 + 10 * torch.rand(4, 1, 16, 16)).requires_grad_(True)
    opt_d = torch.optim.Adam(adv.parameters(), lr=1e-2)
    d_losses = []
    for _ in range(30):  # discriminator's own updates only
        out = adv({"depth": ramp}, {"depth": target})
        opt_d.zero_grad()
        out["disc"].backward()
        opt_d.step()
        d_losses.append(float(out["disc"].detach()))
    assert d_losses[-1] < 0.5 * d_losses[0], d_losses
    # the adversarial term: gradient only to the target outputs, none to the discriminator
    adv.zero_grad()
    out = adv({"depth": ramp}, {"depth": target})
    out["adv"].backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in adv.parameters())
    # a step against it makes the target look more like the source (the discriminator's source
    # probability of the target rises, i.e. the adversarial loss falls)
    d = adv.discriminators["depth"]
    with torch.no_grad():
        moved = target - 50.0 * target.grad

        def p_source(x: torch.Tensor) -> float:  # D's own verdict, outside the loss code
            lo, hi = ramp.min(), ramp.max()
            return float(torch.sigmoid(d((x - lo) / (hi - lo))).mean())

        assert p_source(moved) > p_source(target)


def test_stl_uda_is_single_task() -> None:
    with pytest.raises(ValueError, match="one single-task model"):
        ADAPTATION.get("stl_uda")({"depth": 1, "normals": 3})
    assert set(ADAPTATION.names()) >= {"mtl_uda", "stl_uda"}


def test_output_channels_and_intermediate_names_per_decoder() -> None:
    """Channels per task (8 classes, depth 1, normals 3); auxiliary outputs to align exist only
    for a cross-task decoder with ``intermediate`` on: DenseMTL's one per task (its docs)."""
    from pathlib import Path

    from mtl_perception.model import ModelConfig, build_model
    from training.adapt.mode import output_channels

    cfg = Path(__file__).resolve().parents[1] / "config" / "model"
    dense = build_model(ModelConfig.from_yaml(cfg / "densemtl_tiny.yaml"))
    plain = build_model(ModelConfig.from_yaml(cfg / "tiny.yaml"))
    want = {"semantic": 8, "depth": 1, "normals": 3}
    assert output_channels(dense, True) == (want, ("aux.semantic", "aux.depth", "aux.normals"))
    assert output_channels(dense, False) == (want, ())
    assert output_channels(plain, True) == (want, ())
