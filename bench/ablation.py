"""Ablation table of MILA (Tables 1, 3, 4, supplementary B) from short CPU runs on synthetic clips.

    python bench/ablation.py                          # generate data if missing, train, print
    python bench/ablation.py --variants full reuse    # a subset
    python bench/ablation.py --config config/train/d101_18_cityscapes.yaml --set device=cuda

One shared pretraining (stage slow, then stage fast) is trained once; every variant then runs the
joint stage from it (``init``; new propagation modules start fresh), exactly as the paper reuses one
pretrained slow/fast pair. Table 3 rows 1 and 3 ("without adversarial") are without the L1 term
too (supplementary): those variants train no alignment at all, and when the config's fast stage
aligns (the shared-decoder recipe) they get their own fast pretraining without it, from the same
slow stage. Every row is measured by :func:`training.evaluate.evaluate` (the Sec. 4.1
protocol: offsets 0..K-1, accuracy pooled, MACs per frame averaged). Re-running skips finished runs.

Baselines: "slow only, slow stage" is the slow network as the slow stage leaves it (the paper's
separately trained D101-MultiTask; the Δm reference), "fast only, fast stage" the fast encoder into
those decoders (shared-decoder recipe only); then both again from the reference variant after its
joint training. ``--slow-from OTHER_OUT`` reuses another run's slow stage, e.g. to compare the
paper's recipe (``--set stages.1.own_decoders=true --set stages.1.align=false``) on the same slow
network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_perception.model import load_model  # noqa: E402
from training.config import TrainConfig, apply_overrides  # noqa: E402
from training.evaluate import add_delta_m, build_dataset, evaluate, format_table  # noqa: E402
from training.trainer import Trainer  # noqa: E402

NO_ALIGN = {"l1": False, "adversarial": False}
# name -> (row label, model_override, align override)
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "reuse": ("slow-fast, no propagation (reuse keyframe features)", {"propagation": {"name": "reuse"}}, {}),
    "none_noadv": ("slow-fast, no ILA, no alignment (T3 r1)", {"propagation": {"name": "none"}},
                   NO_ALIGN),
    "none": ("slow-fast, no ILA, L1+adv (T3 r2)", {"propagation": {"name": "none"}}, {}),
    "no_mf_ts": ("ILA w/o MF&TS (T1)", {"propagation": {"multi_frame": False, "task_specific": False}}, {}),
    "no_ts": ("ILA w/o TS (T1)", {"propagation": {"task_specific": False}}, {}),
    "no_adv": ("ILA full, no alignment (T3 r3, supp. B)", {}, NO_ALIGN),
    "full": ("ILA full, L1+adv (ours, L=5)", {}, {}),
    # learned fusion; its decoders' first conv is wider, so it starts fresh from the pretraining
    "concat": ("ILA full, concat fusion (learned)", {"propagation": {"fusion": "concat"}}, {}),
    "w3": ("ILA L=3 (T4)", {"propagation": {"window": 3}}, {}),
    "w7": ("ILA L=7 (T4)", {"propagation": {"window": 7}}, {}),
    "global": ("global attention (T4)", {"propagation": {"name": "global"}}, {}),
}


def _config(base: dict[str, Any], **fields: Any) -> TrainConfig:
    data = json.loads(json.dumps(base))
    for k, v in fields.items():
        data[k] = v
    return TrainConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "config/train/cpu_ablation.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-clips", type=int, default=40)
    p.add_argument("--val-clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--train-only", action="store_true", help="train the missing runs, skip the table "
                   "(variants trained in parallel processes, evaluated by one later call)")
    p.add_argument("--slow-from", metavar="OUT", help="reuse OUT/pretrain/stage_slow.pt (another ablation "
                   "run's slow stage); train only the fast stage and the variants")
    args = p.parse_args(argv)
    t_start = time.time()
    import yaml

    base = apply_overrides(yaml.safe_load(Path(args.config).read_text()), args.overrides)
    base["model"] = str((ROOT / base["model"]) if not Path(base["model"]).is_absolute() else base["model"])
    out = Path(args.out)
    cfg0 = TrainConfig.from_dict(json.loads(json.dumps(base)))
    h, w = cfg0.model_config().input_size
    # The ablation runs on synthetic folders (a bare path in data.train/val means one).
    train_dir, val_dir = Path(cfg0.data.train.root), Path(cfg0.data.val.root)
    if not train_dir.is_absolute() and not train_dir.exists():
        train_dir, val_dir = out / "data/train", out / "data/val"
    from training.data.cli import ensure_clips

    ensure_clips(train_dir, args.train_clips, args.frames, f"{h}x{w}", seed=0)
    ensure_clips(val_dir, args.val_clips, args.frames, f"{h}x{w}", seed=10000)
    base["data"] = {**base.get("data", {}), "train": str(train_dir), "val": str(val_dir)}
    stages = base.get("stages") or [s.__dict__ for s in cfg0.stages]
    pre_stages = [s for s in stages if s["name"] in ("slow", "fast")]
    joint = [s for s in stages if s["name"] == "joint"]
    K = int(joint[0].get("keyframe_interval", 5)) if joint else 5

    timings: dict[str, float] = {}
    # 1) shared slow + fast pretraining
    pre_out = out / "pretrain"
    t0 = time.time()
    if not (pre_out / "stage_fast.pt").exists():
        if args.slow_from:
            # Same slow network as another ablation run (a recipe comparison on one slow stage):
            # only the fast stage trains here, from that run's slow checkpoint.
            src = Path(args.slow_from) / "pretrain" / "stage_slow.pt"
            if not src.is_file():
                p.error(f"--slow-from: no {src}")
            pre_out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, pre_out / "stage_slow.pt")
            fast = [s for s in pre_stages if s["name"] == "fast"]
            Trainer(_config(base, out=str(pre_out), stages=fast, variant="pretrain", init=str(src)),
                    resume=True, progress=args.progress).run()
        else:
            Trainer(_config(base, out=str(pre_out), stages=pre_stages, variant="pretrain"), resume=True,
                    progress=args.progress).run()
    timings["pretrain"] = time.time() - t0
    fast_aligns = any(s.get("align", True) for s in pre_stages if s["name"] == "fast")
    noalign_out = out / "pretrain_noalign"
    if fast_aligns and any(VARIANTS[n][2] == NO_ALIGN for n in args.variants):
        t0 = time.time()
        if not (noalign_out / "stage_fast.pt").exists():
            fast = [{**s, "align": False} for s in pre_stages if s["name"] == "fast"]
            Trainer(_config(base, out=str(noalign_out), stages=fast, variant="pretrain_noalign",
                            init=str(pre_out / "stage_slow.pt")), resume=True, progress=args.progress).run()
        timings["pretrain_noalign"] = time.time() - t0
    # 2) one joint run per variant
    for name in args.variants:
        _, mo, al = VARIANTS[name]
        run = out / name
        t0 = time.time()
        if not (run / "stage_joint.pt").exists():
            pre = noalign_out if (al == NO_ALIGN and fast_aligns) else pre_out
            cfg = _config(base, out=str(run), stages=joint, variant=name, init=str(pre / "stage_fast.pt"),
                          model_override={**base.get("model_override", {}), **_deep(base, mo)},
                          align={**base.get("align", {}), **al})
            Trainer(cfg, resume=True, progress=args.progress).run()
        timings[name] = time.time() - t0
        print(f"[ablation] {name}: trained in {timings[name]:.0f} s", file=sys.stderr, flush=True)
    train_s = time.time() - t_start
    if args.train_only:
        return 0
    # 3) the protocol on every checkpoint
    t0 = time.time()
    val = build_dataset(str(val_dir), cfg0.data.clip_len, K, (h, w), cfg0.data.val_stride)
    rows: list[tuple[str, dict[str, float]]] = []
    # The single-frame networks as pretrained (the paper's D101-/D18-MultiTask baselines): the slow
    # stage's model, and the fast stage's encoder into those decoders (not with its own decoders,
    # which that recipe drops). Then both again after the reference variant's joint training,
    # whose decoders have mostly seen fast features (4 of K offsets).
    model, _ = load_model(pre_out / "stage_slow.pt")
    rows.append(("slow only, slow stage (K=1)", evaluate(model, val, "slow", K)))
    if not any(s.get("own_decoders") for s in pre_stages):
        model, _ = load_model(pre_out / "stage_fast.pt")
        rows.append(("fast only, fast stage", evaluate(model, val, "fast", K)))
    ref = "full" if "full" in args.variants else args.variants[0]
    model, _ = load_model(out / ref / "stage_joint.pt")
    rows.append((f"slow only after joint [{ref}] (K=1)", evaluate(model, val, "slow", K)))
    if model.fast is not None:
        rows.append((f"fast only after joint [{ref}]", evaluate(model, val, "fast", K)))
    for name in args.variants:
        model, _ = load_model(out / name / "stage_joint.pt")
        rows.append((f"{VARIANTS[name][0]} [{name}]", evaluate(model, val, "slowfast", K)))
    add_delta_m(rows, 0)
    eval_s = time.time() - t0
    table = format_table(rows, baseline=rows[0][0])
    slow = rows[0][1]
    lines = [table, ""]
    for n, m in rows[1:]:
        rel = 100 * (m["miou"] - slow["miou"]) / slow["miou"]
        lines.append(f"{n}: mIoU {m['miou'] - slow['miou']:+.1f} pts vs slow-only ({rel:+.1f}%), "
                     f"MACs {100 * m['macs'] / slow['macs']:.0f}%")
    lines.append(f"\nK={K}, {len(val)} annotated val frames x {K} offsets; "
                 f"torch threads {torch.get_num_threads()}; training {train_s / 60:.1f} min, "
                 f"evaluation {eval_s / 60:.1f} min; per run (s): "
                 + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    text = "\n".join(lines)
    print(text)
    (out / "ablation.md").write_text(text + "\n")
    (out / "ablation.json").write_text(json.dumps([{"name": n, **m} for n, m in rows], indent=1))
    return 0


def _deep(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base['model_override']`` one level deep (propagation keys add up)."""
    mo = base.get("model_override", {})
    return {k: {**mo.get(k, {}), **v} if isinstance(v, dict) else v for k, v in over.items()}


if __name__ == "__main__":
    sys.exit(main())
