"""Source-only vs adapted, for MILA and the seed decoders, on the synthetic source -> target split
(issue 13's measured table; run through ``python bench/seed_systems.py --uda``, docs/adaptation.md).

Protocol (every number from ``mtl-train``'s Trainer, in process):

1. Data (``mtl-data generate``, once, into --data): labelled source clips for training, a few source
   clips for the trainer's own per-stage validation, unlabelled *target-domain* clips for the
   adaptation (their labels are never read), labelled target clips for the evaluation only.
2. Per variant, one source-only pretraining (``--pretrain-steps``; protocol ``slow``: the slow
   stage; ``joint``: slow, then fast with shared decoders, skipped for MTI-Net).
3. From it, per seed, two branches of ``--steps`` steps with the same stage (``slow`` or
   ``joint`` K = 5): source-only, and ``adapt: {method: mtl_uda, stages: [that stage]}``.
4. STL-UDA (DenseMTL Table 6): per task a one-task MILA model (``model_override.tasks``),
   pretrained and adapted the same way with ``stl_uda``; the row joins each model's own task.
5. Evaluation on the labelled target clips: protocol ``slow`` streams every frame as a keyframe
   (K = 1, the slow path the adaptation trained); ``joint`` the K = 5 stream, all offsets.
   Delta_m (MTI-Net Eq. 2) against MILA source-only of the same seed. The cost columns are the
   architecture's: MACs per frame of a K = 5 stream, parameters, CPU latency of a non-keyframe.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mtl_perception.model import ModelConfig, build_model  # noqa: E402
from mtl_perception.model.flops import average_macs, frame_macs  # noqa: E402
from training.config import DatasetSpec, TrainConfig  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.metrics import delta_m  # noqa: E402
from training.trainer import Trainer  # noqa: E402

VARIANTS = {"MILA (se_conv)": "tiny", "DenseMTL": "densemtl_tiny", "MTI-Net": "mti_net_tiny",
            "ASTMT": "astmt_tiny"}
TASKS = ("semantic", "depth", "normals")
CLIP_LEN = 5
HEADER = ("| model | training | seed | mIoU↑ | depth abs↓ | depth rel %↓ | normals mean°↓ | Δm % vs MILA "
          "source-only↑ | MMACs/frame K=5 | params | non-key CPU ms |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
OWN = {"semantic": ("miou",), "depth": ("abs_err", "abs_rel"), "normals": ("mean_angle",)}


def make_data(root: Path, clips: int, size: str) -> None:
    """The four folders of the split (skipped when they hold their clips)."""
    from training.data.cli import ensure_clips

    sets = {"source": ("source", clips, 0), "source_val": ("source", 2, 10000),
            "target": ("target", clips, 20000), "target_val": ("target", 12, 30000)}
    for name, (domain, n, seed) in sets.items():
        ensure_clips(root / name, n, CLIP_LEN + 1, size, seed=seed, domain=domain)


def train(out: Path, model: str, args: argparse.Namespace, stages: list[dict[str, Any]], seed: int,
          init: Path | None = None, tasks: list[str] | None = None, method: str | None = None) -> Trainer:
    d = args.data
    cfg: dict[str, Any] = {
        "model": str(ROOT / f"config/model/{model}.yaml"), "out": str(out), "seed": seed,
        "threads": args.threads, "batch_size": args.batch, "ckpt_every": 10_000, "optim": {"lr": args.lr},
        "align": {"disc_hidden": 8}, "init": str(init) if init else None, "val_offsets": "last",
        "model_override": {"tasks": tasks} if tasks else {},
        "data": {"train": {"type": "synthetic", "root": str(d / "source")},
                 "val": {"type": "synthetic", "root": str(d / "source_val")},
                 "target": {"type": "synthetic", "root": str(d / "target")},
                 "clip_len": CLIP_LEN, "val_max_clips": 1, "val_stride": CLIP_LEN},
        "stages": stages}
    if method:
        cfg["adapt"] = {"method": method, "disc_hidden": args.disc_hidden, "lambda_adv": args.lambda_adv,
                        "stages": [stages[-1]["name"]]}
    trainer = Trainer(TrainConfig.from_dict(cfg), progress=False)
    trainer.run()
    return trainer


def target_eval(trainer: Trainer, args: argparse.Namespace) -> dict[str, float]:
    from training.data.registry import ClipSettings, build_dataset

    spec = DatasetSpec(type="synthetic", root=str(args.data / "target_val"))
    m = trainer.model
    clip = ClipSettings(CLIP_LEN, 5, tuple(m.cfg.input_size), 1)  # frames 4 and 5 of every clip
    ds = build_dataset(spec, "target_val", "val", clip)
    mode = "slow" if args.protocol == "slow" else "slowfast"
    return evaluate(m, ds, mode=mode, keyframe_interval=5, offsets="all", batch_size=4, count_macs=False)


def costs(model: torch.nn.Module, size: tuple[int, int], runs: int) -> dict[str, float]:
    from seed_systems import nonkey_latency_ms

    model = model.eval()
    macs = frame_macs(model, size)
    threads = torch.get_num_threads()
    with torch.no_grad():
        torch.set_num_threads(1)
        ms = nonkey_latency_ms(model, size, runs)
        torch.set_num_threads(threads)
    return {"macs": average_macs(macs, 5), "params": float(sum(p.numel() for p in model.parameters())),
            "ms": ms}


def stages_for(args: argparse.Namespace, model: str, steps: int, pretrain: bool) -> list[dict[str, Any]]:
    if args.protocol == "slow":
        return [{"name": "slow", "epochs": 1, "steps_per_epoch": steps}]
    if pretrain:
        st = [{"name": "slow", "epochs": 1, "steps_per_epoch": steps}]
        if model != "mti_net_tiny":  # MTI-Net's fast-only path needs the trunk pyramid: joint trains it
            st.append({"name": "fast", "epochs": 1, "steps_per_epoch": max(1, steps // 2)})
        return st
    return [{"name": "joint", "epochs": 1, "steps_per_epoch": steps, "keyframe_interval": 5}]


def _finished(out: Path) -> bool:
    """A run folder whose last.pt says every stage is done (an interrupted bench reuses it)."""
    try:
        return torch.load(out / "last.pt", weights_only=True)["meta"]["stage"] == "done"
    except (OSError, RuntimeError, KeyError):
        return False


def run_variant(label: str, model: str, args: argparse.Namespace, rows: list[dict[str, Any]],
                tasks: list[str] | None = None, method: str = "mtl_uda") -> None:
    """Pretraining, then per seed the source-only and adapted branches; finished runs (a bench
    killed half way) are reused from their folders, so rerunning the command continues."""
    tag = model + ("_" + "_".join(tasks) if tasks else "")
    pre = args.out / f"{tag}_pre"
    t0 = time.time()
    if not _finished(pre):
        train(pre, model, args, stages_for(args, model, args.pretrain_steps, True), 0, tasks=tasks)
    cfg = ModelConfig.from_yaml(ROOT / f"config/model/{model}.yaml")
    if tasks:
        cfg.tasks = tuple(tasks)
    cost = costs(build_model(cfg), args.hw, args.runs)  # the architecture's costs: weights do not matter
    for seed in sorted(set(args.seeds) | set(args.source_seeds)):
        for run, meth in (("source-only", None), ("adapted", method)):
            if (meth is None and (seed not in args.source_seeds or (tasks and not args.stl_source_only))
                    or meth is not None and seed not in args.seeds):
                continue
            out = args.out / f"{tag}_{run}_{seed}"
            done = out / "target_eval.json"
            if not done.exists():
                stages = stages_for(args, model, args.steps, False)
                tr = train(out, model, args, stages, seed, init=pre / "last.pt", tasks=tasks, method=meth)
                done.write_text(json.dumps(target_eval(tr, args)))
            rows.append({"label": label, "run": run, "seed": seed, "tasks": tasks or list(TASKS),
                         **json.loads(done.read_text()), **cost})
            print(fmt(rows[-1:], None, header=False), file=sys.stderr, flush=True)
    print(f"[{label}{' ' + '+'.join(tasks) if tasks else ''}: {time.time() - t0:.0f} s]", file=sys.stderr,
          flush=True)


def join_stl(rows: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """One STL row per (run, seed): each one-task model's own metrics; costs of all three models."""
    out = []
    for run in ("source-only", "adapted"):
        for seed in seeds:
            part = [r for r in rows if r["label"] == "STL" and r["run"] == run and r["seed"] == seed]
            if len(part) != len(TASKS):
                continue
            row: dict[str, Any] = {"label": "MILA STL x3", "run": run.replace("adapted", "STL-UDA"),
                                   "seed": seed}
            for r in part:  # each one-task model contributes its own task's metrics
                row.update({k: r[k] for k in OWN[r["tasks"][0]] if k in r})
            for k in ("macs", "params", "ms"):
                row[k] = sum(r[k] for r in part)
            out.append(row)
    return out


def fmt(rows: list[dict[str, Any]], base_seed: int | None, header: bool = True) -> str:
    """The table; Delta_m against MILA source-only of ``base_seed``."""
    base = next((r for r in rows if r["label"].startswith("MILA (") and r["run"] == "source-only"
                 and r["seed"] == base_seed), None)
    lines = list(HEADER) if header else []
    for r in rows:
        try:
            dm = f"{delta_m(r, base):+.2f}" if base is not None else "n/a"
        except ValueError:
            dm = "n/a"
        lines.append(f"| {r['label']} | {r['run']} | {r['seed']} | {r.get('miou', math.nan):.1f} | "
                     f"{r.get('abs_err', math.nan):.3f} | {100 * r.get('abs_rel', math.nan):.1f} | "
                     f"{r.get('mean_angle', math.nan):.1f} | {dm} | {r['macs'] / 1e6:.1f} | "
                     f"{r['params'] / 1e3:.1f} k | {r['ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=("slow", "joint"), default="slow")
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument("--steps", type=int, default=10, help="steps of each source-only / adapted branch")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the adapted runs")
    ap.add_argument("--source-seeds", type=int, nargs="+", default=[0], help="seeds of the source-only runs")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lambda-adv", type=float, default=5e-3)
    ap.add_argument("--disc-hidden", type=int, default=8)
    ap.add_argument("--clips", type=int, default=16, help="source and target training clips")
    # 1: on a shared, oversubscribed CPU two OpenMP threads spin at every barrier (measured 10x slower)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS.values()), help="config/model names")
    ap.add_argument("--no-stl", action="store_true", help="skip the STL-UDA rows")
    ap.add_argument("--stl-source-only", action="store_true", help="also the one-task source-only runs")
    ap.add_argument("--data", type=Path, default=Path("runs/seed_uda/data"))
    ap.add_argument("--out", type=Path, default=Path("runs/seed_uda"))
    ap.add_argument("--size", default="64x128")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args(argv)
    args.hw = tuple(int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    t0 = time.time()
    make_data(args.data, args.clips, args.size)
    rows: list[dict[str, Any]] = []
    stl: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    # MILA and its STL baseline first: the rows a short budget must not lose
    order = [("MILA (se_conv)", "tiny", None)] + [("STL", "tiny", t) for t in TASKS if not args.no_stl] + \
        [(label, name, None) for label, name in VARIANTS.items() if name != "tiny"]
    for label, name, task in order:
        if name not in args.variants:
            continue
        if task:
            run_variant("STL", name, args, stl, tasks=[task], method="stl_uda")
        else:
            run_variant(label, name, args, rows)
        (args.out / "results.json").write_text(json.dumps(rows + stl, indent=1, default=str))
    rows += join_stl(stl, sorted(set(args.seeds) | set(args.source_seeds)))
    print(f"protocol {args.protocol}: pretrain {args.pretrain_steps} + {args.steps} steps, batch "
          f"{args.batch}, adapted seeds {args.seeds}, source-only seeds {args.source_seeds}; accuracy on "
          f"the target domain's labelled clips; {time.time() - t0:.0f} s")
    print(fmt(rows, args.source_seeds[0]))
    for label in dict.fromkeys(r["label"] for r in rows):
        for run in ("source-only", "adapted", "STL-UDA"):
            sel = [r for r in rows if r["label"] == label and r["run"] == run and "miou" in r]
            if sel:
                print(f"# {label} {run}: mIoU mean {statistics.mean(r['miou'] for r in sel):.1f} over seeds "
                      f"{[r['seed'] for r in sel]}")


if __name__ == "__main__":
    main()
