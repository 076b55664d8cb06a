"""``auto``'s start-up timing makes one backend per CPU candidate; only the chosen one may stay
alive (cpu_choice.release): the others are closed once and no longer referenced, and a part the
chosen split runs on is never closed under it."""

from __future__ import annotations

import gc
import weakref

import pytest

from mtl_perception.backends import cpu_choice


class Fake:
    """A backend that counts its close() calls."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class FakeSplit(Fake):
    def __init__(self, key: Fake, nonkey: Fake) -> None:
        super().__init__("split")
        self.parts = {True: key, False: nonkey}

    def close(self) -> None:  # like SplitBackend.close: closes both parts
        super().close()
        for p in self.parts.values():
            p.close()


def measured() -> dict[str, Fake]:
    torch_cpu, ort = Fake("torch-cpu"), Fake("onnxruntime")
    return {"torch-cpu": torch_cpu, "onnxruntime": ort, "torch-cpu+onnxruntime": FakeSplit(torch_cpu, ort),
            "torch-cpu-bf16": Fake("bf16")}


@pytest.mark.parametrize("chosen, closed", [
    # ORT chosen: PyTorch and BF16 closed once each (PyTorch also sits in the split: still once)
    ("onnxruntime", {"torch-cpu", "bf16"}),
    ("torch-cpu", {"onnxruntime", "bf16"}),
    # the split runs on the measured PyTorch and ORT backends: only BF16 goes
    ("torch-cpu+onnxruntime", {"bf16"}),
    ("torch-cpu-bf16", {"torch-cpu", "onnxruntime"}),
])
def test_release_closes_each_unchosen_backend_once(chosen: str, closed: set[str]) -> None:
    made = measured()
    split_parts = made["torch-cpu+onnxruntime"].parts.values()
    every = {b.name: b for b in made.values()} | {p.name: p for p in split_parts}
    keep = made.pop(chosen)
    released = cpu_choice.release(made, keep)  # type: ignore[arg-type]
    assert made == {}
    # labels released: every measured one but the chosen and the parts it runs on
    parts = {"torch-cpu+onnxruntime": {"torch-cpu", "onnxruntime"}}.get(chosen, set())
    assert set(released) == set(measured()) - {chosen} - parts
    assert {n for n, b in every.items() if b.name != "split" and b.closed} == closed
    assert all(b.closed <= 1 for b in every.values())
    assert keep.closed == 0


def test_released_backends_are_no_longer_referenced() -> None:
    made = measured()
    refs = {k: weakref.ref(b) for k, b in made.items()}
    keep = made.pop("onnxruntime")
    cpu_choice.release(made, keep)  # type: ignore[arg-type]
    gc.collect()
    alive = {k for k, r in refs.items() if r() is not None}
    # the split referenced PyTorch; with both forgotten only the chosen ORT backend remains
    assert alive == {"onnxruntime"}


def test_auto_hands_out_the_measured_backend_and_closes_the_others() -> None:
    """The call site: ``auto``'s chain entry (select._take) releases what the timing made."""
    from mtl_perception.backends import select

    made = measured()
    ort, others = made["onnxruntime"], [made["torch-cpu"], made["torch-cpu-bf16"]]
    fresh = []
    create = select._take("onnxruntime", made, lambda: fresh.append(Fake("fresh")) or fresh[-1],  # type: ignore[arg-type]
                          "fastest measured")
    got = create()
    assert got is ort and ort.closed == 0 and not fresh  # the measured one, not a new one
    assert made == {} and all(b.closed == 1 for b in others)
    assert got.reason == "fastest measured"
    # a fallback entry after the measured ones are gone creates its backend afresh
    assert select._take("torch-cpu", made, lambda: Fake("fresh"), "fallback")().name == "fresh"  # type: ignore[arg-type]
