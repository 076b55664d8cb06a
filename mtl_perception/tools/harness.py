"""Run the node as a real process and talk to it over DDS: shared by the tests, the demo and the
latency benchmark (one way to start, stop and probe the node, not three).

Environment: traffic stays on loopback (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; Kilted
ignores ``ROS_LOCALHOST_ONLY``) and Fast DDS uses ``LARGE_DATA`` (its default silently drops
best-effort images above ~512 KB). Both are set here before any participant exists.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROS_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
           "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
for _k, _v in ROS_ENV.items():
    os.environ.setdefault(_k, _v)

_counter = itertools.count()
# What the user exported, read once at import: Client() later sets ROS_DOMAIN_ID for its own
# context, which must not look like a user's choice.
_EXPORTED_DOMAIN_ID = os.environ.get("ROS_DOMAIN_ID", "").strip()


def exported_domain_id() -> bool:
    """Whether the user exported ROS_DOMAIN_ID before this process started."""
    return bool(_EXPORTED_DOMAIN_ID)


def run_domain_id() -> int:
    """The domain for a demo/bench run: an exported ``ROS_DOMAIN_ID`` always wins (a demo must never
    publish into a robot's domain by surprise, nor hide from the user's ``ros2 topic echo``);
    only without one is a private id picked from the PID."""
    if _EXPORTED_DOMAIN_ID:
        try:
            value = int(_EXPORTED_DOMAIN_ID)
        except ValueError:
            raise ValueError(f"ROS_DOMAIN_ID: not an integer: {_EXPORTED_DOMAIN_ID!r}") from None
        if not 0 <= value <= 232:
            raise ValueError(f"ROS_DOMAIN_ID: {value} outside 0..232")
        return value
    return next_domain_id()


def next_domain_id() -> int:
    """A ROS_DOMAIN_ID in 1..101 that differs per call and, via the pid, between concurrent runs
    (ids above 101 collide with Fast DDS's port ranges on Linux)."""
    return 1 + (os.getpid() * 7 + next(_counter) * 31) % 101


def ros_env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_ENV)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def console_script(name: str) -> str:
    """The venv's console script ``name`` (next to the running interpreter), else from PATH."""
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def _param_arg(name: str, value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, str):
        value = value if value else "''"
    return f"{name}:={value}"


def node_command(params: dict[str, Any] | None = None, *, namespace: str = "", name: str = "",
                 remaps: dict[str, str] | None = None, params_file: str | None = None) -> list[str]:
    cmd = [console_script("mtl-perception-node"), "--ros-args"]
    if params_file:
        cmd += ["--params-file", params_file]
    for k, v in (params or {}).items():
        cmd += ["-p", _param_arg(k, v)]
    for k, v in (remaps or {}).items():
        cmd += ["-r", f"{k}:={v}"]
    if namespace:
        cmd += ["-r", f"__ns:={namespace}"]
    if name:
        cmd += ["-r", f"__node:={name}"]
    return cmd


def start_process(cmd: list[str], domain_id: int, log_path: str | Path | None = None,
                  cwd: str | Path | None = None) -> subprocess.Popen:
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - lives with proc
    return subprocess.Popen(cmd, env=ros_env(domain_id), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
    """Signal, wait, kill if it hangs; returns the exit code (negative if killed)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def make_image_msg(height: int, width: int, stamp_ns: int, frame_id: str = "camera",
                   encoding: str = "rgb8", seed: int = 0) -> Any:
    """A sensor_msgs/Image with a smooth random pattern (varies with ``seed``)."""
    from sensor_msgs.msg import Image

    from ..imaging import fill_image_msg

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (np.sin(xx / 7.0 + seed) * 60 + np.cos(yy / 5.0) * 60 + 128)[..., None]
    rgb = np.clip(base + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    if encoding == "mono8":
        msg = fill_image_msg(Image(), rgb[:, :, 0], "mono8")
    else:
        msg = fill_image_msg(Image(), rgb, "rgb8")
        if encoding != "rgb8":
            order = {"bgr8": [2, 1, 0], "rgba8": [0, 1, 2, 0], "bgra8": [2, 1, 0, 0]}[encoding]
            arr = np.ascontiguousarray(rgb[:, :, order])
            msg.data, msg.encoding, msg.step = arr.tobytes(), encoding, width * len(order)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    return msg


def kv(status: Any) -> dict[str, str]:
    """DiagnosticStatus values as a dict."""
    return {v.key: v.value for v in status.values}


class Client:
    """A private rclpy context/node on ``domain_id`` that the caller spins explicitly
    (``spin_until``), so a test reads top to bottom without threads."""

    def __init__(self, domain_id: int, name: str = "probe") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        os.environ["ROS_DOMAIN_ID"] = str(domain_id)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()

    def qos(self, reliable: bool = True, depth: int = 10) -> Any:
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        rel = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel)

    def collect(self, topic: str, msg_type: Any, qos: Any = None, timed: bool = False,
                raw: bool = False) -> list[Any]:
        """Subscribe and append every message to the returned list; with ``timed``, append
        ``(receive time.time_ns(), msg)`` (for end-to-end latency against the header stamp); with
        ``raw``, the serialised CDR bytes instead of a message (no Python message conversion)."""
        got: list[Any] = []
        cb = (lambda m: got.append((time.time_ns(), m))) if timed else got.append
        self.node.create_subscription(msg_type, topic, cb, qos or self.qos(), raw=raw)
        return got

    def publisher(self, topic: str, msg_type: Any, qos: Any = None) -> Any:
        return self.node.create_publisher(msg_type, topic, qos or self.qos())

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 20.0,
                   tick: Callable[[], None] | None = None, period: float = 0.1) -> bool:
        """Spin until ``predicate()``; call ``tick`` (e.g. publish a frame) every ``period`` s."""
        deadline = time.monotonic() + timeout
        next_tick = 0.0
        while time.monotonic() < deadline:
            if predicate():
                return True
            now = time.monotonic()
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + period
            self.executor.spin_once(timeout_sec=0.02)
        return predicate()

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 20.0) -> Any:
        cli = self.node.create_client(srv_type, name)
        if not self.spin_until(cli.service_is_ready, timeout):
            raise TimeoutError(f"service {name} not available")
        fut = cli.call_async(request)
        if not self.spin_until(fut.done, timeout):
            raise TimeoutError(f"service {name} did not answer")
        self.node.destroy_client(cli)
        return fut.result()

    def set_parameters(self, node_fqn: str, values: dict[str, Any], timeout: float = 20.0) -> list[Any]:
        """The standard ``<node>/set_parameters`` service; returns SetParametersResult per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                for k, v in values.items()])
        return list(self.call(SetParameters, f"{node_fqn}/set_parameters", req, timeout).results)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
