"""Input QoS of the node: best-effort vs reliable keep-last-1, against best-effort (sensor-data)
and reliable camera publishers, on Fast DDS's default transports and on LARGE_DATA.

A camera thread here publishes ``--frames`` rgb8 images (``--size``, 518 KB at 240x720) at
``--fps``, stamped with the wall clock, to the node (its console script, shipped model, 1 thread).
Per run: frames that reached the node's callback (``frames_in``), frames DDS reported lost before
it (``lost_frames``, the message-lost event), frames replaced in the node's one-slot mailbox
(``dropped_frames``), frames processed, and input stamp -> ``~/latency`` received here.

    .venv/bin/python bench/input_qos.py                 # all 8 combinations, ~2 min
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

from mtl_perception.diagnostics import Percentiles
from mtl_perception.tools import harness


def status(diag: list) -> dict[str, str] | None:
    return next((harness.kv(s) for a in reversed(diag) for s in a.status
                 if s.name.startswith("/mtl_perception")), None)


def run(node_rel: str, pub_rel: str, transport: str, a: argparse.Namespace, log_dir: Path) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = transport  # this process (set before the participant)
    harness.ROS_ENV["FASTDDS_BUILTIN_TRANSPORTS"] = transport  # and the node process
    domain = harness.run_domain_id()
    log = log_dir / f"node_{node_rel}_{pub_rel}_{transport}.log"
    node = harness.start_process(harness.node_command(
        {"threads": 1, "input_reliability": node_rel, "keyframe_interval": 5},
        remaps={"image": "/bench/image"}), domain, log)
    client = harness.Client(domain, f"qos_{node_rel}_{pub_rel}")
    try:
        lat = client.collect("/mtl_perception/latency", DiagnosticArray, timed=True)
        diag = client.collect("/diagnostics", DiagnosticArray)
        pub = client.publisher("/bench/image", Image, client.qos(reliable=pub_rel == "reliable", depth=1))
        h, w = a.size
        frames = [harness.make_image_msg(h, w, 0, "bench_cam", seed=i) for i in range(4)]

        def stamp(msg):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
            return msg

        # wait for the node to be up (its /diagnostics) and, where the QoS match, for frames to flow
        client.spin_until(lambda: status(diag) is not None, 90)
        # a reliable reader does not match a best-effort writer (DDS request/offer rule): no frames
        matches = not (node_rel == "reliable" and pub_rel == "best_effort")
        client.spin_until(lambda: len(lat) >= 3, 30 if matches else 5,
                          lambda: pub.publish(stamp(frames[0])), 0.1)
        client.spin_until(lambda: False, 1.2)
        base = status(diag)
        lat.clear()
        sent: set[int] = set()

        def camera() -> None:
            t_next = time.monotonic()
            for i in range(a.frames):
                msg = stamp(frames[i % len(frames)])
                sent.add(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)
                pub.publish(msg)
                t_next += 1.0 / a.fps
                time.sleep(max(0.0, t_next - time.monotonic()))

        th = threading.Thread(target=camera, daemon=True)
        th.start()
        client.spin_until(lambda: not th.is_alive(), a.frames / a.fps + 30)
        client.spin_until(lambda: False, 2.2)  # drain + one more /diagnostics
        last = status(diag)
        delta = {k: int(last[k]) - int(base[k]) for k in ("frames_in", "lost_frames", "dropped_frames",
                                                          "frames_out")}
        e2e = Percentiles.of([(t - (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec)) / 1e9
                              for t, m in lat if m.header.stamp.sec * 10**9 + m.header.stamp.nanosec in sent])
        return {"node": node_rel, "pub": pub_rel, "transport": transport, "sent": len(sent), **delta,
                "p50": e2e.p50 if e2e.count else float("nan"), "p95": e2e.p95 if e2e.count else float("nan")}
    finally:
        client.close()
        harness.stop_process(node, signal.SIGINT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--size", type=int, nargs=2, default=(240, 720), metavar=("H", "W"))
    ap.add_argument("--transports", nargs="+", default=["DEFAULT", "LARGE_DATA"])
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for transport, node_rel, pub_rel in itertools.product(a.transports, ("best_effort", "reliable"),
                                                              ("best_effort", "reliable")):
            rows.append(run(node_rel, pub_rel, transport, a, Path(tmp)))
            r = rows[-1]
            print(f"  {transport} node={node_rel} pub={pub_rel}: in {r['frames_in']}/{r['sent']}", flush=True)
    mb = a.size[0] * a.size[1] * 3 / 1e6
    print(f"\n{a.frames} frames {a.size[1]}x{a.size[0]} rgb8 ({mb:.2f} MB) at {a.fps:g} Hz; "
          "node: shipped model, 1 thread, K=5\n")
    print("| transport | node input | camera publisher | reached callback | lost (DDS event) | replaced in "
          "mailbox | processed | stamp->~/latency p50 / p95 ms |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        lat = "no match" if r["frames_in"] == 0 else f"{r['p50']:.0f} / {r['p95']:.0f}"  # already ms
        print(f"| {r['transport']} | {r['node']} | {r['pub']} | {r['frames_in']} / {r['sent']} | "
              f"{r['lost_frames']} | {r['dropped_frames']} | {r['frames_out']} | {lat} |")


if __name__ == "__main__":
    main()
