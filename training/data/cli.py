"""`mtl-data`: generate synthetic clips, preview them as a figure strip, measure generator fps."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

MAX_SIDE = 8192  # per side; llvmpipe allows 16384, but one RGBA32F target would then take 4 GiB


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 128x256; got {text!r}") from exc
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"size must be HxW with each side in 1..{MAX_SIDE}; got {text!r}")
    return h, w


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, else a one-line error saying ``what`` it must be."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return n

    return parse


_positive = _int_at_least(1, "an integer >= 1")
_seed = _int_at_least(0, "an integer >= 0 (numpy seeds are non-negative)")
_count = _int_at_least(0, "a frame count >= 0")


def _randomize(text: str) -> tuple[str, ...]:
    from .randomize import parse_options

    try:
        return parse_options(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import storage
    from .bag import write_clip_bag
    from .synthetic import SyntheticGenerator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    H, W = args.size
    with (
        SyntheticGenerator(H, W) as gen,
        tqdm(total=args.clips * args.frames, unit="frame", desc=f"{args.domain} {H}x{W}") as bar,
    ):
        for i in range(args.clips):
            seed = args.seed + i
            folder = storage.clip_dir(out, i)
            frames = []
            for t, (rgb, sem, depth, normals, pose) in enumerate(
                gen.iter_frames_events(seed, args.frames, args.domain, args.scene, args.cut_every,
                                       args.turn_every, args.randomize)
            ):
                storage.write_frame(folder, t, rgb, sem, depth, normals)
                frames.append(
                    (rgb, sem, depth, normals, pose) if args.bag else (None, None, None, None, pose)
                )
                bar.update(1)
            poses = np.stack([f[4] for f in frames])
            K = gen.intrinsics(gen.last_rig)  # the rig of this clip (--randomize camera varies it)
            classes = _classes(args.scene)
            storage.write_meta(folder, gen.last_meta, classes, K, poses)
            if args.bag:
                rgb, sem, depth, normals = (np.stack([f[j] for f in frames]) for j in range(4))
                write_clip_bag(out / f"clip_{i:06d}_bag", rgb, sem, depth, normals, K, gen.last_meta["dt"])
    print(f"wrote {args.clips} clip(s) of {args.frames} frames to {out}")
    return 0


def ensure_clips(out: str | Path, clips: int, frames: int, size: str, *, seed: int = 0,
                 domain: str = "source", randomize: str = "none") -> bool:
    """``mtl-data generate`` into ``out`` with these arguments unless its clips 0..clips-1 are already
    there (what the bench scripts need before training); returns whether it rendered.

    A clip counts once its meta.json exists (written after its frames, so an interrupted run's last
    clip does not). A folder already holding the clips is used as it is, as the scripts did before
    (a user may point them at data of their own), but the first clip written with other arguments
    is named on stderr with the field, so a run on other data than asked for does not go unnoticed."""
    from . import storage
    from .randomize import parse_options

    h, w = _size(size)
    want = {"frames": frames, "height": h, "width": w, "domain": domain}
    options = list(parse_options(randomize))
    folders = [storage.clip_dir(out, i) for i in range(clips)]
    if all((f / "meta.json").is_file() for f in folders):
        for i, folder in enumerate(folders):
            meta = storage.read_meta(folder)
            expect = {**want, "seed": seed + i, "randomize": options}
            got = {**{k: meta.get(k) for k in want}, "seed": meta.get("seed"),
                   "randomize": meta.get("randomize", {}).get("options", [])}
            diff = [k for k in expect if got[k] != expect[k]]
            if diff:
                print(f"note: {folder} has {diff[0]} {got[diff[0]]!r}, not {expect[diff[0]]!r}; "
                      "using the folder as it is", file=sys.stderr)
                break
        _note_extra_clips(Path(out), clips)
        return False
    rc = main(["generate", "--clips", str(clips), "--frames", str(frames), "--size", size,
               "--seed", str(seed), "--domain", domain, "--randomize", randomize, "--out", str(out)])
    if rc:
        raise RuntimeError(f"mtl-data generate into {out} failed (exit {rc})")
    _note_extra_clips(Path(out), clips)
    return True


def _note_extra_clips(out: Path, clips: int) -> None:
    """Name on stderr the clip folders of ``out`` past the first ``clips`` (an earlier, larger or
    interrupted run's): the trainer reads every clip folder, so it would train on them (or fail on
    one without meta.json) although the script asked for fewer."""
    from .storage import is_clip_folder

    extra = sorted(p for p in out.glob("clip_*") if is_clip_folder(p) and int(p.name[5:]) >= clips)
    if extra:
        names = ", ".join(p.name + ("" if (p / "meta.json").is_file() else " (no meta.json)")
                          for p in extra[:3]) + (", ..." if len(extra) > 3 else "")
        print(f"note: {out} holds {len(extra)} clip folder(s) beyond the {clips} asked for ({names}); "
              "training reads them too: remove them or use another folder", file=sys.stderr)


def _classes(scene: str) -> tuple[str, ...]:
    from .classes import CLASSES, INDOOR_CLASSES

    return INDOOR_CLASSES if scene == "indoor" else CLASSES


def render_strip(
    path: str | Path,
    size: tuple[int, int] = (128, 256),
    seed: int = 3,
    frame: int = 12,
    scene: str = "street",
) -> Path:
    """A figure: one row per domain, columns RGB | semantic | depth | normals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtl_perception.imaging import colorize_normals, colorize_semantic

    from .classes import INDOOR_PALETTE, PALETTE
    from .synthetic import DOMAINS, SyntheticGenerator

    palette = INDOOR_PALETTE if scene == "indoor" else PALETTE
    fig, axes = plt.subplots(len(DOMAINS), 4, figsize=(16, 2.3 * len(DOMAINS) * size[0] / size[1] * 2))
    with SyntheticGenerator(*size) as gen:
        for r, dom in enumerate(DOMAINS):
            c = gen.clip(seed, frame + 1, dom, scene)
            d = c.depth[frame]
            inv = np.where(d > 0, 1.0 / np.maximum(d, 1e-3), 0)  # inverse depth reads better
            n = c.normals[frame]
            panels = [
                c.rgb[frame],
                colorize_semantic(c.semantic[frame], palette),
                inv,
                # the node's ~/normals/color mapping; invalid pixels (no surface) black
                np.where((d > 0)[..., None], colorize_normals(n), 0),
            ]
            titles = ["RGB", "semantic", "inverse depth", "normals"]
            for k, (ax, im) in enumerate(zip(axes[r], panels)):
                ax.imshow(im, cmap="magma" if k == 2 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[k])
            axes[r][0].set_ylabel(dom)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def measure_fps(
    sizes: list[tuple[int, int]],
    frames: int = 32,
    domains: tuple[str, ...] = ("source", "target"),
    scene: str = "street",
) -> list[tuple[str, int, int, float]]:
    """Frames per second of the generator (render + read-back + post-processing), excluding setup."""
    from .synthetic import SyntheticGenerator

    rows = []
    for H, W in sizes:
        with SyntheticGenerator(H, W) as gen:
            list(gen.iter_frames(0, 2, "source", scene))  # warm up: shader compile, JIT
            for dom in domains:
                it = gen.iter_frames(1, frames, dom, scene)
                next(it)  # scene build + upload is per clip, not per frame
                t0 = time.perf_counter()
                n = sum(1 for _ in it)
                rows.append((dom, H, W, n / (time.perf_counter() - t0)))
    return rows


def cmd_preview(args: argparse.Namespace) -> int:
    print(render_strip(args.out, args.size, args.seed, scene=args.scene))
    return 0


def cmd_fps(args: argparse.Namespace) -> int:
    rows = measure_fps(args.sizes, args.frames, scene=args.scene)
    print(f"{'domain':8s} {'size':>9s} {'fps':>7s}")
    for dom, H, W, fps in rows:
        print(f"{dom:8s} {f'{H}x{W}':>9s} {fps:7.1f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl-data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="render synthetic labelled clips to DIR/clip_XXXXXX/")
    g.add_argument("--domain", choices=("source", "target"), default="source")
    g.add_argument("--scene", choices=("street", "indoor"), default="street")
    g.add_argument("--clips", type=_positive, default=1)
    g.add_argument("--frames", type=_positive, default=16)
    g.add_argument("--size", type=_size, default=(128, 256), help="HxW, e.g. 128x256")
    g.add_argument("--seed", type=_seed, default=0, help="clip i uses seed + i")
    g.add_argument("--cut-every", type=_count, default=0, help="cut to a new scene every N frames (0: none)")
    g.add_argument("--turn-every", type=_count, default=0, help="fast camera turn every N frames (0: none)")
    g.add_argument("--randomize", type=_randomize, default=(), metavar="OPTS",
                   help="per-clip appearance randomisation: 'all' or a comma list of texture, lighting, "
                        "color, blur, noise, camera (deterministic per seed; default none)")
    g.add_argument("--bag", action="store_true", help="also write each clip as a rosbag2 folder")
    g.add_argument("--out", required=True)
    g.set_defaults(func=cmd_generate)
    v = sub.add_parser("preview", help="write the RGB | semantic | depth | normals strip (both domains)")
    v.add_argument("--out", default="docs/synthetic_strip.png")
    v.add_argument("--size", type=_size, default=(128, 256))
    v.add_argument("--seed", type=int, default=3)
    v.add_argument("--scene", choices=("street", "indoor"), default="street")
    v.set_defaults(func=cmd_preview)
    f = sub.add_parser("fps", help="print the generator's frames per second")
    f.add_argument("--sizes", type=_size, nargs="+", default=[(128, 256), (256, 512)])
    f.add_argument("--frames", type=int, default=32)
    f.add_argument("--scene", choices=("street", "indoor"), default="street")
    f.set_defaults(func=cmd_fps)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "generate" and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out!r}: a file, not a folder")
    if args.cmd in ("generate", "preview", "fps"):
        from .synthetic import egl_available

        ok, why = egl_available()
        if not ok:
            print(
                f"mtl-data: no headless OpenGL (EGL) context: {why}\n"
                "install libegl1 libgl1-mesa-dri (Debian) and moderngl",
                file=sys.stderr,
            )
            return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
