"""Shared fixtures for the node/tool tests: a private ROS_DOMAIN_ID per test and the two DDS
environment variables (loopback discovery, Fast DDS LARGE_DATA). Kept small on purpose: the
process/probe helpers live in mtl_perception/tools/harness.py, shared with demo and bench."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
# No start-up timing of the CPU backends in the nodes and tools the tests start (seconds each, and
# records taken under test load): `auto` then uses a cached record or PyTorch FP32. The tests of
# the timing itself set it to 1 (test_cpu_timing.py, test_split_backend.py).
os.environ.setdefault("MTL_PERCEPTION_CPU_TIMING", "0")
# The ONNX graphs and CPU records of those nodes and tools go to a folder of this run, not the
# user's ~/.cache/mtl_perception: what `auto` picks must not depend on what the developer quantized
# or timed before (a quantize record newer than a speed record failed test_node_conventions on a
# developer's machine, never in CI's fresh one). An exported MTL_PERCEPTION_CACHE is kept.
if not os.environ.get("MTL_PERCEPTION_CACHE"):
    os.environ["MTL_PERCEPTION_CACHE"] = tempfile.mkdtemp(prefix="mtl_perception_test_cache_")
    atexit.register(shutil.rmtree, os.environ["MTL_PERCEPTION_CACHE"], True)


def _has_rclpy() -> bool:
    try:
        import rclpy  # noqa: F401
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401
        from sensor_msgs.msg import Image  # noqa: F401
        from std_srvs.srv import Trigger  # noqa: F401
    except ImportError:
        return False
    return True


HAS_RCLPY = _has_rclpy()
requires_rclpy = pytest.mark.skipif(not HAS_RCLPY, reason="rclpy / ROS message packages not importable")


@pytest.fixture
def domain_id() -> int:
    """A ROS_DOMAIN_ID no other test (or concurrent run) in this session uses."""
    from mtl_perception.tools.harness import next_domain_id

    return next_domain_id()
