"""ASTMT's adversarial task-gradient disentanglement (Maninis et al., Sec. 4), training side.

Each task's loss has a gradient at the shared features (the shared/task-specific boundary: the
encoder output every task decoder reads). A small fully convolutional discriminator learns to tell
from such a gradient which task produced it; the network receives the discriminator's gradient
reversed and scaled by ``lam`` (:func:`~training.adversarial.grad_reverse`), so it learns to
make the task gradients indistinguishable (no task dominates the shared features). The gradients
are exposed by double back-propagation (``create_graph=True``).

Hook: ``loss = sum(task losses) + w_d * task_gradient_adversarial_loss(features, losses, disc, lam)``
with ``features = outputs["features"]`` from ``step(..., return_features=True)``; one optimiser
step then trains the discriminator (normal gradient) and the network (reversed) together.
``mtl-train`` does this through :class:`TaskAdversary` (config section ``task_adversarial``, on
by default for the ``astmt`` decoder; ``w_d = 0.1`` as in ASTMT's supplementary Eq. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_perception.model.config import ConfigError, require
from training.adversarial import grad_reverse


class TaskGradientDiscriminator(nn.Module):
    """Gradient map (B, C, H, W) -> task logits (B, T): conv3x3, ReLU, conv1x1, global mean."""

    def __init__(self, channels: int, num_tasks: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, num_tasks, 1))

    def forward(self, grad: Tensor) -> Tensor:
        return self.net(grad).mean((2, 3))


def task_gradient_adversarial_loss(features: Tensor, losses: dict[str, Tensor],
                                   discriminator: TaskGradientDiscriminator, lam: float = 1.0) -> Tensor:
    """Cross-entropy of the discriminator classifying each task's gradient at ``features``.

    Minimising it trains the discriminator; through the reversal the network's parameters get
    ``-lam`` times the same gradient, i.e. they maximise the discriminator's error.
    """
    terms = []
    for label, loss in enumerate(losses.values()):
        # a task with no labelled pixel in the batch has a constant loss: no gradient to classify
        if not loss.requires_grad:
            continue
        (g,) = torch.autograd.grad(loss, features, create_graph=True, retain_graph=True, allow_unused=True)
        if g is None:
            continue
        # the gradient's scale differs by orders of magnitude between tasks; classify its direction
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        logits = discriminator(grad_reverse(g, lam))
        target = torch.full((g.shape[0],), label, dtype=torch.long, device=g.device)
        terms.append(F.cross_entropy(logits, target))
    if not terms:  # zero, but touching every discriminator parameter (DDP expects them used)
        return sum((p.sum() * 0 for p in discriminator.parameters()), features.new_zeros(()))
    return torch.stack(terms).mean()


@dataclass
class TaskAdversarialConfig:
    """``task_adversarial`` in the train config: ASTMT's adversarial task-gradient disentanglement."""

    enabled: bool | None = None  # null: on for the astmt decoder (ASTMT Sec. 4), off for the others
    weight: float = 0.1  # w_d: the discriminator loss's weight in the total (ASTMT supp. Eq. 5)
    scale: float = 1.0  # lambda in [0, 1]: the share of the reversed gradient reaching the network
    hidden: int = 32  # the discriminator's width

    def validate(self, prefix: str) -> None:
        require(self.weight >= 0, f"{prefix}.weight", self.weight, ">= 0")
        require(0 <= self.scale <= 1, f"{prefix}.scale", self.scale, "in [0, 1] (ASTMT's lambda)")
        require(self.hidden >= 1, f"{prefix}.hidden", self.hidden, "an integer >= 1")

    def active(self, decoder: str) -> bool:
        return self.enabled if self.enabled is not None else decoder == "astmt"


class TaskAdversary(nn.Module):
    """The discriminator and its settings as one module (so the trainer can hand it to the
    optimiser, DDP and the checkpoint like the alignment discriminator)."""

    def __init__(self, cfg: TaskAdversarialConfig, channels: int, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.scale = cfg.scale
        self.disc = TaskGradientDiscriminator(channels, len(self.tasks), cfg.hidden)

    def forward(self, features: Tensor, losses: dict[str, Tensor]) -> Tensor:
        """The discriminator's cross-entropy over the tasks' gradients at ``features`` (the
        shared/task boundary); task order fixes the class labels."""
        return task_gradient_adversarial_loss(features, {t: losses[t] for t in self.tasks}, self.disc,
                                              self.scale)


def build_task_adversary(cfg: TaskAdversarialConfig, decoder: str, channels: int,
                         tasks: tuple[str, ...]) -> TaskAdversary | None:
    """The adversary ``mtl-train`` adds, or None when off (or when fewer than two tasks have labels:
    there is nothing to tell apart; an explicit ``enabled: true`` then is a config error)."""
    if not cfg.active(decoder):
        return None
    if len(tasks) < 2:
        if cfg.enabled:
            raise ConfigError(f"task_adversarial.enabled: true needs >= 2 labelled tasks, got {list(tasks)}")
        return None
    return TaskAdversary(cfg, channels, tasks)
