"""ASTMT's adversarial task-gradient disentanglement (Maninis et al., Sec. 4), training side.

Each task's loss has a gradient at the shared features (the shared/task-specific boundary: the
encoder output every task decoder reads). A small fully convolutional discriminator learns to tell
from such a gradient which task produced it; the network receives the discriminator's gradient
reversed and scaled by ``lam`` (:func:`~training.adversarial.grad_reverse`), so it learns to
make the task gradients indistinguishable (no task dominates the shared features). The gradients
are exposed by double back-propagation (``create_graph=True``).

Hook: ``loss = sum(task losses) + task_gradient_adversarial_loss(features, losses, disc, lam)``
with ``features = outputs["features"]`` from ``step(..., return_features=True)``; one optimiser
step then trains the discriminator (normal gradient) and the network (reversed) together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    for label, (task, loss) in enumerate(losses.items()):
        (g,) = torch.autograd.grad(loss, features, create_graph=True, retain_graph=True)
        # the gradient's scale differs by orders of magnitude between tasks; classify its direction
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        logits = discriminator(grad_reverse(g, lam))
        target = torch.full((g.shape[0],), label, dtype=torch.long, device=g.device)
        terms.append(F.cross_entropy(logits, target))
        del task
    return torch.stack(terms).mean()
