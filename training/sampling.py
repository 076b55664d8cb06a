"""Deterministic data order for training, the same in any process count and after a resume.

The sample order of an epoch is a permutation seeded by (seed, stage, epoch); each sample's
augmentation runs under a torch seed derived from (seed, stage, epoch, index). Under
``torchrun`` every rank draws the same global order and takes every ``world``-th item of it (as
:class:`torch.utils.data.DistributedSampler` does), so the union of the ranks' batches of a step is
exactly the batch a one-process run with the same global batch size trains on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def mix(*ints: int) -> int:
    """A deterministic 63-bit seed from integers (FNV-1a; no reliance on Python's hash)."""
    h = 1469598103934665603
    for v in ints:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


class EpochSampler(Sampler):
    """Yields ``(stage, epoch, index)`` for positions ``skip .. limit`` of the epoch's seeded global
    order (positions count global samples), keeping this rank's share: positions ``p`` with
    ``p % world == rank``. ``skip`` and ``limit`` are multiples of the global batch size."""

    def __init__(self, n: int, seed: int, stage: int, epoch: int, skip: int, limit: int,
                 rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.stage, self.epoch, self.skip, self.limit = n, seed, stage, epoch, skip, limit
        self.rank, self.world = rank, world

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(mix(self.seed, self.stage, self.epoch))
        order = torch.randperm(self.n, generator=g).tolist()
        # An epoch longer than the data (steps_per_epoch > n / batch) keeps drawing permutations.
        rep = 1
        while len(order) < self.limit:
            g2 = torch.Generator().manual_seed(mix(self.seed, self.stage, self.epoch, rep))
            order += torch.randperm(self.n, generator=g2).tolist()
            rep += 1
        return order[:self.limit]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.order()
        for pos in range(self.skip + self.rank, self.limit, self.world):
            yield (self.stage, self.epoch, order[pos])

    def __len__(self) -> int:
        return max(0, self.limit - self.skip) // self.world


class SeededSamples(Dataset):
    """Runs each ``__getitem__`` of the wrapped dataset under a torch seed fixed by the sample key,
    so random augmentation is the same in any process and after a resume."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        stage, epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(self.seed, stage, epoch, index, 7))
            return self.dataset[index]


# -- RNG state as checkpoint-safe plain data ------------------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
