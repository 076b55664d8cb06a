"""Training throughput and final metrics, FP32 vs bf16 autocast (``--amp``), on the tiny config.

    python bench/train_amp.py                       # CPU, ~2-3 min
    python bench/train_amp.py --steps 200 --set device=cuda --amps off bf16 fp16
    python bench/train_amp.py --amps off --set model=bench/small.yaml --set model_override.num_classes=8 \
        --size 256x512 --steps 4 --val-clips 1 --set val_offsets=last      # the small model

Each precision trains the same schedule from the same seed on the same synthetic clips (a slow
stage on single frames, then a short joint stage on clips) and is validated in FP32 under the
evaluation protocol. Throughput counts training steps only (the first step of each stage, with
one-off allocation, excluded): slow-stage frames/s and joint-stage clips/s (batch x steps/s; a clip
is ``clip_len`` frames through the slow-fast stream).
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

    step_times: list[tuple[str, float]]  # (stage, seconds)

    def train_step(self, batch):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        out = super().train_step(batch)
        self.step_times.append((self.stage.name, time.perf_counter() - t0))
        return out


def _rate(times: list[tuple[str, float]], stage: str) -> float:
    """Steps/s of ``stage``, its first step (one-off allocation) excluded."""
    t = [dt for name, dt in times if name == stage][1:]
    return len(t) / sum(t) if t else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config/train/tiny.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/bench_amp")
    p.add_argument("--amps", nargs="+", default=["off", "bf16"])
    p.add_argument("--steps", type=int, default=40, help="slow-stage steps (the joint stage runs half)")
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--val-clips", type=int, default=3)
    p.add_argument("--joint-steps", type=int, help="joint-stage steps (default: half of --steps)")
    p.add_argument("--size", default="64x128", help="HxW of the generated clips and the model input")
    args = p.parse_args(argv)
    import yaml

    from training.data.cli import ensure_clips

    out = Path(args.out)
    for split, n, seed in (("train", args.clips, 0), ("val", args.val_clips, 10000)):
        ensure_clips(out / "data" / split, n, 6, args.size, seed=seed)
    base = apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.overrides)
    base["model"] = str(ROOT / base["model"]) if not Path(base["model"]).is_absolute() else base["model"]
    base["data"] = {**base.get("data", {}), "train": str(out / "data/train"), "val": str(out / "data/val"),
                    "val_max_clips": args.val_clips}
    h, w = (int(v) for v in args.size.lower().split("x"))
    base["model_override"] = {**base.get("model_override", {}), "input_size": [h, w]}
    joint = args.joint_steps or max(1, args.steps // 2)
    base["stages"] = [{"name": "slow", "epochs": 1, "steps_per_epoch": args.steps},
                      {"name": "joint", "epochs": 1, "steps_per_epoch": joint, "keyframe_interval": 5}]
    rows = []
    for amp in args.amps:
        cfg = TrainConfig.from_dict({**json.loads(json.dumps(base)), "amp": amp, "out": str(out / amp)})
        t = _Timed(cfg, progress=False)
        t.step_times = []
        val = t.run()
        times = [dt for _, dt in t.step_times[1:]]
        rows.append((amp, len(times) / sum(times), _rate(t.step_times, "slow"), _rate(t.step_times, "joint"),
                     val))
        print(f"[train_amp] {amp}: {rows[-1][1]:.2f} steps/s", file=sys.stderr, flush=True)
    nan = float("nan")
    b = int(base.get("batch_size", 4))
    lines = ["| amp | steps/s | speed-up | slow frames/s | joint clips/s | train loss | val mIoU "
             "| depth abs (m) | normals angle (deg) |", "|" + "---|" * 9]
    for amp, sps, slow, jnt, val in rows:
        lines.append(f"| {amp} | {sps:.2f} | {sps / rows[0][1]:.2f}x | {b * slow:.2f} | {b * jnt:.3f} | "
                     f"{val.get('train_total', nan):.3f} | {val.get('val_miou', nan):.1f} | "
                     f"{val.get('val_abs_err', nan):.3f} | {val.get('val_mean_angle', nan):.1f} |")
    lines.append(f"\n{args.steps} slow + {joint} joint steps at {h}x{w}, batch {b}, clip_len "
                 f"{base.get('data', {}).get('clip_len')}, torch threads {torch.get_num_threads()}, "
                 f"device {base.get('device', 'cpu')}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
