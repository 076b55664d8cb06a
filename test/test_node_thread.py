"""The node's inference thread and its one-slot mailbox, in this process, frames handed straight to
the image callback (no DDS traffic; nobody subscribes, so nothing is serialised). A backend that
waits on an event holds a frame inside the thread, which makes every interleaving deterministic:

* latest frame wins: frames arriving while one is in flight replace each other, the replaced ones
  are counted as dropped (and reported so in the /diagnostics values);
* the ~/latency mailbox wait runs from the frame's arrival in the callback to the start of its
  processing: a frame held back for 0.3 s reports at least 0.3 s;
* an exception outside the model step (here: publishing) is counted and logged, and the thread
  keeps serving the next frame;
* destroy_node lets the frame in flight finish and ends the thread; a waiting frame is not run;
* nodes created and destroyed in turn (or left to the context's shutdown) leave no thread;
* a start-up that fails after the thread started ends it;
* pausing the input (last subscriber gone) counts the waiting frame as dropped, and the next
  stream starts with a reset even when a frame of the old stream was still in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not installed")
pytest.importorskip("sensor_msgs.msg", reason="sensor_msgs not installed")

import torch  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mtl_perception.backends.torch_backend import TorchBackend  # noqa: E402
from mtl_perception.imaging import fill_image_msg  # noqa: E402
from mtl_perception.model import ModelConfig, build_model  # noqa: E402
from mtl_perception.node import PerceptionNode  # noqa: E402
from mtl_perception.pipeline import LoadedBackend  # noqa: E402
from mtl_perception.tools import harness  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"
HOLD_S = 0.3


class Held(TorchBackend):
    """A torch backend whose step waits until ``release`` is set (set: runs freely)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def step(self, image, state, is_keyframe):  # noqa: ANN001, ANN201
        self.entered.set()
        assert self.release.wait(60), "test never released the step"
        return super().step(image, state, is_keyframe)


def _backend() -> Held:
    torch.manual_seed(0)
    return Held(build_model(ModelConfig.from_yaml(TINY)).eval(), "cpu")


def _wait(pred: Callable[[], bool], timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


class Frames:
    """Numbered frames 50 ms apart on one camera; records what the node reports per frame."""

    def __init__(self, node: PerceptionNode) -> None:
        self.node, self.n = node, 0
        self.done: list[dict[str, Any]] = []  # one per processed frame, from ~/latency's arguments
        publish_latency = node._publish_latency

        def record(header, is_key, index, reset, timings, total, wait_s, input_age_s):  # noqa: ANN001, ANN202
            self.done.append({"frame": header.stamp.nanosec // 50_000_000, "key": is_key, "reset": reset,
                              "stages": set(timings), "wait_s": wait_s, "at": time.perf_counter()})
            publish_latency(header, is_key, index, reset, timings, total, wait_s, input_age_s)

        node._publish_latency = record

    def send(self) -> int:
        """Hand the next frame to the image callback; returns its number."""
        self.n += 1
        rgb = np.full((48, 64, 3), (self.n * 37) % 256, np.uint8)
        m = fill_image_msg(Image(), rgb, "rgb8")
        m.header.frame_id = "cam"
        m.header.stamp.sec, m.header.stamp.nanosec = 1, self.n * 50_000_000
        self.node._on_image(m)
        return self.n

    def processed(self) -> list[int]:
        return [d["frame"] for d in self.done]


@contextmanager
def _node(backend: Held, destroy: bool = True, **params: Any) -> Iterator[PerceptionNode]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    overrides = [Parameter(k, value=v) for k, v in {"max_frame_gap_s": 0.0, **params}.items()]
    node = PerceptionNode(LoadedBackend(backend, True, 8, ()), context=ctx, parameter_overrides=overrides)
    try:
        yield node
    finally:
        if destroy:
            node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        node._inference.join(10)


def test_latest_frame_wins_and_replaced_frames_are_counted() -> None:
    b = _backend()
    with _node(b) as node:
        f = Frames(node)
        b.release.clear()
        first = f.send()
        assert b.entered.wait(30)  # frame 1 is in the model
        for _ in range(3):
            f.send()  # 2 replaces nothing, 3 replaces 2, 4 replaces 3
        b.release.set()
        assert _wait(lambda: node.frames_out == 2)
        assert f.processed() == [first, 4]  # the newest waiting frame, never an older one
        v = node.diagnostic_values()
        assert (v["frames_in"], v["frames_out"], v["dropped_frames"]) == ("4", "2", "2")


def test_mailbox_wait_runs_from_arrival_to_processing() -> None:
    b = _backend()
    with _node(b) as node:
        f = Frames(node)
        b.release.clear()
        f.send()
        assert b.entered.wait(30)
        sent = time.perf_counter()
        f.send()  # waits in the mailbox until frame 1 is done
        time.sleep(HOLD_S)
        b.release.set()
        assert _wait(lambda: len(f.done) == 2)
        second = f.done[1]
        # bounds, not timings: it waited at least as long as it was held, at most until it was done
        assert HOLD_S <= second["wait_s"] <= second["at"] - sent
        # the same stages as before inference left the executor (torch: encoder / decoder split)
        stages = {"preprocess", "encoder", "decoder", "postprocess", "resize", "colour", "serialize",
                  "publish"}
        assert f.done[0]["stages"] == stages and second["stages"] == stages
        v = node.diagnostic_values()
        assert {f"keyframe.{s}_p50_ms" for s in stages} <= set(v)
        assert {f"non_keyframe.{s}_p50_ms" for s in stages} <= set(v)


def test_an_error_outside_the_model_is_counted_and_the_thread_keeps_serving() -> None:
    b = _backend()
    with _node(b) as node:
        f = Frames(node)
        publish, calls = node._publish_outputs, []

        def fail_once(header, result):  # noqa: ANN001, ANN202
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("publisher gone")
            return publish(header, result)

        node._publish_outputs = fail_once
        f.send()
        assert _wait(lambda: node.errors == 1)
        second = f.send()
        assert _wait(lambda: node.frames_out == 1)
        assert f.processed() == [second]
        v = node.diagnostic_values()
        assert v["inference_errors"] == "1" and "publisher gone" in v["last_error"]
        assert node._inference.is_alive()


def test_destroy_lets_the_frame_in_flight_finish_and_ends_the_thread() -> None:
    b = _backend()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    node = PerceptionNode(LoadedBackend(b, True, 8, ()), context=ctx)
    try:
        f = Frames(node)
        b.release.clear()
        first = f.send()
        assert b.entered.wait(30)
        f.send()  # waiting in the mailbox: not run once the node is going
        destroyer = threading.Thread(target=node.destroy_node)
        destroyer.start()
        assert _wait(lambda: node._stopping)
        b.release.set()
        destroyer.join(30)
        assert not destroyer.is_alive()
        # when destroy_node returns the thread is gone and the frame it held went out, cleanly
        assert not node._inference.is_alive()
        assert f.processed() == [first] and node.errors == 0
    finally:
        b.release.set()
        rclpy.try_shutdown(context=ctx)


def test_a_publish_failing_while_the_node_goes_is_not_an_error() -> None:
    """destroy_node while a frame is in flight: its publishers may already be gone when the frame
    finishes. That failure ends the thread quietly (the context is still up, so only the node's
    own stopping flag tells it apart from a real error, which would be counted and logged)."""
    b = _backend()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    node = PerceptionNode(LoadedBackend(b, True, 8, ()), context=ctx)
    try:
        f = Frames(node)

        def gone(header, result):  # noqa: ANN001, ANN202
            raise RuntimeError("publisher destroyed")

        node._publish_outputs = gone
        b.release.clear()
        f.send()
        assert b.entered.wait(30)
        destroyer = threading.Thread(target=node.destroy_node)
        destroyer.start()
        assert _wait(lambda: node._stopping)
        assert ctx.ok()
        b.release.set()
        destroyer.join(30)
        assert not destroyer.is_alive() and not node._inference.is_alive()
        assert node.errors == 0 and node.last_error == ""
    finally:
        b.release.set()
        rclpy.try_shutdown(context=ctx)


def test_nodes_made_and_destroyed_in_turn_leave_no_inference_thread() -> None:
    threads = []
    for destroy in (True, True, False):  # the last one is left to the context's shutdown
        b = _backend()
        with _node(b, destroy=destroy) as node:
            f = Frames(node)
            f.send()
            assert _wait(lambda: node.frames_out == 1)  # noqa: B023 - used inside the iteration
            threads.append(node._inference)
    assert len({id(t) for t in threads}) == 3  # one thread per node (idents may be reused)
    assert not any(t.is_alive() for t in threads)


def test_a_pause_drops_the_waiting_frame_and_the_next_stream_starts_with_a_reset() -> None:
    b = _backend()
    with _node(b) as node:
        f = Frames(node)
        listeners = [1]
        node.output_subscribers = lambda: listeners[0]  # stands in for subscribers on the outputs
        node._update_activity()
        assert node.active
        f.send()
        assert _wait(lambda: node.frames_out == 1)  # frame 1: start of the stream
        # hold frame 2 after the mailbox, before the scheduler has seen it
        decide, gate, inside = node.scheduler.decide, threading.Event(), threading.Event()

        def held_decide(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            inside.set()
            assert gate.wait(60)
            return decide(*args, **kwargs)

        node.scheduler.decide = held_decide
        f.send()
        assert inside.wait(30)
        f.send()  # frame 3 waits in the mailbox
        listeners[0] = 0
        node._update_activity()  # the last subscriber left: input stops, frame 3 is dropped
        assert not node.active and node.dropped == 1
        gate.set()
        assert _wait(lambda: node.frames_out == 2)
        listeners[0] = 1
        node._update_activity()
        assert node.active
        f.send()  # frame 4: first of the new stream
        assert _wait(lambda: node.frames_out == 3)
        assert f.processed() == [1, 2, 4]
        assert (f.done[2]["reset"], f.done[2]["key"]) == ("start", True)
        assert f.done[1]["reset"] is None  # frame 2 belongs to the old stream (K = 5: not a keyframe)
        v = node.diagnostic_values()
        assert (v["frames_in"], v["frames_out"], v["dropped_frames"]) == ("4", "3", "1")


def test_context_shutdown_alone_ends_the_thread() -> None:
    """Humble's context does not destroy its nodes at shutdown (newer rclpy does, which would end
    the thread through destroy_node and hide a missing shutdown hook): the node is untracked here,
    so only the node's on_shutdown callback can end the thread."""
    b = _backend()
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    node = PerceptionNode(LoadedBackend(b, True, 8, ()), context=ctx)
    try:
        if hasattr(ctx, "untrack_node"):
            ctx.untrack_node(node)
        f = Frames(node)
        f.send()
        assert _wait(lambda: node.frames_out == 1)
        rclpy.try_shutdown(context=ctx)
        node._inference.join(10)
        assert not node._inference.is_alive()
    finally:
        rclpy.try_shutdown(context=ctx)
        node._inference.join(10)


def test_a_failure_late_in_start_up_ends_the_inference_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The constructor started the thread, then failed (e.g. a signal shut the context down): the
    exception reaches the caller and the thread it started is not left waiting for frames."""
    started: list[threading.Thread] = []

    def fail(self: PerceptionNode) -> None:  # the last step of __init__
        started.append(self._inference)
        raise RuntimeError("start-up failed late")

    monkeypatch.setattr(PerceptionNode, "_update_activity", fail)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    try:
        with pytest.raises(RuntimeError, match="failed late"):
            PerceptionNode(LoadedBackend(_backend(), True, 8, ()), context=ctx)
        (thread,) = started
        thread.join(10)
        assert not thread.is_alive()  # ended before the context's shutdown below could end it
    finally:
        rclpy.try_shutdown(context=ctx)


def test_a_failure_early_in_start_up_leaves_a_node_the_context_can_destroy() -> None:
    """Construction failed before the mailbox and the inference thread existed (here an invalid
    parameter; in the field an unexpected error while creating the backend): the caller gets that
    error, and the context's shutdown, which destroys every node it tracks, does not raise an
    AttributeError on top of it."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=harness.next_domain_id())
    try:
        with pytest.raises(ValueError, match="parameter backend: invalid value") as failed:
            PerceptionNode(LoadedBackend(_backend(), True, 8, ()), context=ctx,
                           parameter_overrides=[Parameter("backend", value="no-such-backend")])
        # the traceback keeps the half-built node alive, as in node_main's handler
        assert isinstance(failed.tb.tb_next.tb_frame.f_locals["self"], PerceptionNode)
        rclpy.shutdown(context=ctx)  # destroys it: raised AttributeError ('_slot_lock') before the guard
    finally:
        rclpy.try_shutdown(context=ctx)
