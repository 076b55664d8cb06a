"""End-to-end node latency vs model-only latency, and frame drops at a 30 Hz camera.

A camera thread in this process publishes 256x512 rgb8 images at ``--fps`` stamped with the wall
clock; the node (its console script, a separate process) runs at network resolution; this
process receives ``~/depth`` (512 KB) and ``~/normals`` (1.5 MB) and measures stamp -> received.
Model-only latency is ``Backend.step`` in-process on the same model and thread count. Each output
QoS (``--qos``) gets a fresh node, since QoS is read-only.

    .venv/bin/python bench/node_latency.py                      # tiny model widened to 256x512
    .venv/bin/python bench/node_latency.py --model-config config/model/d101_18_cityscapes.yaml
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from mtl_perception.diagnostics import Percentiles
from mtl_perception.tools import harness

ROOT = Path(__file__).resolve().parents[1]
H, W = 256, 512


def model_config_at(path: str, size: tuple[int, int], tmp: Path) -> str:
    """``path`` with input_size replaced (the tiny test model at the paper's 256x512)."""
    data = yaml.safe_load(Path(path).read_text())
    model = data.get("model", data)
    model["input_size"] = list(size)
    out = tmp / "bench_model.yaml"
    out.write_text(yaml.safe_dump(data))
    return str(out)


def model_only(cfg: str, threads: int, frames: int, k: int) -> dict[str, float]:
    from mtl_perception.pipeline import load_backend

    b = load_backend(model_config=cfg, device="cpu", threads=threads).backend
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    state, key_t, non_t = None, [], []
    for i in range(frames):
        t0 = time.perf_counter()
        state = b.step(img, state, i % k == 0).state
        (key_t if i % k == 0 else non_t).append(time.perf_counter() - t0)
    every = Percentiles.of(key_t + non_t)
    return {"key_p50": Percentiles.of(key_t).p50, "non_p50": Percentiles.of(non_t).p50,
            "mean": every.mean, "p50": every.p50}


def status(diag: list) -> dict[str, str]:
    return next(harness.kv(s) for a in reversed(diag) for s in a.status
                if s.name.startswith("/mtl_perception"))


def run_qos(cfg: str, reliability: str, depth: int, args: argparse.Namespace, log_dir: Path) -> dict:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    domain = harness.run_domain_id()
    params = {"model_config": cfg, "threads": args.threads, "keyframe_interval": args.k,
              "output_reliability": reliability, "output_depth": depth, "output_resolution": "network"}
    node = harness.start_process(harness.node_command(params, remaps={"image": "/bench/image"}), domain,
                                 log_dir / f"node_{reliability}_{depth}.log")
    client = harness.Client(domain, "bench")
    try:
        sub_qos = client.qos(reliable=reliability == "reliable", depth=max(depth, 10))
        depth_rx = client.collect("/mtl_perception/depth", Image, sub_qos, timed=True)
        normals_rx = client.collect("/mtl_perception/normals", Image, sub_qos, timed=True)
        diag = client.collect("/diagnostics", DiagnosticArray)
        pub = client.publisher("/bench/image", Image, client.qos(reliable=False, depth=1))
        frames = [harness.make_image_msg(H, W, 0, "bench_cam", seed=i) for i in range(8)]
        warm = {"t": 0}

        def warm_tick() -> None:
            warm["t"] += 1
            msg = frames[warm["t"] % len(frames)]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
            pub.publish(msg)

        # until the outputs flow (discovery both ways, model warm), then measure from a clean slate
        assert client.spin_until(lambda: len(depth_rx) >= 3 and len(normals_rx) >= 3, 90, warm_tick, 0.1), \
            (log_dir / f"node_{reliability}_{depth}.log").read_text()[-2000:]
        client.spin_until(lambda: False, 1.5)
        base = status(diag)
        depth_rx.clear()
        normals_rx.clear()
        sent: list[int] = []
        stop = threading.Event()

        def camera() -> None:
            period = 1.0 / args.fps
            t_next = time.monotonic()
            i = 0
            while not stop.is_set() and len(sent) < args.frames:
                msg = frames[i % len(frames)]
                ns = time.time_ns()
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)
                pub.publish(msg)
                sent.append(ns)
                i += 1
                t_next += period
                time.sleep(max(0.0, t_next - time.monotonic()))

        th = threading.Thread(target=camera, daemon=True)
        t0 = time.monotonic()
        th.start()
        client.spin_until(lambda: not th.is_alive(), args.frames / args.fps + 30)
        client.spin_until(lambda: False, 2.0)  # drain, and one more /diagnostics
        stop.set()
        wall = time.monotonic() - t0
        last = status(diag)
        sent_set = set(sent)

        def e2e(rx: list) -> Percentiles:
            """Input stamp to reception here, over the frames this run sent (seconds in, ms out)."""
            stamps = [(t, m.header.stamp.sec * 10**9 + m.header.stamp.nanosec) for t, m in rx]
            return Percentiles.of([(t - s) / 1e9 for t, s in stamps if s in sent_set])

        d_e2e, n_e2e = e2e(depth_rx), e2e(normals_rx)
        processed = int(last["frames_out"]) - int(base["frames_out"])
        return {"qos": f"{reliability}/{depth}", "sent": len(sent), "wall": wall,
                "received_by_node": int(last["frames_in"]) - int(base["frames_in"]),
                "processed": processed,
                "dropped_node": int(last["dropped_frames"]) - int(base["dropped_frames"]),
                "depth_rx": d_e2e.count, "normals_rx": n_e2e.count,
                "depth_p50": d_e2e.p50, "depth_p95": d_e2e.p95, "depth_max": d_e2e.max,
                "normals_p50": n_e2e.p50, "normals_p95": n_e2e.p95,
                "node_key_p50": float(last["keyframe.latency_p50_ms"]),
                "node_non_p50": float(last["non_keyframe.latency_p50_ms"])}
    finally:
        client.close()
        harness.stop_process(node, signal.SIGINT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-config", default=str(ROOT / "config/model/tiny.yaml"),
                    help="model (input_size forced to 256x512); default: the tiny test model")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--qos", nargs="+", default=["best_effort/1", "reliable/1", "reliable/10"],
                    help="output reliability/depth combinations to run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = model_config_at(args.model_config, (H, W), Path(tmp))
        mo = model_only(cfg, args.threads, 100, args.k)
        rows = []
        for q in args.qos:
            rel, depth = q.split("/")
            rows.append(run_qos(cfg, rel, int(depth), args, Path(tmp)))
            print(f"done {q}: {rows[-1]}", flush=True)
    print(f"\nmodel {Path(args.model_config).name} at {H}x{W}, K={args.k}, {args.threads} thread(s), camera "
          f"{args.fps:g} Hz x {args.frames} frames, outputs at network resolution")
    print(f"model-only Backend.step: keyframe p50 {mo['key_p50']:.1f} ms, non-keyframe p50 "
          f"{mo['non_p50']:.1f} ms, all-frame p50 {mo['p50']:.1f} ms (mean {mo['mean']:.1f})\n")
    head = ("| output QoS | sent | node got | processed | dropped (latest-frame) | depth rx | normals rx "
            "| e2e depth p50 / p95 / max ms | e2e normals p50 / p95 ms | e2e/model p50 |")
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        print(f"| {r['qos']} | {r['sent']} | {r['received_by_node']} | {r['processed']} "
              f"| {r['dropped_node']} "
              f"| {r['depth_rx']} | {r['normals_rx']} | {r['depth_p50']:.1f} / {r['depth_p95']:.1f} / "
              f"{r['depth_max']:.1f} | {r['normals_p50']:.1f} / {r['normals_p95']:.1f} "
              f"| {r['depth_p50'] / mo['p50']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
