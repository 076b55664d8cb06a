"""Losses, task weighting and the gradient-reversal alignment against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl_perception.model import ModelConfig, build_model
from training.adversarial import FeatureDiscriminator, alignment_losses, grad_reverse
from training.losses import depth_loss, normals_loss, semantic_loss
from training.weighting import DWAWeighting, UncertaintyWeighting, build_weighting


def test_semantic_ignores_255() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert semantic_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # nothing labelled: an exact zero that still back-propagates
    z = semantic_loss(logits.requires_grad_(), torch.full((1, 1, 2), 255))
    z.backward()
    assert z.item() == 0.0


def test_depth_l1_and_berhu() -> None:
    pred = torch.tensor([[[[1.0, 2.0, 10.0, 7.0]]]])
    gt = torch.tensor([[[[1.5, 2.0, 0.0, 2.0]]]])  # third pixel invalid
    assert depth_loss(pred, gt, "l1").item() == pytest.approx((0.5 + 0 + 5) / 3)
    c = 0.2 * 5.0  # 0.2 * max error
    berhu = (0.5 + 0 + (25 + c * c) / (2 * c)) / 3
    assert depth_loss(pred, gt, "berhu").item() == pytest.approx(berhu)
    with pytest.raises(ValueError, match="depth loss"):
        depth_loss(pred, gt, "l2")


def test_normals_one_minus_cosine() -> None:
    n = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)
    pred = torch.cat([n, -n, n], dim=3)
    gt = torch.cat([n, n, torch.zeros_like(n)], dim=3)  # last pixel invalid
    assert normals_loss(pred, gt).item() == pytest.approx((0 + 2) / 2)


def test_weighting_strategies() -> None:
    losses = {"semantic": torch.tensor(2.0), "depth": torch.tensor(4.0)}
    assert build_weighting("equal", ("semantic", "depth"))(losses).item() == pytest.approx(6.0)
    u = UncertaintyWeighting(("semantic", "depth"))
    with torch.no_grad():
        u.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    assert u(losses).item() == pytest.approx(2.0 + 4.0 / 2 + math.log(2.0))
    d = DWAWeighting(("semantic", "depth"), temperature=2.0)
    assert d.weights() == {"semantic": 1.0, "depth": 1.0}
    d.end_epoch({"semantic": 2.0, "depth": 4.0})
    d.end_epoch({"semantic": 1.0, "depth": 4.0})  # semantic halves, depth stalls -> depth up-weighted
    e1, e2 = math.exp(0.5 / 2), math.exp(1.0 / 2)
    w = d.weights()
    assert w["semantic"] == pytest.approx(2 * e1 / (e1 + e2))
    assert w["depth"] == pytest.approx(2 * e2 / (e1 + e2))
    d2 = DWAWeighting(("semantic", "depth"))
    d2.load_extra_state(d.extra_state())
    assert d2.weights() == w
    with pytest.raises(ValueError, match="weighting"):
        build_weighting("gradnorm", ("semantic",))


def test_grad_reverse_identity_forward_negated_backward() -> None:
    x = torch.randn(3, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -0.5))


def test_gradient_reversal_flips_fast_encoder_gradient() -> None:
    """The adversarial term's gradient reaching the fast encoder is the negative of the
    discriminator loss's gradient (the encoder ascends it), while D itself descends it."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_yaml("config/model/tiny.yaml")
    model = build_model(cfg).eval()
    disc = FeatureDiscriminator(cfg.feature_channels, hidden=8)
    image = torch.rand(2, 3, 64, 128)
    slow = model.encode(image, slow=True).detach()

    def grads(reverse: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model.zero_grad()
        disc.zero_grad()
        fast = model.encode(image, slow=False)
        if reverse:
            loss = alignment_losses(slow, fast, disc, use_l1=False, use_adversarial=True)["adv"]
        else:  # the same BCE without the reversal layer
            real, fake = disc.logits(slow), disc.logits(fast)
            loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                    + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        loss.backward()
        assert model.fast is not None
        return ([p.grad.clone() for p in model.fast.parameters() if p.grad is not None],
                [p.grad.clone() for p in disc.parameters()])

    enc_rev, disc_rev = grads(True)
    enc_plain, disc_plain = grads(False)
    assert enc_rev and any(g.abs().sum() > 0 for g in enc_rev)
    for a, b in zip(enc_rev, enc_plain):
        assert torch.allclose(a, -b, atol=1e-7)
    for a, b in zip(disc_rev, disc_plain):
        assert torch.allclose(a, b, atol=1e-7)
    # the slow encoder is the target: no gradient reaches it
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.slow.parameters())


def test_adversarial_gradient_magnitude_matches_hand_computation() -> None:
    """With a linear discriminator ``z = w * mean(x)`` the gradients are known in closed form:
    Eq. 3 with alpha = beta = 1 gives the fast features ``-sigmoid(z_fake) * w / (C*H*W) / B``
    (ascent on log(1 - D(fast))) plus ``sign(fast - slow) / numel`` from the L1 term, and D's
    weight gets the plain BCE gradient ``mean((sigmoid(z_r) - 1) m_r) + mean(sigmoid(z_f) m_f)``."""

    class LinearD(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.7))

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.w * x.mean((1, 2, 3)).unsqueeze(1)

    g = torch.Generator().manual_seed(0)
    B, C, H, W = 3, 4, 5, 6
    slow = torch.randn(B, C, H, W, generator=g)
    fast = torch.randn(B, C, H, W, generator=g).requires_grad_(True)
    disc = LinearD()
    alpha, beta = 1.0, 1.0
    al = alignment_losses(slow, fast, disc, use_l1=True, use_adversarial=True)  # type: ignore[arg-type]
    (alpha * al["l1"] + beta * al["adv"]).backward()
    w = 1.7
    m_r, m_f = slow.mean((1, 2, 3)), fast.detach().mean((1, 2, 3))
    z_r, z_f = w * m_r, w * m_f
    sig = lambda z: 1 / (1 + torch.exp(-z))  # noqa: E731
    expect_fast = (-beta * sig(z_f) * w / (C * H * W) / B).view(B, 1, 1, 1).expand(B, C, H, W) \
        + alpha * torch.sign(fast.detach() - slow) / fast.numel()
    assert torch.allclose(fast.grad, expect_fast, atol=1e-7)
    expect_w = beta * (((sig(z_r) - 1) * m_r).mean() + (sig(z_f) * m_f).mean())
    assert disc.w.grad is not None and torch.allclose(disc.w.grad, expect_w, atol=1e-6)
    # the loss value itself: -log D(slow) - log(1 - D(fast)), batch means
    expect_adv = -(torch.log(sig(z_r)).mean() + torch.log(1 - sig(z_f)).mean())
    assert torch.allclose(al["adv"], expect_adv, atol=1e-6)
