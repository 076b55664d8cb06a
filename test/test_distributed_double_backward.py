"""The CPU synchronised batch norm's all-reduce is twice differentiable (training/distributed.py):
ASTMT's task-gradient adversary differentiates the task gradients (double back-propagation), and
under torchrun with ``sync_batchnorm`` those pass through the statistics' all-reduce. Two gloo
processes against the one-process value of the same objective."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

W = (0.5, -1.5)  # each rank's loss weight


def _rank(rank: int, store: str, out: str) -> None:
    from training.distributed import _AllReduceSum

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    x = torch.tensor([0.3, -0.2], dtype=torch.float64) * (rank + 1)
    x.requires_grad_(True)
    y = _AllReduceSum.apply(x)  # the sum over ranks
    loss = (W[rank] * torch.tanh(y)).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)  # the task gradient, differentiable
    (g ** 2).sum().backward()
    torch.save(x.grad, f"{out}.{rank}")
    dist.destroy_process_group()


def test_all_reduce_sum_double_backward_matches_one_process(tmp_path: Path) -> None:
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "grad")), nprocs=2, join=True)
    # one process, written out: y = x0 + x1, each rank's gradient g = (w0 + w1) sech^2(y) (DDP
    # semantics: the gradient of the sum of the ranks' losses); objective sum over ranks of |g|^2
    xs = [torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True),
          (torch.tensor([0.3, -0.2], dtype=torch.float64) * 2).requires_grad_(True)]
    y = xs[0] + xs[1]
    g = sum(W) * (1 - torch.tanh(y) ** 2)
    (2 * (g ** 2).sum()).backward()
    for r in range(2):
        got = torch.load(tmp_path / f"grad.{r}", weights_only=True)
        torch.testing.assert_close(got, xs[r].grad, rtol=1e-12, atol=1e-12)
