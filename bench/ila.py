"""ILA implementations at one feature size: time and peak memory on this CPU.

    python bench/ila.py [--size 1024x2048] [--window 5] [--repeats 3]

Compares the F.unfold reference, the shift-and-accumulate loop (eager, and channels_last under
torch.compile). Feature map = input / 8 with 512 channels and 32-channel keys, batch 1.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from mtl_perception.model.ila import local_attention, reference_local_attention


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up (and compile)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x2048")
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--impl", choices=["unfold", "shift", "compiled"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    h, w = (int(v) // 8 for v in args.size.lower().split("x"))
    if args.impl is None:
        # each implementation in its own process so peak memory is its own
        import subprocess

        print(f"ILA, input {args.size} (features 512x{h}x{w}, keys 32), L = {args.window}, "
              f"{torch.get_num_threads()} threads")
        print(f"{'implementation':<28} {'median ms':>10} {'peak RSS MB':>12}")
        for impl in ("unfold", "shift", "compiled"):
            out = subprocess.run([sys.executable, __file__, "--size", args.size, "--window", str(args.window),
                                  "--repeats", str(args.repeats), "--impl", impl],
                                 capture_output=True, text=True)
            print(out.stdout.strip() or f"{impl:<28} failed: {out.stderr.strip().splitlines()[-1:]}")
        return
    torch.manual_seed(0)
    q, k = torch.randn(1, 32, h, w), torch.randn(1, 32, h, w)
    v = torch.randn(1, 512, h, w)
    base = peak_rss_mb()
    with torch.no_grad():
        if args.impl == "unfold":
            ms = timed(lambda: reference_local_attention(q, k, v, args.window), args.repeats)
            label = "F.unfold reference"
        elif args.impl == "shift":
            ms = timed(lambda: local_attention(q, k, v, args.window), args.repeats)
            label = "shift loop, eager, in place"
        else:
            cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
            fn = torch.compile(lambda a, b, c: local_attention(a, b, c, args.window))
            ms = timed(lambda: fn(*cl), args.repeats)
            label = "shift loop, compiled, NHWC"
    print(f"{label:<28} {ms * 1e3:>10.1f} {peak_rss_mb() - base:>12.0f}")


if __name__ == "__main__":
    main()
