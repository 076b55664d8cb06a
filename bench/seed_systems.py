"""Seed-system decoder variants (issue 13) beside the plain MILA decoder: parameters, MACs per frame
of a K = 5 stream, and the CPU latency of a non-keyframe step (torch, batch 1, one thread).

    python bench/seed_systems.py [--size 64x128] [--runs 20]          # cost table only
    python bench/seed_systems.py --uda [--steps 20 --seeds 0 1 ...]     # + source-only vs adapted

Scale: the tiny test models (config/model/{tiny,densemtl_tiny,mti_net_tiny,astmt_tiny}.yaml,
ResNet-34/18 width 8, 32 feature channels) at 64x128 unless --size says otherwise; random weights.
MACs by thop (conv/BN/linear layers): the attention matrix products (ILA, xTAM) are not in them.
Latency on a shared CPU is indicative only.

``--uda`` (bench/seed_uda.py) trains every variant on the synthetic source domain, source-only and
with multi-task output-space UDA toward the unlabelled synthetic target domain (DenseMTL Sec. 4.5),
plus MILA's single-task UDA baseline (three one-task models, DenseMTL Table 6), and prints one
table on the target domain's labelled validation clips (the target's labels are used there only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtl_perception.model import ModelConfig, build_model
from mtl_perception.model.flops import average_macs, frame_macs

VARIANTS = {"MILA (se_conv)": "tiny", "DenseMTL": "densemtl_tiny", "MTI-Net": "mti_net_tiny",
            "ASTMT (T tasks batched)": "astmt_tiny", "ASTMT (one pass per task)": "astmt_tiny"}


def nonkey_latency_ms(model: torch.nn.Module, size: tuple[int, int], runs: int) -> float:
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        _, st = model.step(x, None, True)
        _, st = model.step(x, st, False)
        times = []
        for i in range(runs + 3):
            t0 = time.perf_counter()
            model.step(x, st, False)
            if i >= 3:  # warm-up
                times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="64x128", help="HxW input")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--uda", action="store_true", help="train source-only vs adapted (bench/seed_uda.py)")
    args, rest = ap.parse_known_args()
    if args.uda:
        from seed_uda import main as uda_main

        uda_main(rest + ["--size", args.size, "--runs", str(args.runs)])
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)
    print(f"| decoder | params | MMACs/frame (K=5) | MMACs non-key | non-key CPU ms (median {args.runs}) |")
    print("|---|---:|---:|---:|---:|")
    for label, name in VARIANTS.items():
        torch.manual_seed(0)
        cfg = ModelConfig.from_yaml(f"config/model/{name}.yaml")
        cfg.input_size = (h, w)
        model = build_model(cfg).eval()
        if "one pass" in label:
            model.joint.batched = False
        macs = frame_macs(model, (h, w))
        params = sum(p.numel() for p in model.parameters())
        ms = nonkey_latency_ms(model, (h, w), args.runs)
        print(f"| {label} | {params / 1e3:.1f} k | {average_macs(macs, 5) / 1e6:.1f} | "
              f"{macs['nonkey'] / 1e6:.1f} | {ms:.1f} |")


if __name__ == "__main__":
    main()
