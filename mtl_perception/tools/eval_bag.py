"""``mtl-perception-eval-bag BAG --topic T --out DIR``: the node's pipeline offline over a bag.

Same decoding, :class:`KeyframeScheduler`, :class:`Pipeline` and latency statistics as the node,
without DDS: every frame is processed (nothing is dropped), so the report is the model's own
per-frame cost. Writes per frame ``semantic/NNNNNN.png`` (class ids, 8- or 16-bit),
``semantic_color/``, ``depth/NNNNNN.npy`` (float32 metres, NaN invalid), ``normals/NNNNNN.npy``,
``normals_color/``; ``frames.csv`` (per-frame timings), ``latency.txt`` and ``latency.json``;
``temporal.json`` / ``temporal.png`` (temporal consistency, mtl_perception.temporal); and with
``--video`` a side-by-side ``outputs.mp4``. ``--keyframe-policy adaptive`` uses the node's adaptive
keyframes (docs/keyframes.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import STAGES, LatencyStats
from ..imaging import (
    ImageError,
    colorize_normals,
    colorize_semantic,
    compressed_to_rgb,
    image_msg_to_rgb,
    make_palette,
    side_by_side,
)
from ..keyframe_policy import POLICIES, KeyframePolicy, make_policy
from ..pipeline import LoadedBackend, Pipeline, load_backend
from ..scheduler import KeyframeScheduler
from ..temporal import TemporalMeter, format_summary
from .bagio import COMPRESSED, IMAGE, BagError, read_bag


def default_model() -> tuple[str, str]:
    """(checkpoint, model_config): the shipped trained checkpoint, found in the installed share folder
    or the checkout (the node's default too), else the tiny config with random weights."""
    from ..share import default_checkpoint, find

    ckpt = default_checkpoint()
    if ckpt:
        return ckpt, ""
    cfg = find("config/model/tiny.yaml")
    return "", str(cfg) if cfg else ""


def evaluate(bag: str | Path, topic: str, out: str | Path, loaded: LoadedBackend, keyframe_interval: int = 5,
             output_resolution: str = "input", max_gap_s: float = 1.0, max_frames: int | None = None,
             save: str = "all", video_fps: float | None = None, video_width: int | None = None,
             on_frame: Callable[[int, dict[str, Any]], None] | None = None,
             warn: Callable[[str], None] | None = None,
             policy: KeyframePolicy | None = None) -> dict[str, Any]:
    """Run the pipeline over ``topic`` of ``bag``; writes into ``out``; returns the report dict.

    A bag damaged mid-stream raises :class:`BagError` only after the frames before the damage are
    written with their report (nothing processed is lost); ``warn`` gets skipped mcap chunks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline(loaded.backend, output_resolution)
    sched = KeyframeScheduler(keyframe_interval, max_gap_s, policy)
    temporal = TemporalMeter()
    stats = LatencyStats(window=10**6)
    palette = make_palette(loaded.num_classes)
    rejected: dict[str, int] = {}
    rejected_detail: dict[str, str] = {}  # the first message of each reason, for the user
    damage: BagError | None = None
    writer = None
    rows = []
    if save != "none":
        for sub in ("semantic", "semantic_color", "depth", "normals", "normals_color"):
            (out / sub).mkdir(exist_ok=True)
    from PIL import Image as PILImage

    t_start = time.perf_counter()
    n = 0
    try:
        for m in read_bag(bag, topic, (IMAGE, COMPRESSED), **({"warn": warn} if warn else {})):
            if max_frames is not None and n >= max_frames:
                break
            msg = m.deserialize()
            t0 = time.perf_counter()
            try:
                rgb = (compressed_to_rgb(msg.format, msg.data) if m.msgtype == COMPRESSED
                       else image_msg_to_rgb(msg))
            except ImageError as e:
                rejected[e.reason] = rejected.get(e.reason, 0) + 1
                rejected_detail.setdefault(e.reason, str(e))
                continue
            decode = time.perf_counter() - t0
            stamp_s = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            decision = sched.decide(stamp_s, msg.header.frame_id, rgb.shape[:2], rgb)
            res = pipe.process(rgb, decision)
            if decision.reset is not None:
                temporal.reset()  # a new stream: no transition across the discontinuity
            temporal.update(res.outputs, res.is_keyframe, reason=decision.reason)
            t1 = time.perf_counter()
            o = res.outputs
            if save != "none":
                stem = f"{n:06d}"
                if "semantic" in o:
                    ids = o["semantic"].astype(np.uint8 if loaded.num_classes <= 256 else np.uint16)
                    PILImage.fromarray(ids).save(out / "semantic" / f"{stem}.png")
                    PILImage.fromarray(colorize_semantic(o["semantic"], palette)).save(
                        out / "semantic_color" / f"{stem}.png")
                if "depth" in o:
                    np.save(out / "depth" / f"{stem}.npy", o["depth"])
                if "normals" in o:
                    np.save(out / "normals" / f"{stem}.npy", o["normals"].astype(np.float16))
                    PILImage.fromarray(colorize_normals(o["normals"])).save(
                        out / "normals_color" / f"{stem}.png")
            if video_fps:
                panel = side_by_side(rgb, o, palette, width=video_width)
                if writer is None:
                    from .bagio import VideoWriter

                    writer = VideoWriter(out / "outputs.mp4", video_fps, panel.shape[1], panel.shape[0])
                writer.write(panel)
            timings = dict(res.timings)
            timings["preprocess"] += decode
            timings["publish"] = time.perf_counter() - t1  # here: writing files
            total = stats.add(res.is_keyframe, timings)
            row = {"frame": n, "stamp": f"{stamp_s:.9f}", "keyframe": int(res.is_keyframe),
                   "reset": res.reset or "", "keyframe_reason": decision.reason or "",
                   **{f"{s}_ms": round(timings.get(s, 0.0) * 1e3, 3) for s in STAGES},
                   "total_ms": round(total * 1e3, 3)}
            rows.append(row)
            if on_frame:
                on_frame(n, {"rgb": rgb, "outputs": o, "row": row})
            n += 1
    except BagError as e:
        if not n:
            raise
        damage = e
    finally:
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - t_start
    with open(out / "frames.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["frame"])
        w.writeheader()
        w.writerows(rows)
    table = stats.table()
    report = {"bag": str(bag), "topic": topic, "frames": n, "rejected": rejected,
              "rejected_detail": rejected_detail, "error": str(damage) if damage else None,
              "wall_s": round(wall, 3),
              "keyframe_interval": keyframe_interval, "output_resolution": output_resolution,
              "backend": loaded.backend.name, "device": loaded.backend.device, "trained": loaded.trained,
              "model": loaded.report,
              "latency_ms": {k: {s: asdict(p) for s, p in v.items()} for k, v in stats.summary().items()}}
    report["keyframe_policy"] = sched.policy.describe()
    report["temporal"] = temporal.write(out) if n else {}
    (out / "latency.txt").write_text(table + "\n")
    (out / "latency.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["table"] = table
    if damage is not None:
        raise BagError(f"{damage}; the {n} frame(s) before it are written to {str(out)!r}") from None
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mtl-perception-eval-bag", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True, help="output folder")
    ckpt, cfg = default_model()
    ap.add_argument("--checkpoint", default=None, help=f"default: the shipped model ({ckpt or 'none'})")
    ap.add_argument("--model-config", default=None, help="random-weight model when no checkpoint")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU inference threads (0: library default)")
    ap.add_argument("--keyframe-interval", type=int, default=5)
    ap.add_argument("--keyframe-policy", choices=sorted(POLICIES), default="fixed")
    ap.add_argument("--keyframe-min-interval", type=int, default=2, help="adaptive policy")
    ap.add_argument("--keyframe-max-interval", type=int, default=15, help="adaptive policy")
    ap.add_argument("--keyframe-target-rate", type=float, default=0.2, help="adaptive policy")
    ap.add_argument("--output-resolution", choices=("network", "input"), default="input")
    ap.add_argument("--max-frame-gap", type=float, default=1.0)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--save", choices=("all", "none"), default="all")
    ap.add_argument("--video", action="store_true", help="also write a side-by-side outputs.mp4")
    ap.add_argument("--fps", type=float, default=10.0, help="frame rate of --video")
    a = ap.parse_args(argv)
    if a.checkpoint is None and a.model_config is None:
        a.checkpoint, a.model_config = ckpt, cfg
    from ..backends.base import BackendError
    from ..model import CheckpointError, ConfigError

    prog = ap.prog

    def warn(message: str) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    try:
        policy = None if a.keyframe_policy == "fixed" else make_policy(
            a.keyframe_policy, min_interval=a.keyframe_min_interval, max_interval=a.keyframe_max_interval,
            target_rate=a.keyframe_target_rate)
    except ValueError as e:
        ap.error(str(e))  # exit 2: a usage error
    try:
        loaded = load_backend(a.checkpoint or "", a.model_config or "", a.backend, a.device, a.threads)
        if not loaded.trained:
            print("WARNING: UNTRAINED weights - outputs are meaningless until a trained checkpoint is used",
                  file=sys.stderr)
        report = evaluate(a.bag, a.topic, a.out, loaded, a.keyframe_interval, a.output_resolution,
                          a.max_frame_gap, a.max_frames, a.save, a.fps if a.video else None, warn=warn,
                          policy=policy)
    except (CheckpointError, ConfigError, BackendError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    for reason, count in report["rejected"].items():  # e.g. an encoding the node does not take
        warn(f"{count} message(s) rejected: {report['rejected_detail'][reason]}")
    print(f"{report['frames']} frames from {a.bag} {a.topic} -> {a.out} ({report['wall_s']} s, "
          f"{report['backend']} on {report['device']})")
    print(report["table"])
    if report["temporal"]:
        print(format_summary(report["temporal"]))
    if not report["frames"]:
        print(f"{prog}: no frame of {a.topic!r} in {a.bag!r} could be decoded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
