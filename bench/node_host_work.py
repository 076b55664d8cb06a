"""The node's host work per frame after ``Backend.step``, in CPU time: postprocess, resize, colour,
message building / serialisation, for several output settings. CPU time (``time.thread_time``)
is what the node's own code costs; unlike wall time it hardly moves when other jobs load the CPU,
so versions can be compared on a busy machine. The DDS write itself is not included (see
``bench/node_latency.py`` for end to end).

Each ``--variant NAME=SRC`` runs in a child process importing ``mtl_perception`` from ``SRC``, and
uses that version's own path: with ``mtl_perception.outputs`` (issue 14) ``FrameOutputs`` +
``image_cdr``; without it the earlier node's ``postprocess`` of the wanted tasks at output size +
colourising at output size + ``fill_image_msg`` + rclpy's ``serialize_message`` (the conversion
and serialisation ``publish`` did inside rmw).

    git archive 710b227 | (mkdir -p /tmp/node_before && tar -x -C /tmp/node_before)
    .venv/bin/python bench/node_host_work.py --variant before=/tmp/node_before after=.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NET = (256, 512)
ENCODINGS = {"semantic": "mono8", "semantic/color": "rgb8", "depth": "32FC1", "normals": "32FC3",
             "normals/color": "rgb8"}
TASK = {"semantic": "semantic", "semantic/color": "semantic", "depth": "depth", "normals": "normals",
        "normals/color": "normals"}
# (label, camera HxW, output resolution, subscribed topics)
CASES = [
    ("network res., depth + normals (node_latency.py)", NET, "network", ["depth", "normals"]),
    ("network res., all 5 topics", NET, "network", list(ENCODINGS)),
    ("input 512x1024, all 5 topics", (512, 1024), "input", list(ENCODINGS)),
    ("input 512x1024, semantic/color only", (512, 1024), "input", ["semantic/color"]),
    ("input 512x1024, depth only", (512, 1024), "input", ["depth"]),
]


def net_outputs(seed: int = 0) -> dict[str, np.ndarray]:
    """What ``Backend.step`` returns at 256x512: int32 ids, positive depth, unit normals."""
    rng = np.random.default_rng(seed)
    n = rng.normal(size=(*NET, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    return {"semantic": rng.integers(0, 19, NET).astype(np.int32),
            "depth": rng.uniform(0.5, 80.0, NET).astype(np.float32), "normals": n}


def frame_new(net: dict, size: tuple[int, int], topics: list[str], palette: np.ndarray,
              rgb: np.ndarray) -> dict[str, float]:
    from mtl_perception.image_cdr import image_cdr
    from mtl_perception.outputs import FrameOutputs

    fo = FrameOutputs(net, size, palette, rgb, 0.0, clock=time.thread_time)
    ser = 0.0
    for t in topics:
        a = fo.get(t)
        c0 = time.thread_time()
        image_cdr(1, 2, "camera", a, ENCODINGS[t])
        ser += time.thread_time() - c0
    return {**fo.timings, "serialize": ser}


def frame_old(net: dict, size: tuple[int, int], topics: list[str], palette: np.ndarray,
              rgb: np.ndarray) -> dict[str, float]:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from mtl_perception.imaging import colorize_normals, colorize_semantic, fill_image_msg
    from mtl_perception.postprocess import postprocess

    c0 = time.thread_time()
    out = postprocess({k: v for k, v in net.items() if k in {TASK[t] for t in topics}}, size)
    st = {"postprocess": time.thread_time() - c0, "colour": 0.0, "serialize": 0.0}
    for t in topics:
        c0 = time.thread_time()
        if t == "semantic/color":
            a = colorize_semantic(out["semantic"], palette, rgb, 0.0)
        elif t == "normals/color":
            a = colorize_normals(out["normals"])
        else:
            a = out[t]
        c1 = time.thread_time()
        msg = fill_image_msg(Image(), a, ENCODINGS[t])
        msg.header.frame_id = "camera"
        serialize_message(msg)
        st["colour"] += c1 - c0
        st["serialize"] += time.thread_time() - c1
    return st


def child(frames: int) -> None:
    from mtl_perception.imaging import make_palette

    new = True
    try:
        import mtl_perception.outputs  # noqa: F401
    except ImportError:
        new = False
    palette, net = make_palette(19), net_outputs()
    res = {}
    for label, cam, mode, topics in CASES:
        size = cam if mode == "input" else NET
        rgb = np.zeros((*size, 3), np.uint8)
        runs = []
        for _ in range(frames):
            c0 = time.thread_time()
            st = (frame_new if new else frame_old)(net, size, topics, palette, rgb)
            st["total"] = time.thread_time() - c0
            runs.append(st)
        keys = sorted({k for r in runs for k in r})
        res[label] = {k: float(np.median([r.get(k, 0.0) for r in runs])) * 1e3 for k in keys}
    print(json.dumps({"path": "FrameOutputs + image_cdr" if new else "postprocess + fill_image_msg",
                      "cases": res}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="+", default=[f"current={ROOT}"], help="NAME=SRC source trees")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.frames)
        return 0
    results = {}
    for name, src in (v.split("=", 1) for v in args.variant):
        env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, __file__, "--child", "--frames", str(args.frames)], env=env,
                             capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(results)
    print(f"host work per frame after Backend.step, CPU ms (median of {args.frames}); network 256x512, "
          f"19 classes; DDS write not included")
    print(", ".join(f"{n}: {results[n]['path']}" for n in names) + "\n")
    stages = ("postprocess", "resize", "colour", "serialize", "total")
    print("| case | " + " | ".join(f"{n}: " + " / ".join(stages) for n in names) + " | "
          + " | ".join(f"total {n}/{names[0]}" for n in names[1:]) + " |")
    print("|---|" + "---|" * (2 * len(names) - 1))
    for label, *_ in CASES:
        cells = [" / ".join(f"{results[n]['cases'][label].get(s, 0.0):.2f}" for s in stages) for n in names]
        tot = [results[n]["cases"][label]["total"] for n in names]
        print(f"| {label} | " + " | ".join(cells) + " | "
              + " | ".join(f"{t / tot[0]:.2f}" for t in tot[1:]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
