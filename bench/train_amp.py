"""Training throughput and final metrics, FP32 vs bf16 autocast (``--amp``), on the tiny config.

    python bench/train_amp.py                       # CPU, ~2-3 min
    python bench/train_amp.py --steps 200 --set device=cuda --amps off bf16 fp16

Each precision trains the same schedule from the same seed on the same synthetic clips (a slow
stage, then a short joint stage) and is validated in FP32 under the evaluation protocol; steps/s
counts training steps only (the first step, with one-off allocation, excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import TrainConfig, apply_overrides  # noqa: E402
from training.trainer import Trainer  # noqa: E402


class _Timed(Trainer):
    """A Trainer that records the wall time of every training step."""

    step_times: list[float]

    def train_step(self, batch):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = super().train_step(batch)
        self.step_times.append(time.perf_counter() - t0)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config/train/tiny.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/bench_amp")
    p.add_argument("--amps", nargs="+", default=["off", "bf16"])
    p.add_argument("--steps", type=int, default=40, help="slow-stage steps (the joint stage runs half)")
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--val-clips", type=int, default=3)
    args = p.parse_args(argv)
    import yaml

    from training.data.cli import main as data_main

    out = Path(args.out)
    for split, n, seed in (("train", args.clips, 0), ("val", args.val_clips, 10000)):
        if not (out / "data" / split / f"clip_{n - 1:06d}").exists():
            data_main(["generate", "--clips", str(n), "--frames", "6", "--size", "64x128",
                       "--seed", str(seed), "--out", str(out / "data" / split)])
    base = apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.overrides)
    base["model"] = str(ROOT / base["model"]) if not Path(base["model"]).is_absolute() else base["model"]
    base["data"] = {**base.get("data", {}), "train": str(out / "data/train"), "val": str(out / "data/val"),
                    "val_max_clips": args.val_clips}
    base["stages"] = [{"name": "slow", "epochs": 1, "steps_per_epoch": args.steps},
                      {"name": "joint", "epochs": 1, "steps_per_epoch": max(1, args.steps // 2),
                       "keyframe_interval": 5}]
    rows = []
    for amp in args.amps:
        cfg = TrainConfig.from_dict({**json.loads(json.dumps(base)), "amp": amp, "out": str(out / amp)})
        t = _Timed(cfg, progress=False)
        t.step_times = []
        val = t.run()
        times = t.step_times[1:]
        rows.append((amp, len(times) / sum(times), val))
        print(f"[train_amp] {amp}: {rows[-1][1]:.2f} steps/s", file=sys.stderr, flush=True)
    nan = float("nan")
    lines = ["| amp | steps/s | speed-up | train loss | val mIoU | depth abs (m) | normals angle (deg) |",
             "|" + "---|" * 7]
    for amp, sps, val in rows:
        lines.append(f"| {amp} | {sps:.2f} | {sps / rows[0][1]:.2f}x | {val.get('train_total', nan):.3f} | "
                     f"{val.get('val_miou', nan):.1f} | {val.get('val_abs_err', nan):.3f} | "
                     f"{val.get('val_mean_angle', nan):.1f} |")
    joint = max(1, args.steps // 2)
    lines.append(f"\n{args.steps} slow + {joint} joint steps, batch {base.get('batch_size')}, "
                 f"torch threads {torch.get_num_threads()}, device {base.get('device', 'cpu')}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
