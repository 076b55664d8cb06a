"""The ROS 2 perception node: subscriptions, parameter changes, publishing, diagnostics. No tensor math.
The parameter table and its builders live in :mod:`mtl_perception.node_params`.

Threading:

* the executor (callback groups ``input`` and ``diagnostics``): image / compressed / camera_info
  callbacks only store the newest message in a one-slot mailbox (a stale unprocessed one is
  dropped and counted) and notify the inference thread; the /diagnostics timer, ``~/reset`` and
  parameter changes, which keep answering during a slow keyframe;
* the inference thread (``mtl-inference``, not an executor thread): takes the newest message,
  decodes it, asks the :class:`KeyframeScheduler`, runs the :class:`Pipeline` and publishes; one
  frame at a time, so frames never queue. With ``pin_threads`` it runs on its own cores and the
  rest of the process on the others (:mod:`mtl_perception.node_affinity`).

The image callbacks: :mod:`mtl_perception.node_input`; what it publishes per frame:
:mod:`mtl_perception.node_publish`; the command line:
:mod:`mtl_perception.node_main`. Run without a ROS install: ``mtl-perception-node --ros-args
--params-file config/perception.yaml -r image:=/camera/image_raw``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    ParameterType,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from . import node_affinity
from .diagnostics import Counters, LatencyStats, RateMeter
from .imaging import ImageError, compressed_to_rgb, image_msg_to_rgb, make_palette
from .keyframe_policy import REASON_RESET, REASONS
from .labels import label_info
from .node_input import ImageInput
from .node_params import (
    FILTER_PARAMETERS,
    PARAMETERS,
    POLICY_PARAMETERS,
    RELIABILITY,
    _desc,
    _output_filter,
    _policy,
    _policy_problem,
    inference_threads,
)
from .node_publish import OutputPublishing
from .outputs import TOPICS
from .pipeline import BACKENDS, OUTPUT_RESOLUTIONS, LoadedBackend, Pipeline, load_backend
from .scheduler import (
    RESET_REASONS,
    RESET_START,
    KeyframeScheduler,
    validate_interval,
)

NODE_NAME = "mtl_perception"


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability])


def _stamp_s(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _stamp_ns(header: Any) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


class PerceptionNode(ImageInput, OutputPublishing, Node):
    """Semantic segmentation, metric depth and surface normals from a camera stream."""

    def __init__(self, loaded: LoadedBackend | None = None, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, desc) in PARAMETERS.items():
            self.declare_parameter(name, default, desc)
        p = {name: self.get_parameter(name).value for name in PARAMETERS}
        for name, choices in (("backend", BACKENDS), ("output_resolution", OUTPUT_RESOLUTIONS),
                              ("input_reliability", tuple(RELIABILITY)),
                              ("output_reliability", tuple(RELIABILITY))):
            if p[name] not in choices:
                raise ValueError(f"parameter {name}: invalid value {p[name]!r}; allowed: {list(choices)}")
        log = self.get_logger()

        # -- model -------------------------------------------------------------------------------
        # auto ranks the CPU backends at the stream's keyframe interval (adaptive: its budget)
        nominal_k = (p["keyframe_interval"] if p["keyframe_policy"] != "adaptive"
                     else max(1, round(1.0 / max(p["keyframe_target_rate"], 1e-3))))
        nthreads = inference_threads(p["threads"])
        # Pinning (node_affinity): the backend's thread pools are created while loading and inherit
        # the loading thread's affinity, so load on the inference cores and remember the new threads.
        self._allowed = node_affinity.allowed_cores()
        self.core_plan = node_affinity.plan(self._allowed, nthreads) if p["pin_threads"] else None
        before = node_affinity.thread_ids()
        if self.core_plan is not None:
            node_affinity.apply(self.core_plan, [threading.get_native_id()], [])
        try:
            self.loaded = loaded or load_backend(p["checkpoint"], p["model_config"], p["backend"],
                                                 p["device"], nthreads, cache_dir=p["cache_dir"],
                                                 fp16=p["fp16"], keyframe_interval=nominal_k)
        except BaseException:
            self._unpin()
            raise
        backend_pool = node_affinity.thread_ids() - before
        for line in self.loaded.report:
            log.info(line)
        if not self.loaded.trained:
            log.warning("*** UNTRAINED weights: outputs are meaningless until a trained checkpoint is set "
                        "(parameter 'checkpoint') ***")
        self._filter_params = {k: p[k] for k in FILTER_PARAMETERS}
        self.pipeline = Pipeline(self.loaded.backend, p["output_resolution"],
                                 _output_filter(self._filter_params))
        self.scheduler = KeyframeScheduler(p["keyframe_interval"], p["max_frame_gap_s"])
        self._policy_params = {k: p[k] for k in POLICY_PARAMETERS}
        self.scheduler.set_policy(_policy(self._policy_params))
        self.palette = make_palette(self.loaded.num_classes)
        self.semantic_encoding = "mono16" if self.loaded.num_classes > 255 else "mono8"
        # output topics in publishing order, with their encodings (largest first measured no
        # different: docs/node_overhead.md, issue 14)
        self.encodings = {t: enc or self.semantic_encoding for t, (_, enc) in TOPICS.items()}
        self.overlay_alpha = float(p["overlay_alpha"])
        self.max_input_pixels = int(p["max_input_pixels"])

        # -- bookkeeping (read by the diagnostics timer from another thread) -----------------------
        self.stats = LatencyStats(p["latency_window"])
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.rejected = Counters()
        self.resets = Counters(*RESET_REASONS)
        self.frames_in = self.frames_out = self.dropped = self.errors = 0
        self.lost = 0  # frames DDS reported lost before they reached the callback (message_lost)
        # Lazy input: the image subscriptions exist only while an output has a subscriber.
        self.active = False
        self.activations = 0
        self.idle_s = 0.0
        self._idle_since: float | None = time.monotonic()
        self._input_subs: list[Any] = []
        self._activity_lock = threading.Lock()
        self.last_error = ""
        self._key_reason = ""  # why the last published frame was a keyframe ("" for a non-keyframe)
        self.last_input = 0.0
        self._slot_lock = threading.Lock()
        self._slot_filled = threading.Condition(self._slot_lock)  # wakes the inference thread
        self._stopping = False
        # (message, perf_counter at arrival, ROS clock at arrival in ns)
        self._slot: tuple[Any, float, int] | None = None
        self._camera_info: CameraInfo | None = None

        # -- ROS interfaces ----------------------------------------------------------------------
        self.input_group = MutuallyExclusiveCallbackGroup()
        self.diag_group = MutuallyExclusiveCallbackGroup()
        self.in_qos = _qos(p["input_reliability"], p["input_depth"])
        out_qos = _qos(p["output_reliability"], p["output_depth"])
        self.compressed_topic = ""
        if p["use_compressed"]:
            # image_transport convention: the compressed stream of /cam/image is /cam/image/compressed,
            # so it follows the 'image' remap rather than needing a second one.
            self.compressed_topic = self.resolve_topic_name("image") + "/compressed"
        self.info_pub = None
        # A subscriber matching or leaving any output re-checks whether inference should run.
        matched = PublisherEventCallbacks(matched=lambda _info: self._update_activity())
        if p["use_camera_info"]:
            # Always subscribed (tiny messages): the newest one is at hand when inference starts.
            # Republished only once one arrived, so no camera_info topic means no ~/camera_info.
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, self.in_qos,
                                     callback_group=self.input_group)
            self.info_pub = self.create_publisher(CameraInfo, "~/camera_info", out_qos,
                                                  event_callbacks=matched, callback_group=self.diag_group)
        self.pubs = {name: self.create_publisher(Image, f"~/{name}", out_qos, event_callbacks=matched,
                                                 callback_group=self.diag_group)
                     for name in ("semantic", "semantic/color", "depth", "normals", "normals/color")}
        self.latency_pub = self.create_publisher(DiagnosticArray, "~/latency", out_qos,
                                                 event_callbacks=matched, callback_group=self.diag_group)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publish_labels(out_qos)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self.diag_group)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics,
                          callback_group=self.diag_group)
        # Belt and braces for the matched events (and the initial state): poll twice a second.
        self.create_timer(0.5, self._update_activity, callback_group=self.diag_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Inference runs on its own thread, not in the executor: a frame's hand-off is a condition
        # variable instead of a guard condition, a wait-set rebuild and a pool dispatch (measured
        # in docs/node_performance.md, Node throughput), and a slow keyframe never holds an executor thread.
        self._inference = threading.Thread(target=self._inference_loop, name="mtl-inference", daemon=True)
        self._inference.start()
        try:
            # rclpy.shutdown() without destroy_node (Humble does not destroy nodes) must end the thread
            # too, or it keeps the node and its model alive (rclpy holds the method weakly).
            self.context.on_shutdown(self._stop_inference)
            pinned = "threads not pinned" + ("" if p["pin_threads"] else " (pin_threads: false)")
            if self.core_plan is not None:
                inf_tids = {self._inference.native_id, *backend_pool}
                n_inf, n_rest = node_affinity.apply(self.core_plan, inf_tids, node_affinity.thread_ids())
                pinned = f"{self.core_plan.describe()} ({n_inf} + {n_rest} threads)"
            log.info(f"CPU affinity: {pinned}")
            log.info(f"ready: image '{self.resolve_topic_name('image')}'"
                     + (f" + '{self.compressed_topic}'" if self.compressed_topic else "")
                     + f", K={self.scheduler.interval}, outputs at {p['output_resolution']} resolution, "
                     f"{self.loaded.backend.describe()}; inference starts with the first output subscriber")
            self._update_activity()
        except BaseException:  # e.g. the context shut down by a signal mid-start: leave no thread, no pins
            self._stop_inference()
            self._unpin()
            raise

    # -- class table -------------------------------------------------------------------------------
    def _publish_labels(self, out_qos: QoSProfile) -> None:
        """Class names + palette for users without this package: read-only parameters and a latched
        (transient-local) ~/class_names topic that late joiners receive too."""
        info = label_info(self.loaded.class_names, self.palette, self.semantic_encoding)
        names = [c["name"] for c in info["classes"]]
        self.declare_parameter("class_names", names, _desc(
            "Semantic class names; index = pixel value of ~/semantic (set by the model)", read_only=True),
            ignore_override=True)
        self.declare_parameter("class_palette", [v for c in info["classes"] for v in c["color"]], _desc(
            "RGB colour of each class in ~/semantic/color, flattened [r0, g0, b0, r1, ...]", read_only=True),
            ignore_override=True)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.labels_pub = self.create_publisher(String, "~/class_names", latched)
        self.labels_pub.publish(String(data=json.dumps(info, separators=(",", ":"))))

    # -- lazy input: no inference while nobody listens ---------------------------------------------
    def output_subscribers(self) -> int:
        pubs = [*self.pubs.values(), self.latency_pub] + ([self.info_pub] if self.info_pub else [])
        return sum(pub.get_subscription_count() for pub in pubs)

    def _update_activity(self) -> None:
        """Subscribe the image input when the first output subscriber appears, unsubscribe when the
        last one leaves (the Autoware pattern): an idle node costs no decoding, no inference and no
        image traffic. The next stream after a pause starts on a keyframe."""
        with self._activity_lock:
            try:
                want = self.output_subscribers() > 0
            except RuntimeError:
                if self.context.ok():
                    raise
                return  # the context was shut down under us (SIGINT/SIGTERM): nothing left to gate
            if want == self.active:
                return
            now = time.monotonic()
            if want:
                events = SubscriptionEventCallbacks(message_lost=self._on_lost)
                self._input_subs.append(self.create_subscription(
                    Image, "image", self._on_image, self.in_qos, callback_group=self.input_group,
                    event_callbacks=events))
                if self.compressed_topic:
                    self._input_subs.append(self.create_subscription(
                        CompressedImage, self.compressed_topic, self._on_image, self.in_qos,
                        callback_group=self.input_group, event_callbacks=events))
                self.activations += 1
                # A new stream. Requested here, not when the input stops: a frame still in flight then
                # would take the reset and the new stream would continue the old one's state.
                self.scheduler.request_reset(RESET_START)
                if self._idle_since is not None:
                    self.idle_s += now - self._idle_since
                    self._idle_since = None
                self.get_logger().info("output subscriber present: inference started")
            else:
                for sub in self._input_subs:
                    self.destroy_subscription(sub)
                self._input_subs.clear()
                with self._slot_lock:
                    if self._slot is not None:  # received, never processed: counted like a replaced one
                        self.dropped += 1
                    self._slot = None
                self._idle_since = now
                self.get_logger().info("no output subscribers: input unsubscribed, inference paused")
            self.active = want

    # -- parameters ------------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[rclpy.parameter.Parameter]) -> SetParametersResult:
        """Validate everything first, then apply: a rejected change leaves every value as it was."""
        for prm in params:
            reason = None
            if prm.name == "keyframe_interval":
                reason = validate_interval(prm.value)
            elif prm.name in POLICY_PARAMETERS:
                reason = _policy_problem({**self._policy_params, **{q.name: q.value for q in params}})
            elif prm.name in FILTER_PARAMETERS:
                try:
                    _output_filter({**self._filter_params, **{q.name: q.value for q in params}})
                except ValueError as e:
                    reason = str(e)
            elif prm.name == "output_resolution" and prm.value not in OUTPUT_RESOLUTIONS:
                reason = f"output_resolution must be one of {list(OUTPUT_RESOLUTIONS)}, got {prm.value!r}"
            elif prm.name in ("max_frame_gap_s", "overlay_alpha") and (
                    prm.type_ != ParameterType.PARAMETER_DOUBLE or prm.value < 0):
                reason = f"{prm.name} must be a non-negative number, got {prm.value!r}"
            if reason:
                self.get_logger().warning(f"rejected parameter change: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        for prm in params:
            if prm.name == "keyframe_interval":
                self.scheduler.interval = prm.value
                self.get_logger().info(f"keyframe_interval -> {prm.value}")
            elif prm.name in POLICY_PARAMETERS:
                self._policy_params[prm.name] = prm.value
            elif prm.name in FILTER_PARAMETERS:
                self._filter_params[prm.name] = prm.value
            elif prm.name == "output_resolution":
                self.pipeline.output_resolution = prm.value
            elif prm.name == "max_frame_gap_s":
                self.scheduler.max_gap_s = prm.value
            elif prm.name == "overlay_alpha":
                self.overlay_alpha = prm.value
        if any(prm.name in POLICY_PARAMETERS for prm in params):
            self.scheduler.set_policy(_policy(self._policy_params))
            self.get_logger().info(f"keyframe policy -> {self._policy_params}")
        if any(prm.name in FILTER_PARAMETERS for prm in params):
            # a new filter starts with no history: the first frame after the change passes unfiltered
            self.pipeline.output_filter = _output_filter(self._filter_params)
            self.get_logger().info(f"temporal_filter -> {self.pipeline.output_filter.describe()}")
        return SetParametersResult(successful=True)

    def _on_reset(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self.scheduler.request_reset()
        resp.success = True
        resp.message = "stream state resets on the next frame (a keyframe)"
        return resp

    # -- inference --------------------------------------------------------------------------------
    def _inference_loop(self) -> None:
        """The inference thread: take the newest message from the mailbox, process it, repeat."""
        while True:
            with self._slot_lock:
                while self._slot is None and not self._stopping:
                    self._slot_filled.wait()
                if self._stopping:
                    return
                item, self._slot = self._slot, None
            try:
                self._process(*item)
            except Exception as e:  # noqa: BLE001 - a publish racing the shutdown; else keep serving
                if self._stopping or not self.context.ok():
                    return
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self.get_logger().error(f"frame failed: {self.last_error}", throttle_duration_sec=5.0)

    def _stop_inference(self) -> None:
        """End the inference thread after its current frame (one waiting in the mailbox is not run)."""
        with self._slot_lock:
            self._stopping = True
            self._slot_filled.notify()

    def destroy_node(self) -> None:
        if not hasattr(self, "_inference"):  # construction failed part way (rclpy still destroys it)
            super().destroy_node()
            return
        self._stop_inference()
        self._inference.join(timeout=10.0)  # a keyframe in flight finishes (and publishes) first
        if self._inference.is_alive():  # a hung backend: the node goes anyway, the thread publishes no more
            self.get_logger().warning("inference thread still in a frame after 10 s; destroying the node")
        self._unpin()
        super().destroy_node()

    def _unpin(self) -> None:
        """Give every thread of the process its cores back (a node built inside another program,
        e.g. a test or a composed process, must not leave it pinned)."""
        if self.core_plan is not None:
            every = node_affinity.CorePlan(frozenset(self._allowed), frozenset(self._allowed))
            node_affinity.apply(every, [], node_affinity.thread_ids())

    def _process(self, msg: Image | CompressedImage, received: float, arrived_ns: int) -> None:
        t0 = time.perf_counter()
        try:
            if isinstance(msg, CompressedImage):
                rgb = compressed_to_rgb(msg.format, msg.data, self.max_input_pixels)
            else:
                rgb = image_msg_to_rgb(msg)
        except ImageError as e:
            self._reject(e.reason, str(e))
            return
        decode_s = time.perf_counter() - t0
        decision = self.scheduler.decide(_stamp_s(msg.header), msg.header.frame_id, rgb.shape[:2], rgb)
        if decision.reset is not None:
            n = self.resets.inc(decision.reset)
            if decision.reset not in ("start", "requested"):
                self.get_logger().info(f"stream reset ({decision.reset}, {n} so far)",
                                       throttle_duration_sec=5.0)
        # a failing step is counted and logged by _inference_loop, which keeps serving
        result = self.pipeline.infer(rgb, decision)  # outputs at network resolution
        timings = dict(result.timings)
        timings.update(self._publish_outputs(msg.header, result))
        timings["preprocess"] += decode_s
        total = self.stats.add(result.is_keyframe, timings)
        self.frames_out += 1
        self.out_rate.tick()
        self._key_reason = (decision.reason or REASON_RESET) if result.is_keyframe else ""
        self._publish_latency(msg.header, result.is_keyframe, decision.index, decision.reset, timings, total,
                              t0 - received, (arrived_ns - _stamp_ns(msg.header)) / 1e9)

    # -- diagnostics ------------------------------------------------------------------------------
    def diagnostic_values(self) -> dict[str, str]:
        now = time.monotonic()
        v = {"backend": self.loaded.backend.name, "device": self.loaded.backend.device,
             "weights": "trained" if self.loaded.trained else "UNTRAINED",
             "keyframe_interval": str(self.scheduler.interval),
             "output_resolution": self.pipeline.output_resolution,
             "temporal_filter": self.pipeline.output_filter.describe(),
             "input_fps": f"{self.in_rate.rate(now):.2f}", "output_fps": f"{self.out_rate.rate(now):.2f}",
             "frames_in": str(self.frames_in), "frames_out": str(self.frames_out),
             "dropped_frames": str(self.dropped), "lost_frames": str(self.lost),
             "rejected_messages": str(self.rejected.total()),
             "inference_errors": str(self.errors),
             # lazy input: whether inference runs, how often it started, and how long it idled
             "inference_active": "true" if self.active else "false",
             "output_subscribers": str(self.output_subscribers()),
             "activations": str(self.activations),
             "idle_s": f"{self.idle_s + (now - self._idle_since if self._idle_since is not None else 0):.1f}"}
        v.update({f"rejected.{k}": str(n) for k, n in sorted(self.rejected.snapshot().items())})
        v.update({f"resets.{k}": str(n) for k, n in self.resets.snapshot().items()})
        # keyframe policy: settings, rate over the last frames, why the last keyframes fired
        v.update(self.scheduler.policy.describe())
        v["keyframe_rate"] = f"{self.scheduler.keyframe_rate():.3f}"
        v["keyframe_last_reasons"] = ",".join(self.scheduler.last_reasons)
        v.update({f"keyframes.{k}": str(self.scheduler.reason_counts.get(k, 0)) for k in REASONS})
        for kind, stages in self.stats.summary().items():
            tot = stages["total"]
            v[f"{kind}.count"] = str(self.stats.counts[kind])
            for q in ("p50", "p95", "max"):
                v[f"{kind}.latency_{q}_ms"] = f"{getattr(tot, q):.2f}"
            for stage, pct in stages.items():
                if stage != "total":
                    v[f"{kind}.{stage}_p50_ms"] = f"{pct.p50:.2f}"
        if self.last_error:
            v["last_error"] = self.last_error
        backend_diag = getattr(self.loaded.backend, "diagnostics", None)
        if backend_diag is not None:  # active backend, skipped ones with reasons, runtime fallbacks
            v.update(backend_diag())
        return v

    def _publish_diagnostics(self) -> None:
        v = self.diagnostic_values()
        level, message = DiagnosticStatus.OK, (f"{v['output_fps']} fps out, K={v['keyframe_interval']}, "
                                               f"{v['dropped_frames']} dropped, {v['lost_frames']} lost")
        if not self.active:
            message = "idle: no output subscribers"
        elif self.frames_in == 0 or time.monotonic() - self.last_input > 5.0:
            level, message = DiagnosticStatus.WARN, "no input images"
        if not self.loaded.trained:
            level = max(level, DiagnosticStatus.WARN)
            message += "; UNTRAINED weights"
        failures = int(getattr(self.loaded.backend, "failures", 0))
        if failures:
            level = max(level, DiagnosticStatus.WARN)
            message += f"; {failures} backend failures, now on {self.loaded.backend.name}"
        if self.errors:
            level, message = DiagnosticStatus.ERROR, f"{message}; {self.errors} inference errors"
        status = DiagnosticStatus(level=level,
                                  name=f"{self.get_fully_qualified_name()}: perception", message=message,
                                  hardware_id=self.loaded.backend.device,
                                  values=[KeyValue(key=k, value=s) for k, s in v.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)
