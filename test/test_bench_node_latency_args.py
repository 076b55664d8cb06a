"""bench/node_latency.py's own command line: ``--receiver process`` given first is the user's
option, not the internal receiver child (which once read "process" as its DDS domain and ended
in a ValueError traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy not installed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("first", [["--receiver", "process"], ["--receiver", "inline"]])
def test_receiver_option_first_is_parsed_as_an_option(first: list[str]) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "node_latency.py"), *first, "--help"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout.startswith("usage:") and "--receiver {process,inline}" in p.stdout, p.stdout[:300]
