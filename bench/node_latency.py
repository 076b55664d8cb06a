"""End-to-end node latency vs model-only latency, per-stage breakdown, and frame drops.

A camera thread in this process publishes rgb8 images (``--input-size``, default the network's
256x512) at ``--fps`` stamped with the wall clock; the node (its console script, a separate
process) runs with ``--output-resolution``; this process receives ``--topics`` (default ``~/depth``
and ``~/normals``) and ``~/latency`` (the node's per-frame stage timings); stamp -> received,
"received" being the subscription callback (raw CDR bytes: no message conversion).
``--receiver process`` takes the outputs in a process that does nothing else instead; on this
2-core machine that measured 1.5-2 ms *later* per frame (docs/node_overhead.md, issue 14), so it is not the
default. rmw's ``MessageInfo.received_timestamp`` is reported beside it but
is not used: Fast DDS stamps a fragmented sample when its *first* fragment arrives, so for the
0.3-0.9 MB outputs (64 KB fragments) it precedes the complete image by 1-2 ms (docs/node_overhead.md).
Model-only latency is ``Backend.step`` in-process on the same model
and thread count; the breakdown's ratio uses the node's own model time of the same frames
(encoder + decoder, or inference), which stays comparable when other jobs load the CPU.

Each output QoS (``--qos``) gets a fresh node, since QoS is read-only. ``--variant NAME=SRC`` runs
the node from another source tree (e.g. ``git archive`` of an older commit) to compare code
versions; variants are interleaved ``--repeats`` times (ABBA order) so load drifts hit all alike.

    .venv/bin/python bench/node_latency.py                      # tiny model widened to 256x512
    .venv/bin/python bench/node_latency.py --qos reliable/1 --variant before=/tmp/old after=. --repeats 3
    .venv/bin/python bench/node_latency.py --model-config config/model/d101_18_cityscapes.yaml
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from mtl_perception.diagnostics import Percentiles
from mtl_perception.image_cdr import image_cdr
from mtl_perception.tools import harness

ROOT = Path(__file__).resolve().parents[1]
H, W = 256, 512
# ~/latency keys (without _ms) shown in the breakdown, in pipeline order; "model" is the sum of
# encoder + decoder (PyTorch) or inference (ONNX Runtime, TensorRT). Older nodes lack some.
STAGES = ("input_age", "wait", "preprocess", "model", "postprocess", "resize", "colour", "serialize",
          "publish")


def model_config_at(path: str, size: tuple[int, int], tmp: Path) -> str:
    """``path`` with input_size replaced (the tiny test model at the paper's 256x512)."""
    data = yaml.safe_load(Path(path).read_text())
    model = data.get("model", data)
    model["input_size"] = list(size)
    out = tmp / "bench_model.yaml"
    out.write_text(yaml.safe_dump(data))
    return str(out)


def model_only(source: dict[str, str], threads: int, frames: int, k: int, backend: str) -> dict[str, float]:
    from mtl_perception.node_params import inference_threads
    from mtl_perception.pipeline import load_backend

    b = load_backend(**source, backend=backend, device="cpu", threads=inference_threads(threads)).backend
    h, w = b.input_size
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
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


def _stamp_ns(msg: object) -> int:
    """Header stamp of a received output: a message object, or raw CDR bytes (``--raw``: the
    stamp's int32 sec + uint32 nanosec follow the 4-byte encapsulation header)."""
    if isinstance(msg, (bytes, bytearray, memoryview)):
        sec, nsec = struct.unpack_from("<iI", msg, 4)
        return sec * 10**9 + nsec
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec  # type: ignore[attr-defined]


def collect_rx(node: object, topic: str, msg_type: object, qos: object, raw: bool) -> list:
    """Subscribe ``topic`` on ``node``; append ``(callback ns, DDS reception ns, stamp ns)`` per
    message, the clock read first. The reception time is rmw's ``received_timestamp``
    (CLOCK_REALTIME like ``time.time_ns``), which Fast DDS takes at the first fragment of a
    fragmented sample: information, not receipt."""
    got: list = []

    def cb(msg: object, info: dict) -> None:
        now = time.time_ns()
        got.append((now, int(info["received_timestamp"]), _stamp_ns(msg)))

    node.create_subscription(msg_type, topic, cb, qos, raw=raw)  # type: ignore[attr-defined]
    return got


# argv[1] of the receiver child; not "--receiver", which a user may give first ("--receiver process")
RECEIVER_CHILD = "--as-receiver-process"


def receiver_main(domain: int, reliable: bool, depth: int, raw: bool, topics: list[str]) -> int:
    """``--receiver``: a process that only receives the node's outputs, so the receipt time is not
    delayed by the bench's camera thread, its ~/latency and /diagnostics subscriptions or its
    spin loop sharing one GIL. Prints ``WARM`` once each topic got 3 messages; on SIGINT one JSON
    line ``{topic: [[callback ns, reception ns, stamp ns], ...]}``."""
    import json

    from sensor_msgs.msg import Image

    client = harness.Client(domain, "bench_receiver")  # the bench's own context, node and executor
    qos = client.qos(reliable=reliable, depth=depth)
    rx = {t: collect_rx(client.node, f"/mtl_perception/{t}", Image, qos, raw) for t in topics}
    warm = False
    try:
        while True:
            client.executor.spin_once(timeout_sec=0.02)
            if not warm and all(len(v) >= 3 for v in rx.values()):
                warm = True
                print("WARM", flush=True)
    except KeyboardInterrupt:
        pass
    print(json.dumps(rx), flush=True)
    return 0


class Receiver:
    """The ``--receiver`` process of one run (see :func:`receiver_main`)."""

    def __init__(self, domain: int, reliable: bool, depth: int, raw: bool, topics: list[str]) -> None:
        import subprocess

        cmd = [sys.executable, __file__, RECEIVER_CHILD, str(domain), str(int(reliable)), str(depth),
               str(int(raw)), *topics]
        self.proc = subprocess.Popen(cmd, env=harness.ros_env(domain), stdout=subprocess.PIPE, text=True)
        self.warm = threading.Event()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "WARM":
                self.warm.set()
            else:
                self.lines.append(line)

    def stop(self) -> dict[str, list]:
        import json

        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(30)
        self._reader.join(10)
        return json.loads(self.lines[-1]) if self.lines else {}


def frame_stages(lat: dict[str, str]) -> dict[str, float]:
    """One ~/latency message -> ms per breakdown stage (missing stages of older nodes left out)."""
    ms = {k[:-3]: float(v) for k, v in lat.items() if k.endswith("_ms")}
    out = {s: ms[s] for s in STAGES if s in ms and s != "model"}
    out["model"] = ms.get("encoder", 0.0) + ms.get("decoder", 0.0) + ms.get("inference", 0.0)
    out["node"] = ms["total"]  # decode -> last output published
    return out


def run_qos(source: dict[str, str], reliability: str, depth: int, args: argparse.Namespace, log_dir: Path,
            src: str = "") -> dict:
    """One node process (from source tree ``src`` if given) and one camera run."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    domain = harness.run_domain_id()
    params = {**source, "backend": args.backend, "threads": args.threads, "keyframe_interval": args.k,
              "output_reliability": reliability, "output_depth": depth,
              "output_resolution": args.output_resolution, **args.param}
    log = log_dir / f"node_{reliability}_{depth}_{os.getpid()}_{time.monotonic_ns()}.log"
    old_path = os.environ.get("PYTHONPATH")
    if src:  # the node process imports mtl_perception from ``src`` (ros_env copies os.environ)
        os.environ["PYTHONPATH"] = str(Path(src).resolve()) + (os.pathsep + old_path if old_path else "")
    try:
        node = harness.start_process(harness.node_command(params, remaps={"image": "/bench/image"}),
                                     domain, log)
    finally:
        if old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_path
    client = harness.Client(domain, "bench")
    receiver = None
    ih, iw = args.input_size
    try:
        sub_qos = client.qos(reliable=reliability == "reliable", depth=max(depth, 10))
        receiver = (Receiver(domain, reliability == "reliable", max(depth, 10), args.raw, args.topics)
                    if args.receiver == "process" else None)
        rx = {} if receiver else {t: collect_rx(client.node, f"/mtl_perception/{t}", Image, sub_qos, args.raw)
                                  for t in args.topics}
        lat_rx = client.collect("/mtl_perception/latency", DiagnosticArray, client.qos(depth=50))
        diag = client.collect("/diagnostics", DiagnosticArray)
        pub = client.publisher("/bench/image", Image, client.qos(reliable=False, depth=1))
        frames = [harness.make_image_msg(ih, iw, 0, "bench_cam", seed=i) for i in range(8)]
        if args.raw:  # serialised once; each send patches the stamp and publishes the bytes
            frames = [bytearray(image_cdr(0, 0, "bench_cam", np.frombuffer(bytes(f.data), np.uint8)
                                          .reshape(ih, iw, 3), "rgb8")) for f in frames]

        def send(msg: object, ns: int) -> None:
            if args.raw:
                struct.pack_into("<iI", msg, 4, *divmod(ns, 10**9))  # type: ignore[arg-type]
                pub.publish(bytes(msg))  # type: ignore[arg-type]
            else:
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)  # type: ignore[attr-defined]
                pub.publish(msg)

        warm = {"t": 0}

        def warm_tick() -> None:
            warm["t"] += 1
            send(frames[warm["t"] % len(frames)], time.time_ns())

        # until the outputs flow (discovery both ways, model warm), then measure from a clean slate
        flowing = (receiver.warm.is_set if receiver else lambda: all(len(v) >= 3 for v in rx.values()))
        assert client.spin_until(flowing, 90, warm_tick, 0.1), log.read_text()[-2000:]
        client.spin_until(lambda: False, 1.5)
        base = status(diag)
        for v in rx.values():
            v.clear()
        lat_rx.clear()
        sent: list[int] = []
        stop = threading.Event()

        def camera() -> None:
            period = 1.0 / args.fps
            t_next = time.monotonic()
            i = 0
            while not stop.is_set() and len(sent) < args.frames:
                ns = time.time_ns()
                send(frames[i % len(frames)], ns)
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
        if receiver:
            rx = receiver.stop()
        last = status(diag)
        sent_set = set(sent)
        # per frame: receive time of each topic, the node's stage timings
        got: dict[int, dict[str, int]] = {}
        first_fragment: dict[int, dict[str, int]] = {}
        for topic, msgs in rx.items():
            for t, t_rx, stamp in msgs:
                if stamp in sent_set:
                    got.setdefault(stamp, {})[topic] = t
                    first_fragment.setdefault(stamp, {})[topic] = t_rx
        stages = {_stamp_ns(a): frame_stages(harness.kv(a.status[0])) for a in lat_rx}
        e2e = {t: Percentiles.of([(ts[t] - s) / 1e9 for s, ts in got.items() if t in ts])
               for t in args.topics}
        # frames whose every output arrived: e2e to the last one, and where the time went
        rows = []
        for s, ts in got.items():
            if len(ts) == len(args.topics) and s in stages:
                st = dict(stages[s])
                st["e2e"] = (max(ts.values()) - s) / 1e6
                # of the last output: its first fragment's DDS reception stamp -> its callback here
                # (the rest of the transfer, reassembly and this process's executor)
                last_topic = max(ts, key=ts.get)
                st["rx_callback"] = (ts[last_topic] - first_fragment[s][last_topic]) / 1e6
                st["outside"] = st["e2e"] - st["node"] - st.get("wait", 0.0)
                if "input_age" in st:
                    st["output"] = st["outside"] - st["input_age"]
                rows.append(st)
        processed = int(last["frames_out"]) - int(base["frames_out"])
        return {"qos": f"{reliability}/{depth}", "sent": len(sent), "wall": wall,
                "received_by_node": int(last["frames_in"]) - int(base["frames_in"]),
                "processed": processed,
                "dropped_node": int(last["dropped_frames"]) - int(base["dropped_frames"]),
                "e2e": e2e, "frames": rows}
    finally:
        if receiver is not None and receiver.proc.poll() is None:
            receiver.proc.kill()
        client.close()
        harness.stop_process(node, signal.SIGINT)


def p50(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(np.median(vals)) if vals else float("nan")


def mean(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(np.mean(vals)) if vals else float("nan")


def print_breakdown(results: dict[str, list[dict]], mo: list[dict[str, float]]) -> None:
    """Per-stage mean and p50 (ms) per variant over all frames whose outputs all arrived, then
    the ratios: e2e p50 over the node's own model p50 (same frames), per repeat and pooled."""
    names = list(results)
    rows = {n: [f for r in results[n] for f in r["frames"]] for n in names}
    print("\n| stage (ms) | " + " | ".join(f"{n} mean | {n} p50" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    labels = {"input_age": "stamp -> node input callback (DDS in)", "wait": "wait in mailbox (latest-frame)",
              "preprocess": "decode + preprocess",
              "model": "model (Backend.step)", "postprocess": "postprocess (network res.)",
              "resize": "resize to input res.", "colour": "colour", "serialize": "serialize (CDR)",
              "publish": "publish (rmw)", "node": "node total (decode -> last publish)",
              "outside": "outside the node (DDS in + out, executor)",
              "output": "last publish -> received here (DDS out, subscriber)",
              "e2e": "**e2e (stamp -> last output rx)**",
              "rx_callback": "(in the above) last output: 1st fragment received -> callback here"}
    for key in (*STAGES, "node", "outside", "output", "e2e", "rx_callback"):
        cells = []
        for n in names:
            cells += [f"{mean(rows[n], key):.1f}", f"{p50(rows[n], key):.1f}"]
        if all(c == "nan" for c in cells):
            continue
        print(f"| {labels[key]} | " + " | ".join("-" if c == "nan" else c for c in cells) + " |")
    print("| frames | " + " | ".join(f"{len(rows[n])} | " for n in names) + " |")
    print("\n| ratio | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    per_frame = {n: [r["e2e"] / r["model"] for r in rows[n] if r["model"] > 0] for n in names}
    print("| **p50 over frames of e2e / that frame's model time** (load-robust: same frame, same moment) | "
          + " | ".join(f"**{np.median(per_frame[n]):.2f}**" if per_frame[n] else "-" for n in names) + " |")
    print("| same, per repeat | " + " | ".join(", ".join(
        f"{np.median([f['e2e'] / f['model'] for f in r['frames'] if f['model'] > 0]):.2f}"
        for r in results[n] if r["frames"]) for n in names) + " |")
    print("| e2e p50 / node's model p50, pooled | "
          + " | ".join(f"{p50(rows[n], 'e2e') / p50(rows[n], 'model'):.2f}" for n in names) + " |")
    no_wait = {n: float(np.median([r["e2e"] - r.get("wait", 0.0) for r in rows[n]])) for n in names}
    print("| (e2e - mailbox wait) p50 / model p50 | "
          + " | ".join(f"{no_wait[n] / p50(rows[n], 'model'):.2f}" for n in names) + " |")
    mo_p50 = float(np.median([m["p50"] for m in mo]))
    print(f"| e2e p50 / model-only Backend.step p50 ({mo_p50:.1f} ms, this process) | "
          + " | ".join(f"{p50(rows[n], 'e2e') / mo_p50:.2f}" for n in names) + " |")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == RECEIVER_CHILD:
        domain, reliable, depth, raw, *topics = sys.argv[2:]
        return receiver_main(int(domain), reliable == "1", int(depth), raw == "1", topics)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-config", default=str(ROOT / "config/model/tiny.yaml"),
                    help="model (input_size forced to 256x512); default: the tiny test model")
    ap.add_argument("--checkpoint", default="",
                    help="a trained checkpoint instead (its own input size, e.g. the shipped default model)")
    ap.add_argument("--backend", default="auto",
                    help="the node's `backend` parameter (and the model-only run's)")
    ap.add_argument("--no-raw", dest="raw", action="store_false",
                    help="publish / receive message objects in this process instead of raw CDR bytes "
                         "(adds this process's Python message conversion to every e2e figure)")
    ap.add_argument("--receiver", choices=("process", "inline"), default="inline",
                    help="receive the outputs in this process (default), beside the camera thread and "
                         "~/latency, or in a process of their own (measured slower: docs/node_overhead.md)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0,
                    help="the node's `threads` parameter (0, its default: both of 2 cores, else all but one)")
    ap.add_argument("--param", nargs="+", default=[], metavar="NAME=VALUE",
                    help="further node parameters (YAML values), e.g. pin_threads=true")
    ap.add_argument("--qos", nargs="+", default=["best_effort/1", "reliable/1", "reliable/10"],
                    help="output reliability/depth combinations to run")
    ap.add_argument("--topics", nargs="+", default=["depth", "normals"],
                    help="outputs this process subscribes (under /mtl_perception/)")
    ap.add_argument("--output-resolution", choices=("network", "input"), default="network")
    ap.add_argument("--input-size", type=lambda s: tuple(int(v) for v in s.split("x")), default=(H, W),
                    help="camera image HxW (default: the network's 256x512)")
    ap.add_argument("--variant", nargs="+", default=[f"current={ROOT}"],
                    help="NAME=SRC: run the node from source tree SRC (interleaved with the others)")
    ap.add_argument("--env", nargs="+", default=[], metavar="NAME=VALUE",
                    help="DDS environment for the node and this process instead of the harness's "
                         "(e.g. ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT for a transport comparison)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--model-frames", type=int, default=100, help="frames of the model-only timing")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant)
    for k, v in (e.split("=", 1) for e in args.env):  # both processes: harness.ros_env applies ROS_ENV
        harness.ROS_ENV[k] = os.environ[k] = v
    args.param = {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in args.param)}
    with tempfile.TemporaryDirectory() as tmp:
        source = ({"checkpoint": str(Path(args.checkpoint).resolve())} if args.checkpoint else
                  {"model_config": model_config_at(args.model_config, (H, W), Path(tmp))})
        mo: list[dict[str, float]] = []
        qos_rows: list[tuple[str, dict]] = []
        results: dict[str, list[dict]] = {n: [] for n in variants}
        for rep in range(args.repeats):
            mo.append(model_only(source, args.threads, args.model_frames, args.k, args.backend))
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))  # ABBA
            for q in args.qos:
                rel, depth = q.split("/")
                for name in order:
                    r = run_qos(source, rel, int(depth), args, Path(tmp), variants[name])
                    qos_rows.append((name, r))
                    if q == args.qos[0]:
                        results[name].append(r)
                    print(f"done {name} {q} (repeat {rep + 1}): {r['processed']} processed, e2e p50 "
                          f"{p50(r['frames'], 'e2e'):.1f} ms, model p50 {p50(r['frames'], 'model'):.1f}",
                          flush=True)
    ih, iw = args.input_size
    model_name = (Path(args.checkpoint).name if args.checkpoint
                  else f"{Path(args.model_config).name} at {H}x{W}")
    how = ("raw CDR" if args.raw else "message objects") + (
        " in a receiver process" if args.receiver == "process" else " in this process")
    print(f"\nmodel {model_name}, backend {args.backend}, K={args.k}, threads {args.threads}, "
          f"node parameters {args.param or '-'}, camera "
          f"{ih}x{iw} at {args.fps:g} Hz x {args.frames} frames, outputs at {args.output_resolution} "
          f"resolution, subscribed: {', '.join(args.topics)} ({how}); "
          f"{args.repeats} repeat(s), DDS env {harness.ROS_ENV}, variants "
          + ", ".join(f"{n}={s}" for n, s in variants.items()))
    m = mo[-1]
    print(f"model-only Backend.step: keyframe p50 {m['key_p50']:.1f} ms, non-keyframe p50 "
          f"{m['non_p50']:.1f} ms, all-frame p50 {m['p50']:.1f} ms (mean {m['mean']:.1f})\n")
    first = args.topics[0]
    head = ("| variant | output QoS | sent | node got | processed | dropped (latest-frame) | "
            + " | ".join(f"{t} rx" for t in args.topics)
            + f" | e2e {first} p50 / p95 / max ms | e2e/model p50 |")
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for name, r in qos_rows:
        e = r["e2e"][first]
        print(f"| {name} | {r['qos']} | {r['sent']} | {r['received_by_node']} | {r['processed']} "
              f"| {r['dropped_node']} | " + " | ".join(str(r["e2e"][t].count) for t in args.topics)
              + f" | {e.p50:.1f} / {e.p95:.1f} / {e.max:.1f} | {e.p50 / m['p50']:.2f} |")
    print_breakdown(results, mo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
