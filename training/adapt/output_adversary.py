"""Output-space adversarial adaptation (DenseMTL Sec. 4.5, App. B.3; AdvEnt-style).

One small fully convolutional discriminator per task looks at the network's *outputs* and tells
labelled-source from unlabelled-target frames. What it sees per task:

* segmentation: the weighted self-information map ``-P log P`` (per class, P = softmax);
* depth and normals: the maps normalised with the *source* batch's min and max (so both domains
  share one scale and the target cannot win by a global shift of its range).

Losses (``lambda_adv = 5e-3`` as in the paper): the discriminators minimise
``BCE(D(source), 1) + BCE(D(target), 0)`` on detached outputs; the network minimises
``lambda_adv * BCE(D(target), 1)`` through the discriminator with its parameters held fixed, which
moves target outputs toward what the discriminator calls source. Both come from one call, so one
backward pass and one optimiser step (discriminators in the optimiser) train both sides.

``mtl_uda``: one multi-task model, one discriminator per task. ``stl_uda``: the single-task
baseline of DenseMTL's Table 6: the same adversary on a one-task model (one run per task).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from mtl_perception.model.registry import Registry

from ..aux_losses import output_task

ADAPTATION = Registry("adaptation method")
LAMBDA_ADV = 5e-3


def self_information(logits: Tensor) -> Tensor:
    """``-P log P`` per class (B, N, H, W), ``P = softmax(logits)``; 0 where P = 0 or 1."""
    logp = F.log_softmax(logits, dim=1)
    return -logp.exp() * logp


def minmax_normalise(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``(x - lo) / (hi - lo)`` with the source's ``lo``/``hi`` (per channel, shape (1, C, 1, 1))."""
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def _channel_range(x: Tensor) -> tuple[Tensor, Tensor]:
    flat = x.detach().transpose(0, 1).flatten(1)
    return flat.min(1).values.view(1, -1, 1, 1), flat.max(1).values.view(1, -1, 1, 1)


class OutputDiscriminator(nn.Module):
    """conv4x4 s2 -> LeakyReLU -> conv4x4 s2 -> LeakyReLU -> conv3x3 -> logit map."""

    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, hidden, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(hidden, 1, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@ADAPTATION.register("mtl_uda")
class MultiTaskOutputAdversary(nn.Module):
    """Per-task output discriminators and the two loss terms (see the module docstring).

    ``task_channels``: the final outputs to align (task -> channels). ``intermediate``: names of
    auxiliary outputs of a cross-task decoder to align as well (``aux.<task>[.<scale>]``, DenseMTL's
    alignment "at intermediate and final outputs"), each with its own discriminator; a task's
    intermediate terms are averaged, so MTI-Net's four scales weigh as much as DenseMTL's one."""

    task_counts = (2, None)  # (min, max) model tasks the method is for; checked at config time

    def __init__(self, task_channels: dict[str, int], hidden: int = 32,
                 lambda_adv: float = LAMBDA_ADV, intermediate: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.lambda_adv = lambda_adv
        self.names = tuple(task_channels) + tuple(n for n in intermediate if output_task(n) in task_channels)
        # ModuleDict keys may not contain '.': aux.depth.2 -> aux:depth:2
        self.discriminators = nn.ModuleDict({n.replace(".", ":"): OutputDiscriminator(
            task_channels[output_task(n)], hidden) for n in self.names})

    def prepare(self, task: str, source: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator inputs of one task for a source and a target batch."""
        if task == "semantic":
            return self_information(source), self_information(target)
        lo, hi = _channel_range(source)
        return minmax_normalise(source, lo, hi), minmax_normalise(target, lo, hi)

    def forward(self, source: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
        """``disc``: discriminators' loss (detached outputs); ``adv``: the network's weighted
        adversarial term (discriminator parameters held fixed); per output ``adv_<name>``
        (unweighted). Outputs missing from ``source`` (eval mode has no aux) are skipped."""
        disc, adv, out = [], {}, {}
        for name in self.names:
            if name not in source or name not in target:
                continue
            d = self.discriminators[name.replace(".", ":")]
            s, g = self.prepare(output_task(name), source[name], target[name])
            ds, dg = d(s.detach()), d(g.detach())
            disc.append(F.binary_cross_entropy_with_logits(ds, torch.ones_like(ds))
                        + F.binary_cross_entropy_with_logits(dg, torch.zeros_like(dg)))
            frozen = {k: v.detach() for k, v in d.named_parameters()}
            fool = functional_call(d, frozen, (g,))
            out[f"adv_{name}"] = F.binary_cross_entropy_with_logits(fool, torch.ones_like(fool))
            adv.setdefault(output_task(name), {}).setdefault(name.startswith("aux."), []).append(
                out[f"adv_{name}"])
        # per task: final term + mean of its intermediate terms
        terms = [sum(v) / len(v) for t in adv.values() for v in t.values()]
        out["disc"] = torch.stack(disc).sum()
        out["adv"] = self.lambda_adv * torch.stack(terms).sum()
        return out


@ADAPTATION.register("stl_uda")
class SingleTaskOutputAdversary(MultiTaskOutputAdversary):
    """The single-task UDA baseline: the same adversary for a model with exactly one task."""

    task_counts = (1, 1)

    def __init__(self, task_channels: dict[str, int], hidden: int = 32,
                 lambda_adv: float = LAMBDA_ADV, intermediate: tuple[str, ...] = ()) -> None:
        if len(task_channels) != 1:
            raise ValueError(f"stl_uda adapts one single-task model per task, got {sorted(task_channels)}")
        super().__init__(task_channels, hidden, lambda_adv, intermediate)
