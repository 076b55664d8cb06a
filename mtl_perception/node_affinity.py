"""CPU affinity of the node's threads: the inference thread (and the backend's own thread pool)
on its cores, everything else of the process (executor, DDS, logging) on the rest.

Why it exists, and why it is off by default (``pin_threads: false``; docs/node_performance.md, Node
throughput): it shields the inference thread from busy threads of its own process. With a
4-thread ``MultiThreadedExecutor`` next to the inference thread, pinning raised the default
model's throughput at 30 Hz on 2 cores from 11.6-24.5 to 28.4-28.9 fps; with the node's
single-threaded executor the difference is within the run-to-run noise. Linux only
(``os.sched_setaffinity`` takes a thread id there); with one allowed core nothing is pinned.

No rclpy import: the split is plain thread ids and core sets, testable without ROS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CorePlan:
    """Which allowed cores the inference gets and which the rest of the process keeps."""

    inference: frozenset[int]
    rest: frozenset[int]

    def describe(self) -> str:
        return f"inference on CPU {_cores(self.inference)}, executor/DDS on CPU {_cores(self.rest)}"


def _cores(cores: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def plan(allowed: Iterable[int], inference_threads: int) -> CorePlan | None:
    """Split the cores this process may use: the last ``inference_threads`` for inference (at
    most all but one), the others for the rest. None when there is nothing to split (one core):
    then pinning would only forbid the scheduler to use the one core well."""
    cores = sorted(set(allowed))
    if len(cores) < 2:
        return None
    n = max(1, min(inference_threads, len(cores) - 1))
    return CorePlan(frozenset(cores[-n:]), frozenset(cores[:-n]))


def thread_ids() -> set[int]:
    """Kernel thread ids of this process (Linux: /proc/self/task); empty elsewhere."""
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return set()


Setter = Callable[[int, set[int]], None]


def _set(tid: int, cores: set[int], setter: Setter) -> bool:
    try:
        setter(tid, cores)
        return True
    except (ProcessLookupError, PermissionError, OSError):
        return False  # the thread ended meanwhile, or a sandbox forbids it: not worth failing for


def apply(core_plan: CorePlan, inference_tids: Iterable[int], all_tids: Iterable[int],
          setter: Setter | None = None) -> tuple[int, int]:
    """Pin ``inference_tids`` to ``core_plan.inference`` and every other thread of ``all_tids``
    to ``core_plan.rest``; returns (inference threads pinned, others pinned). Threads created
    later inherit the affinity of the thread that creates them."""
    setter = setter or os.sched_setaffinity  # type: ignore[assignment]
    inf = set(inference_tids)
    n_inf = sum(_set(t, set(core_plan.inference), setter) for t in inf)  # type: ignore[arg-type]
    n_rest = sum(_set(t, set(core_plan.rest), setter) for t in set(all_tids) - inf)  # type: ignore[arg-type]
    return n_inf, n_rest


def allowed_cores() -> set[int]:
    """The cores this process may run on (``taskset`` / cgroup cpusets respected)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))
