"""The node's CPU pinning (mtl_perception/node_affinity.py, docs/node_performance.md "Node throughput"): the
inference thread on its own core(s), every other thread of the process on the rest; nothing
pinned on one core; a node built inside another program gives the cores back when destroyed.
Off by default (no measurable gain with the single-threaded executor), on with pin_threads."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from mtl_perception import node_affinity
from mtl_perception.node_affinity import CorePlan, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "config/model/tiny.yaml")
LINUX = hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


@pytest.mark.parametrize("allowed, threads, inference, rest", [
    ({0, 1}, 1, {1}, {0}),            # the 2-core target, one inference thread
    ({0, 1, 2, 3}, 3, {1, 2, 3}, {0}),
    ({0, 1, 2, 3}, 2, {2, 3}, {0, 1}),
    ({0, 1, 2, 3}, 8, {1, 2, 3}, {0}),  # more threads than cores: the rest keeps one core
    ({2, 5, 7}, 1, {7}, {2, 5}),        # a taskset / cpuset: only the allowed cores are split
])
def test_plan_splits_the_allowed_cores(allowed: set[int], threads: int, inference: set[int],
                                       rest: set[int]) -> None:
    p = plan(allowed, threads)
    assert p == CorePlan(frozenset(inference), frozenset(rest))


@pytest.mark.parametrize("allowed", [{0}, {3}, set()])
def test_nothing_to_split_on_one_core(allowed: set[int]) -> None:
    assert plan(allowed, 1) is None


def test_apply_pins_inference_and_the_rest_and_skips_vanished_threads() -> None:
    calls: dict[int, set[int]] = {}

    def setter(tid: int, cores: set[int]) -> None:
        if tid == 99:
            raise ProcessLookupError  # ended between the listing and the call
        calls[tid] = set(cores)

    p = CorePlan(frozenset({1}), frozenset({0}))
    assert node_affinity.apply(p, [10, 11], [10, 11, 12, 13, 99], setter) == (2, 2)
    assert calls == {10: {1}, 11: {1}, 12: {0}, 13: {0}}


@pytest.mark.skipif(not LINUX or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 cores")
def test_apply_sets_the_real_mask_of_a_thread() -> None:
    allowed = os.sched_getaffinity(0)
    p = plan(allowed, 1)
    assert p is not None
    ready, done = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (ready.set(), done.wait(10)))
    worker.start()
    ready.wait(10)
    try:
        assert node_affinity.apply(p, [worker.native_id], []) == (1, 0)
        assert os.sched_getaffinity(worker.native_id) == set(p.inference)
        assert os.sched_getaffinity(0) == allowed  # this thread was not in the lists: untouched
    finally:
        done.set()
        worker.join()


@pytest.mark.skipif(not LINUX or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 cores")
def test_node_with_pin_threads_pins_its_inference_thread_and_unpins_when_destroyed() -> None:
    rclpy = pytest.importorskip("rclpy")
    import torch
    from rclpy.parameter import Parameter

    from mtl_perception.backends.torch_backend import TorchBackend
    from mtl_perception.model import ModelConfig, build_model
    from mtl_perception.node import PerceptionNode
    from mtl_perception.pipeline import LoadedBackend
    from mtl_perception.tools import harness

    allowed = os.sched_getaffinity(0)
    model = build_model(ModelConfig.from_yaml(TINY)).eval()
    torch.manual_seed(0)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    node = PerceptionNode(LoadedBackend(TorchBackend(model, "cpu"), True, 8, ()), context=ctx,
                          parameter_overrides=[Parameter("pin_threads", value=True)])
    try:
        cores = sorted(allowed)
        # the default threads (0) pinned -> inference on all but the first allowed core (the rest keeps one)
        assert node.core_plan == CorePlan(frozenset(cores[1:]), frozenset(cores[:1]))
        assert os.sched_getaffinity(node._inference.native_id) == set(cores[1:])
        assert os.sched_getaffinity(0) == {cores[0]}  # this (the executor's) thread: the rest
        others = node_affinity.thread_ids() - {node._inference.native_id}
        assert all(os.sched_getaffinity(t) == {cores[0]} for t in others if _alive(t))
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    assert not node._inference.is_alive()
    assert os.sched_getaffinity(0) == allowed
    assert all(os.sched_getaffinity(t) == allowed for t in node_affinity.thread_ids() if _alive(t))


@pytest.mark.skipif(not LINUX or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and 2 cores")
def test_threads_the_backend_starts_while_loading_stay_on_the_inference_cores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend's own pool (ORT / torch intra-op threads) is made during load_backend; it must end
    on the inference cores with the inference thread, not on the executor's. Here load_backend is
    a stand-in that starts one parked thread, as a backend's pool would."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    import mtl_perception.node as node_mod
    from mtl_perception.backends.torch_backend import TorchBackend
    from mtl_perception.model import ModelConfig, build_model
    from mtl_perception.pipeline import LoadedBackend
    from mtl_perception.tools import harness

    allowed = os.sched_getaffinity(0)
    done, ready, pool = threading.Event(), threading.Event(), []

    def park() -> None:
        ready.set()
        done.wait(60)

    def load(*_: Any, **__: Any) -> LoadedBackend:
        t = threading.Thread(target=park, daemon=True)
        t.start()
        ready.wait(10)
        pool.append(t)
        model = build_model(ModelConfig.from_yaml(TINY)).eval()
        return LoadedBackend(TorchBackend(model, "cpu"), True, 8, ())

    monkeypatch.setattr(node_mod, "load_backend", load)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    node = node_mod.PerceptionNode(context=ctx, parameter_overrides=[Parameter("pin_threads", value=True)])
    try:
        cores = sorted(allowed)
        assert os.sched_getaffinity(pool[0].native_id) == set(cores[1:])
        assert os.sched_getaffinity(0) == {cores[0]}
    finally:
        node.destroy_node()
        rclpy.shutdown(context=ctx)
        done.set()
        pool[0].join(10)
    assert os.sched_getaffinity(0) == allowed


def _alive(tid: int) -> bool:
    return os.path.isdir(f"/proc/self/task/{tid}")


def test_defaults_one_executor_thread_and_no_pinning() -> None:
    pytest.importorskip("rclpy")
    from mtl_perception.node_params import PARAMETERS

    # the measured winner (docs/node_performance.md, Node throughput): changing a default must be deliberate
    assert PARAMETERS["pin_threads"][0] is False
    assert PARAMETERS["executor_threads"][0] == 1
