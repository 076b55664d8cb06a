"""Publish -> receipt latency of one large sensor_msgs/Image between two processes on this host,
per Fast DDS transport setting: why the node loads config/fastdds_large_images.xml (docs/node_performance.md,
"DDS transport").

A publisher process sends ``--frames`` raw-CDR images (32FC3, ``--size``, 1.5 MB at 256x512: the
node's ~/normals) at 30 Hz, reliable keep-last-1, stamped just before ``publish``; a subscriber
process takes them as raw bytes (no Python message conversion) and records receipt - stamp, at
three points: the writer's DDS source timestamp (``publish`` itself), the reader's DDS reception
timestamp (Fast DDS's receive thread has the sample: the transport) and the Python callback (plus
this subscriber's executor wake-up). Rows:
the built-in transports named by ``FASTDDS_BUILTIN_TRANSPORTS``, then the node's profile (on both
sides, and on the publisher only, as with a subscriber that knows nothing of it).

    .venv/bin/python bench/dds_latency.py
    .venv/bin/python bench/dds_latency.py --size 128x256 --frames 100
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROFILE = str(ROOT / "config/fastdds_large_images.xml")


def child(role: str, n: int, h: int, w: int) -> None:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from mtl_perception.image_cdr import image_cdr

    rclpy.init()
    node = rclpy.create_node(f"dds_latency_{role}")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
    if role == "pub":
        pub = node.create_publisher(Image, "/dds_latency", qos)
        buf = bytearray(image_cdr(0, 0, "cam", np.zeros((h, w, 3), np.float32), "32FC3"))
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # discovery settles both ways
        for _ in range(n + 5):
            struct.pack_into("<iI", buf, 4, *divmod(time.time_ns(), 10**9))
            pub.publish(bytes(buf))
            time.sleep(1 / 30)
        time.sleep(1.0)
    else:
        lat: list[str] = []

        def got(data: bytes, info: dict) -> None:
            now = time.time_ns()
            sec, nsec = struct.unpack_from("<iI", data, 4)
            stamp = sec * 10**9 + nsec
            lat.append(",".join(f"{(t - stamp) / 1e6:.3f}" for t in
                                (info["source_timestamp"], info["received_timestamp"], now)))

        node.create_subscription(Image, "/dds_latency", got, qos, raw=True)
        deadline = time.monotonic() + 60
        while len(lat) < n + 5 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        print(" ".join(lat[5:]))  # the first few include discovery effects
    rclpy.shutdown()


def measure(env_pub: dict[str, str], env_sub: dict[str, str], args: argparse.Namespace,
            domain: int) -> np.ndarray:
    cmd = [sys.executable, __file__, "--child"]
    base = {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp", "PYTHONPATH": str(ROOT)}
    for k in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        base.pop(k, None)
    size = f"{args.size[0]}x{args.size[1]}"
    sub = subprocess.Popen([*cmd, "sub", str(args.frames), size], env={**base, **env_sub},
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    subprocess.run([*cmd, "pub", str(args.frames), size], env={**base, **env_pub},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    out, _ = sub.communicate(timeout=90)
    # (frames, 3): stamp -> source timestamp, -> DDS reception, -> callback (ms)
    return np.array([[float(v) for v in row.split(",")] for row in out.split()]).reshape(-1, 3)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        h, w = (int(v) for v in sys.argv[4].split("x"))
        child(sys.argv[2], int(sys.argv[3]), h, w)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(256, 512))
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--transports", nargs="+", default=["LARGE_DATA", "DEFAULT", "SHM", "UDPv4"])
    args = ap.parse_args()
    domain = int(os.environ.get("ROS_DOMAIN_ID", "0")) or 77
    prof = {"FASTDDS_DEFAULT_PROFILES_FILE": PROFILE}
    large = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    rows = [(f"FASTDDS_BUILTIN_TRANSPORTS={t}", {"FASTDDS_BUILTIN_TRANSPORTS": t}, {})
            for t in args.transports]
    rows += [("LARGE_DATA + node profile, both sides", {**large, **prof}, prof),
             ("LARGE_DATA + node profile, publisher only", {**large, **prof}, {})]
    mb = args.size[0] * args.size[1] * 12 / 1e6
    print(f"{mb:.2f} MB 32FC3 image {args.size[0]}x{args.size[1]}, reliable keep-last-1, 30 Hz, "
          f"{args.frames} frames, raw CDR, publish -> receipt in another process (ms)\n")
    print("| transport setting | received | p50 / p90 / max: at DDS reception (transport) "
          "| p50 / p90: at the Python callback | publish call (source ts) p50 |\n|---|---|---|---|---|")
    for name, env_pub, env_sub in rows:
        transports = {"FASTDDS_BUILTIN_TRANSPORTS": env_pub["FASTDDS_BUILTIN_TRANSPORTS"]}
        lat = measure(env_pub, {**env_sub, **transports}, args, domain)
        if lat.size == 0:
            print(f"| {name} | 0 | - | - | - |")
            continue
        src, rx, cb = lat.T
        print(f"| {name} | {len(rx)} | {np.median(rx):.2f} / {np.percentile(rx, 90):.2f} / {rx.max():.2f} "
              f"| {np.median(cb):.2f} / {np.percentile(cb, 90):.2f} | {np.median(src):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
