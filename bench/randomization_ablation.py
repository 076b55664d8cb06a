"""What each appearance randomisation option of the synthetic generator is worth on the target
domains (issue 16; docs/data.md, "Randomisation ablation").

    nice -n 19 python bench/randomization_ablation.py [--out runs/randomization_ablation]
        [--steps 120] [--clips 80] [--frames 4] [--seeds-all 0 1] [--seeds-none 0 1] [--seeds-loo 0]
        [--only all_s0 no-blur_s0 ...] [--real-frames 100] [--table-only] [--json table.json]

One short run of the default model's slow stage (config/train/randomization_ablation.yaml: the
single-frame network from the ImageNet encoders) per variant of ``mtl-data generate --randomize``:

* ``none``: the plain source domain (no randomisation);
* ``all``: every option of :data:`training.data.randomize.OPTIONS`;
* ``no-X``: every option but X (leave-one-out: what X adds on top of all the others).

Every run trains the same steps on clips of the same seeds (0..clips-1); only the randomisation
and, for the repeats, the training seed differ. A second seed of ``all`` (and of ``none``) gives
the noise floor: a leave-one-out difference smaller than the spread between two seeds of the same
variant is no measurable effect.

Each finished run is scored, at the network's input size, slow encoder only (K = 1, every frame
a keyframe):

* on the synthetic target domain (``mtl-data generate --domain target``, seeds 200000+, never
  trained on): mIoU, depth abs-rel %, normals mean angle (training.evaluate, mode ``slow``);
* on the two real clips, unlabelled (bench/real_video.py's label-free figures, ``slow K=1``
  mode, first ``--real-frames`` frames): flip %, sky share of the top / bottom third, depth order.

Resumable: a data folder with all its clips, a run with ``stage_slow.pt`` and a run with
``result.json`` are each skipped; an interrupted training resumes from its ``last.pt``. Run it
under ``nice -n 19`` (training is one thread; the children inherit the niceness).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from training.data.cli import ensure_clips  # noqa: E402
from training.data.randomize import OPTIONS  # noqa: E402

CONFIG = ROOT / "config" / "train" / "randomization_ablation.yaml"
TARGET_SEED = 200000  # models/mila_street_lite.md: the synthetic target domain's seeds
GEN_SIZE = "128x256"  # what the shipped model's data is rendered at; the loader resizes


@dataclass(frozen=True)
class Variant:
    """One training run: a randomisation (``options``, canonical order) and a training seed."""

    name: str
    options: tuple[str, ...]
    seed: int

    @property
    def run(self) -> str:
        return f"{self.name}_s{self.seed}"

    @property
    def randomize(self) -> str:
        """The ``mtl-data generate --randomize`` argument."""
        return ",".join(self.options) if self.options else "none"


def variant_options(name: str, options: Sequence[str] = OPTIONS) -> tuple[str, ...]:
    """``none`` -> (), ``all`` -> ``options``, ``no-X`` -> ``options`` without X; else ValueError."""
    if name == "none":
        return ()
    if name == "all":
        return tuple(options)
    if name.startswith("no-") and name[3:] in options:
        return tuple(o for o in options if o != name[3:])
    raise ValueError(f"unknown variant {name!r}; expected 'none', 'all' or 'no-X' with X in {list(options)}")


def variants(options: Sequence[str] = OPTIONS, seeds_all: Sequence[int] = (0, 1),
             seeds_none: Sequence[int] = (0, 1), seeds_loo: Sequence[int] | None = None) -> list[Variant]:
    """The runs in the order they are worth having when time runs out: the two ends first, the
    ``all`` repeats (noise floor) next, then each leave-one-out (``seeds_loo``, default the first
    ``all`` seed), the ``none`` repeats, and last the leave-one-out repeats."""
    def v(name: str, seed: int) -> Variant:
        return Variant(name, variant_options(name, options), seed)

    loo = list(seeds_loo) if seeds_loo is not None else list(seeds_all[:1]) or [0]
    out = [v("none", seeds_none[0])] if seeds_none else []
    out += [v("all", s) for s in seeds_all]
    out += [v(f"no-{o}", loo[0]) for o in options] if loo else []
    out += [v("none", s) for s in seeds_none[1:]]
    out += [v(f"no-{o}", s) for s in loo[1:] for o in options]
    return out


# -- the three steps of a run: data, training, scoring -----------------------------------------
def generate(folder: Path, clips: int, frames: int, seed: int, randomize: str = "none",
             domain: str = "source") -> None:
    """``mtl-data generate`` into ``folder`` unless it already holds every clip."""
    ensure_clips(folder, clips, frames, GEN_SIZE, seed=seed, domain=domain, randomize=randomize)


def train(run_dir: Path, data: Path, seed: int, steps: int, config: Path = CONFIG) -> float:
    """The slow stage into ``run_dir`` (resumed from its last.pt); returns the seconds it took."""
    if (run_dir / "stage_slow.pt").is_file():
        return math.nan
    cmd = [sys.executable, "-m", "training.trainer", "--config", str(config), "--no-progress",
           "--set", f"out={run_dir}", "--set", f"seed={seed}", "--set", f"data.train.root={data}",
           "--set", f"data.val.root={data}", "--set", f"stages.0.steps_per_epoch={steps}"]
    if (run_dir / "last.pt").is_file():
        cmd.append("--resume")
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - t0


def score(checkpoint: Path, target: Path, videos: Sequence[Path], real_frames: int,
          eval_stride: int = 2) -> dict[str, Any]:
    """Target-domain metrics and the real clips' label-free figures, slow encoder only (K = 1)."""
    import numpy as np
    import torch
    from real_video import figures, run_modes

    from mtl_perception.model import load_model
    from mtl_perception.preprocess import resize_rgb
    from mtl_perception.tools import bagio
    from training.data import SyntheticClipDataset
    from training.evaluate import evaluate

    torch.set_num_threads(1)
    model, _ = load_model(checkpoint)
    model.eval()
    size = tuple(model.cfg.input_size)
    data = SyntheticClipDataset(target, clip_len=1, keyframe_interval=1, keyframe_offset=0, size=size,
                                stride=eval_stride)
    m = evaluate(model, data, mode="slow", keyframe_interval=1, count_macs=False)
    out: dict[str, Any] = {"target": {"miou": m["miou"], "abs_rel": 100 * m["abs_rel"],
                                      "mean_angle": m["mean_angle"], "frames": m["frames"]}, "real": {}}
    sky = list(model.cfg.class_names).index("sky")
    for v in videos:
        frames = np.stack([resize_rgb(rgb, size) for _, rgb in bagio.read_video(v, max_frames=real_frames)])
        res = run_modes(model, frames, 1, ("slow",))["slow"]
        out["real"][v.name] = {**figures(res["semantic"], res["depth"], sky), "frames": len(frames)}
    return out


# -- the table ----------------------------------------------------------------------------------
TARGET_COLS = [("miou", "mIoU", "{:.1f}"), ("abs_rel", "abs-rel %", "{:.1f}"),
               ("mean_angle", "mean°", "{:.1f}")]
REAL_COLS = [("flip", "flip %", "{:.1f}"), ("sky_top", "sky top %", "{:.1f}"),
             ("sky_bottom", "sky bot %", "{:.1f}"), ("depth_order", "depth ord %", "{:.0f}")]


def flat(result: dict[str, Any]) -> dict[str, float]:
    """One run's result.json -> ``{"miou": .., "bikes.mp4 flip": .., ...}``."""
    row = {k: float(result["target"][k]) for k, _, _ in TARGET_COLS}
    for video, f in sorted(result.get("real", {}).items()):
        row.update({f"{video} {k}": float(f[k]) for k, _, _ in REAL_COLS})
    return row


def results_table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: one row per run (run name -> result.json), target metrics then each video's."""
    if not results:
        return ["(no finished run)"]
    videos = sorted({v for r in results.values() for v in r.get("real", {})})
    head = ["run", "randomize"] + [f"target {h}" for _, h, _ in TARGET_COLS] + \
        [f"{v.split('.')[0]} {h}" for v in videos for _, h, _ in REAL_COLS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for run, r in results.items():
        cells = [run, r["randomize"]] + [fmt.format(r["target"][k]) for k, _, fmt in TARGET_COLS]
        for v in videos:
            f = r.get("real", {}).get(v)
            cells += [fmt.format(f[k]) if f else "-" for k, _, fmt in REAL_COLS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def effects(rows: dict[str, dict[str, float]],
            options: Sequence[str] = OPTIONS) -> dict[str, dict[str, float]]:
    """What each option adds on top of the rest: ``mean(all seeds) - mean(no-X seeds)`` per figure
    (positive = the figure is higher with X), plus ``all - none`` and the seed spreads (max - min
    over the seeds of one variant). ``rows``: run name (``NAME_sSEED``) -> :func:`flat` figures."""
    by: dict[str, list[dict[str, float]]] = {}
    for run, r in rows.items():
        by.setdefault(run.rsplit("_s", 1)[0], []).append(r)
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))  # flat()'s order: target first

    def mean(name: str, k: str) -> float:
        vals = [r[k] for r in by.get(name, []) if k in r]
        return statistics.fmean(vals) if vals else math.nan

    def spread(name: str, k: str) -> float:
        vals = [r[k] for r in by.get(name, []) if k in r]
        return max(vals) - min(vals) if len(vals) > 1 else math.nan

    out: dict[str, dict[str, float]] = {}
    for o in options:
        if f"no-{o}" in by:
            out[f"+{o}"] = {k: mean("all", k) - mean(f"no-{o}", k) for k in keys}
    out["all - none"] = {k: mean("all", k) - mean("none", k) for k in keys}
    out["spread all"] = {k: spread("all", k) for k in keys}
    out["spread none"] = {k: spread("none", k) for k in keys}
    return out


def noise_floor(eff: dict[str, dict[str, float]], name: str, key: str) -> float:
    """The seed spread an effect must exceed: a leave-one-out run is a near copy of ``all``, so
    ``+X`` is held against the ``all`` spread; ``all - none`` against the larger of both spreads
    (nan: fewer than two seeds, nothing to hold it against)."""
    names = ("spread all", "spread none") if name == "all - none" else ("spread all",)
    vals = [eff[n][key] for n in names if n in eff and eff[n][key] == eff[n][key]]
    return max(vals) if vals else math.nan


def effects_table(eff: dict[str, dict[str, float]]) -> list[str]:
    """Markdown: one row per effect; an entry not above its :func:`noise_floor` is marked ``~``
    (no measurable effect)."""
    if not eff:
        return []
    keys = list(next(iter(eff.values())))
    head = ["effect"] + keys
    lines = ["| " + " | ".join(head) + " |", "|---|" + "|".join(["---:"] * len(keys)) + "|"]
    for name, d in eff.items():
        cells = [name]
        for k in keys:
            v = d[k]
            if v != v:
                cells.append("-")
            elif name.startswith("spread"):
                cells.append(f"{v:.1f}")
            else:
                n = noise_floor(eff, name, k)
                cells.append(f"{v:+.1f}" if n != n or abs(v) > n else f"~{v:+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def load_results(out: Path, runs: Sequence[Variant]) -> dict[str, dict[str, Any]]:
    res = {}
    for v in runs:
        p = out / v.run / "result.json"
        if p.is_file():
            res[v.run] = json.loads(p.read_text())
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "randomization_ablation"))
    ap.add_argument("--config", default=str(CONFIG))
    ap.add_argument("--steps", type=int, default=120, help="slow-stage steps per run")
    ap.add_argument("--clips", type=int, default=80, help="training clips per variant (seeds 0..N-1)")
    ap.add_argument("--frames", type=int, default=4, help="frames per training clip")
    ap.add_argument("--target-clips", type=int, default=16)
    ap.add_argument("--target-frames", type=int, default=12)
    ap.add_argument("--seeds-all", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--seeds-none", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--seeds-loo", type=int, nargs="*", default=None,
                    help="training seeds of the leave-one-out runs (default: the first --seeds-all)")
    ap.add_argument("--only", nargs="+", default=None, metavar="RUN", help="run only these (e.g. all_s0)")
    ap.add_argument("--real-frames", type=int, default=100, help="frames of each real clip")
    ap.add_argument("--video", nargs="+", default=None, help="default: bench/real_video.py's two clips")
    ap.add_argument("--table-only", action="store_true", help="print the table of the finished runs")
    ap.add_argument("--json", default=None, help="also write every result and the effects here")
    a = ap.parse_args(argv)
    out = Path(a.out)
    runs = variants(OPTIONS, a.seeds_all, a.seeds_none, a.seeds_loo)
    if a.only:
        unknown = sorted(set(a.only) - {v.run for v in runs})
        if unknown:
            ap.error(f"--only: unknown run {unknown[0]!r}; runs: {[v.run for v in runs]}")
        runs = [v for v in runs if v.run in a.only]
    if not a.table_only:
        try:
            _run_all(a, out, runs)
        except subprocess.CalledProcessError as e:  # the child printed its own one-line reason
            print(f"randomization_ablation: {' '.join(map(str, e.cmd[1:4]))} ... exited {e.returncode}",
                  file=sys.stderr)
            return 1
        except RuntimeError as e:  # mtl-data generate failed; it printed its reason first
            print(f"randomization_ablation: {e}", file=sys.stderr)
            return 1
    results = load_results(out, runs)
    eff = effects({k: flat(r) for k, r in results.items()})
    print("\n".join(results_table(results) + [""] + effects_table(eff)))
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": results, "effects": eff}, indent=1))
    return 0


def _run_all(a: argparse.Namespace, out: Path, runs: Sequence[Variant]) -> None:
    """Data, training and scoring of every run not finished yet."""
    from real_video import default_videos

    videos = [Path(v) for v in a.video] if a.video else default_videos()
    target = out / "data" / "target"
    generate(target, a.target_clips, a.target_frames, TARGET_SEED, domain="target")
    for v in runs:
        run_dir = out / v.run
        if (run_dir / "result.json").is_file():
            continue
        data = out / "data" / v.name
        t0 = time.time()
        generate(data, a.clips, a.frames, 0, v.randomize)
        secs = train(run_dir, data, v.seed, a.steps, Path(a.config))
        r = {"run": v.run, "randomize": v.randomize, "seed": v.seed, "steps": a.steps, "clips": a.clips,
             "frames": a.frames, "train_seconds": secs, **score(run_dir / "stage_slow.pt", target, videos,
                                                                a.real_frames)}
        (run_dir / "result.json").write_text(json.dumps(r, indent=1))
        print(f"{v.run}: {time.time() - t0:.0f} s; target mIoU {r['target']['miou']:.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
