"""The demo, the harness and the benches use an exported ROS_DOMAIN_ID (never a domain of their
own choosing when the user set one); only without one do they pick a private id from the PID."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("from mtl_perception.tools import harness\n"
         "print(harness.run_domain_id())\n"
         "c = harness.Client(harness.run_domain_id(), 'probe')  # sets ROS_DOMAIN_ID for its context\n"
         "print(harness.run_domain_id(), harness.exported_domain_id())\n"
         "c.close()\n")


def _run(env_domain: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    if env_domain is not None:
        env["ROS_DOMAIN_ID"] = env_domain
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)


def test_harness_honours_exported_domain() -> None:
    pytest.importorskip("rclpy")
    res = _run("42")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["42", "42", "True"]
    res = _run(None)
    assert res.returncode == 0, res.stderr
    first, second, exported = res.stdout.split()
    assert 1 <= int(first) <= 101 and exported == "False"
    # the Client's own ROS_DOMAIN_ID must not be mistaken for a user's export
    assert second != "" and exported == "False"
    res = _run("robot")
    assert res.returncode != 0 and "ROS_DOMAIN_ID: not an integer: 'robot'" in res.stderr


def test_demo_and_benches_choose_the_domain_through_run_domain_id() -> None:
    for path in [ROOT / "mtl_perception/tools/demo.py", *sorted((ROOT / "bench").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        called = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Attribute)}
        assert "next_domain_id" not in called, f"{path.name} picks its own domain"


def test_demo_runs_in_the_exported_domain(tmp_path: Path) -> None:
    """The real demo on a 4-frame clip, ROS_DOMAIN_ID exported: it says so, and a probe in that
    domain sees the demo's node on /diagnostics while it runs."""
    pytest.importorskip("rclpy")
    av = pytest.importorskip("av")
    pytest.importorskip("rosbags")
    from diagnostic_msgs.msg import DiagnosticArray

    from mtl_perception.tools import harness

    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 128, 64, "yuv420p"
        for i in range(4):
            img = np.full((64, 128, 3), 40 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    domain = harness.next_domain_id()
    env = {**harness.ros_env(domain), "ROS_DOMAIN_ID": str(domain)}
    demo = subprocess.Popen([sys.executable, "-m", "mtl_perception.tools.demo", "--video", str(clip),
                             "--out", str(tmp_path / "out"), "--panel-width", "128"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    probe = harness.Client(domain, "domain_probe")
    try:
        diag = probe.collect("/diagnostics", DiagnosticArray)
        seen = probe.spin_until(lambda: any(s.name == "/mtl_perception: perception" for a in diag
                                            for s in a.status) or demo.poll() is not None, 180)
        out, _ = demo.communicate(timeout=240)
    finally:
        probe.close()
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, out[-3000:]
    assert f"[demo] ROS_DOMAIN_ID={domain} (exported)" in out
    assert seen and any(s.name == "/mtl_perception: perception" for a in diag for s in a.status), out[-2000:]
