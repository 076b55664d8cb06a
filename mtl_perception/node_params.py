"""The node's parameter table: every ROS parameter with its default and descriptor, and the
builders / validators that turn parameter values into a keyframe policy, an output filter and an
inference thread count. Kept apart from :mod:`mtl_perception.node` (the rclpy node itself), which
imports everything here.
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.qos import ReliabilityPolicy

from .imaging import MAX_INPUT_PIXELS, MAX_SIDE
from .keyframe_policy import POLICIES, make_policy
from .output_filter import ALPHA_RANGE, FILTERS, WINDOW_RANGE, OutputFilter, make_filter
from .pipeline import BACKENDS, OUTPUT_RESOLUTIONS
from .scheduler import MAX_INTERVAL, MIN_INTERVAL

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def _desc(description: str, read_only: bool = False, int_range: tuple[int, int] | None = None,
          float_range: tuple[float, float] | None = None,
          choices: tuple[str, ...] = ()) -> ParameterDescriptor:
    d = ParameterDescriptor(description=description, read_only=read_only)
    if choices:
        d.additional_constraints = f"one of {list(choices)}"
    if int_range:
        d.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    if float_range:
        d.floating_point_range = [FloatingPointRange(from_value=float_range[0], to_value=float_range[1],
                                                     step=0.0)]
    return d


# name: (default, descriptor). Read-only where a change needs a restart (model, QoS, topics).
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "checkpoint": ("", _desc("Model checkpoint (.pt) to load; empty: the shipped trained model "
                             "models/mila_street_lite.pt (unless 'model_config' is set); 'random': "
                             "random (UNTRAINED) weights of 'model_config'", read_only=True)),
    "model_config": ("", _desc("Model config YAML built with random (UNTRAINED) weights when "
                               "'checkpoint' is empty or 'random' (tests, smoke runs)", read_only=True)),
    "backend": ("auto", _desc("Inference engine", read_only=True, choices=BACKENDS)),
    "device": ("auto", _desc("Torch device: auto (cuda if available, else cpu), cpu, cuda, cuda:N",
                             read_only=True)),
    "fp16": (True, _desc("Half precision on CUDA backends (TensorRT FP16 engines fall back to FP32 "
                         "when they miss the parity thresholds)", read_only=True)),
    "cache_dir": ("", _desc("Folder for exported ONNX graphs and TensorRT engines; empty: "
                            "$MTL_PERCEPTION_CACHE or ~/.cache/mtl_perception", read_only=True)),
    "threads": (0, _desc("CPU threads for inference; 0 = both cores on a 1-2 core machine, else all "
                         "cores but one (the rest of ROS keeps one)",
                         read_only=True, int_range=(0, 256))),
    "pin_threads": (False, _desc("Pin the inference thread to its own core(s) and the executor / DDS "
                                 "threads to the others (no effect on one core). Off: no measurable gain "
                                 "with the single-threaded executor (docs/node_performance.md)",
                                 read_only=True)),
    "executor_threads": (1, _desc("Executor threads for input, diagnostics and services (inference has "
                                  "its own thread); 1 = a single-threaded executor", read_only=True,
                                  int_range=(1, 16))),
    "keyframe_interval": (5, _desc("Every K-th processed frame runs the slow encoder (K)",
                                   int_range=(MIN_INTERVAL, MAX_INTERVAL))),
    "keyframe_policy": ("fixed", _desc("Which frames run the slow encoder: 'fixed' (every K-th) or "
                                       "'adaptive' (when the image moved away from the last keyframe, "
                                       "see docs/keyframes.md)", choices=tuple(POLICIES))),
    "keyframe_min_interval": (2, _desc("adaptive: fewest frames between keyframes",
                                       int_range=(MIN_INTERVAL, MAX_INTERVAL))),
    "keyframe_max_interval": (15, _desc("adaptive: most frames between keyframes",
                                        int_range=(MIN_INTERVAL, MAX_INTERVAL))),
    "keyframe_target_rate": (0.2, _desc("adaptive: long-run share of keyframes (cost budget; within "
                                        "[1/max, 1/min])", float_range=(0.01, 1.0))),
    "max_frame_gap_s": (1.0, _desc("Reset the stream when consecutive stamps are further apart "
                                   "(seconds); 0 disables", float_range=(0.0, 3600.0))),
    "output_resolution": ("network", _desc("Size of output images: 'network' (model input size) or "
                                           "'input' (same as the camera image)", choices=OUTPUT_RESOLUTIONS)),
    "temporal_filter": ("none", _desc("Temporal output filter on the class ids / depth / normals before "
                                      "publishing: 'none', 'mode', 'hysteresis', 'ema' or a '+' chain "
                                      f"('mode+ema'); registered: {FILTERS.names()}. Trades flicker for "
                                      "lag: docs/node.md")),
    "temporal_filter_window": (3, _desc("mode: frames voted over; hysteresis: frames a new class must "
                                        "persist", int_range=WINDOW_RANGE)),
    "temporal_filter_alpha": (0.5, _desc("ema: weight of the newest frame (1 = no smoothing)",
                                         float_range=ALPHA_RANGE)),
    "overlay_alpha": (0.0, _desc("~/semantic/color: palette weight blended over the input image; 0 = "
                                 "palette only", float_range=(0.0, 1.0))),
    "use_compressed": (False, _desc("Also subscribe '<image>/compressed' (jpeg/png)", read_only=True)),
    "max_input_pixels": (MAX_INPUT_PIXELS, _desc("Largest width*height a compressed image may declare; "
                                                 "larger ones are rejected from the header, before "
                                                 "decoding (decompression bombs)", read_only=True,
                                                 int_range=(1, MAX_SIDE * MAX_SIDE))),
    "use_camera_info": (True, _desc("Subscribe 'camera_info' and, once one arrived, republish it on "
                                    "~/camera_info with each output header, scaled to the output size",
                                    read_only=True)),
    "input_reliability": ("best_effort", _desc("Input QoS reliability (best_effort matches every camera "
                                               "publisher; see docs/node_performance.md for the "
                                               "measurements)",
                                               read_only=True, choices=tuple(RELIABILITY))),
    "input_depth": (1, _desc("Input QoS history depth (keep last N)", read_only=True, int_range=(1, 100))),
    "output_reliability": ("reliable", _desc("Output QoS reliability (reliable also serves best-effort "
                                             "subscribers)", read_only=True, choices=tuple(RELIABILITY))),
    "output_depth": (1, _desc("Output QoS history depth (keep last N)", read_only=True,
                              int_range=(1, 100))),
    "diagnostics_period_s": (1.0, _desc("Period of /diagnostics", read_only=True,
                                        float_range=(0.05, 60.0))),
    "latency_window": (300, _desc("Frames per frame type in the latency percentiles", read_only=True,
                                  int_range=(10, 100000))),
}


POLICY_PARAMETERS = ("keyframe_policy", "keyframe_min_interval", "keyframe_max_interval",
                     "keyframe_target_rate")
FILTER_PARAMETERS = ("temporal_filter", "temporal_filter_window", "temporal_filter_alpha")


def _output_filter(values: dict[str, Any]) -> OutputFilter:
    """The temporal output filter the parameters name; ValueError naming the parameter if invalid."""
    return make_filter(values["temporal_filter"], window=values["temporal_filter_window"],
                       alpha=values["temporal_filter_alpha"])


def _policy(values: dict[str, Any]) -> Any:
    """The keyframe policy the parameters name (the fixed one is the scheduler's own: None)."""
    if values["keyframe_policy"] == "fixed":
        return None
    return make_policy(values["keyframe_policy"], min_interval=values["keyframe_min_interval"],
                       max_interval=values["keyframe_max_interval"],
                       target_rate=values["keyframe_target_rate"])


def _policy_problem(values: dict[str, Any]) -> str | None:
    """Why these keyframe policy parameters are refused, or None."""
    try:
        make_policy(values["keyframe_policy"], min_interval=values["keyframe_min_interval"],
                    max_interval=values["keyframe_max_interval"], target_rate=values["keyframe_target_rate"])
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def inference_threads(requested: int, cores: int | None = None) -> int:
    """``threads: 0`` -> every core on a machine of 1-2 cores, else all cores but one (the
    executor, DDS and a camera driver keep a core where that costs a third of the compute or
    less).

    Measured on the 2-core target through the node (docs/node_performance.md, "Threads on the
    2-core target"; default model, 30 Hz camera, 2 x 300 frames per cell, an AVX2 CPU): two
    inference threads with blocking ONNX Runtime pools processed every frame quiet and next to a
    nice-0 process busy half the time (1 thread: 273-281 of 300: the model alone takes 32 ms of
    the 33 ms period), and 273-279 of 300 next to a process busy on a whole core (1 thread:
    250-252). The node's ROS work is ~1.5 ms of CPU per frame: reserving one of two cores for it
    halved the compute. (Before the node had its own inference thread, 2 threads lost: 17-20 fps
    vs 23.) Not measured above 2 cores. ``cores`` None: the cores this process may run on."""
    if requested > 0:
        return requested
    if cores is None:  # the cores this process may use (``taskset`` / cpusets), not the machine's
        from .node_affinity import allowed_cores

        cores = len(allowed_cores())
    return max(1, cores if cores <= 2 else cores - 1)
