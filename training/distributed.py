"""Multi-process training glue for ``torchrun`` + :class:`~torch.nn.parallel.DistributedDataParallel`.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; :func:`setup` reads them and joins the process group (``nccl`` on CUDA,
``gloo`` on CPU). Without them everything here is a no-op, so the one-process path is the same code.

What each rank does (see :class:`training.trainer.Trainer`): it trains on its shard of the global
order (:mod:`training.sampling`) with ``batch_size / world`` samples, DDP averages the gradients of
every trainable module (model, discriminator, loss weighting live in one wrapped module), logged
losses are averaged over ranks, and rank 0 alone validates, logs and writes checkpoints.

``torch.nn.SyncBatchNorm`` runs on CUDA only; :class:`CpuSyncBatchNorm` is the same computation with
the statistics summed by an all-reduce whose backward all-reduces the gradient, so that a ``gloo``
run on CPU (CI, tests) also normalises over the global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes files."""
        return self.rank == 0


def context_from_env() -> DistContext:
    """The ranks ``torchrun`` announces in the environment (one process when absent)."""
    return DistContext(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                       int(os.environ.get("LOCAL_RANK", 0)))


def setup(ctx: DistContext, device: str, backend: str = "auto", timeout_s: int = 1800) -> torch.device:
    """Join the process group (if ``ctx.enabled``) and return this rank's device: ``cuda`` becomes
    ``cuda:LOCAL_RANK`` (one GPU per process, as torchrun launches them)."""
    dev = torch.device(device)
    if dev.type == "cuda" and ctx.enabled:
        dev = torch.device("cuda", ctx.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if ctx.enabled and not dist.is_initialized():
        name = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(name, init_method="env://", rank=ctx.rank, world_size=ctx.world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return dev


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The average of each value over all ranks (identical keys on every rank)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def sum_over_ranks(t: Tensor) -> Tensor:
    """A copy of ``t`` summed over ranks (no gradient)."""
    t = t.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_from_main(obj: Any) -> Any:  # noqa: ANN401 - any picklable value
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: nn.Module, ctx: DistContext, device: torch.device, find_unused: bool = True) -> nn.Module:
    """``module`` in DDP when distributed. ``find_unused``: a joint-stage step uses the slow or the
    fast encoder (keyframe or not); DDP must not wait for gradients that never come."""
    if not ctx.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of every rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: ANN401
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: ANN401
        # through apply, so a double backward (ASTMT's task-gradient adversary differentiates the
        # task gradients) differentiates the all-reduce too instead of treating it as constant
        return _AllReduceSum.apply(grad)


# -- synchronised batch norm --------------------------------------------------------------------------
class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's (sum, sum of squares, count
    all-reduced). The backward of the all-reduce sums the statistics' gradients over ranks, which
    is what ``torch.nn.SyncBatchNorm`` computes on CUDA. Eval mode and one process: plain BN."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        c = xf.shape[1]
        count = xf.new_tensor([xf.numel() / c])
        stats = _AllReduceSum.apply(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[operator]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)).clamp_min(0), alpha=m)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of ``module`` synchronised over ranks: torch's SyncBatchNorm on CUDA,
    :class:`CpuSyncBatchNorm` elsewhere. Parameters, buffers and state-dict keys are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            new.to(next(iter(child.state_dict().values())).device)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module
