"""Frames per second of the synthetic generator at 128x256 and 256x512 for each domain, and the
wall time of one 16-frame 128x256 clip from a cold start (context and shader setup included; this
used to be a wall-clock assertion in the tests).

Usage: python bench/data_fps.py [--frames 32]
"""

import sys
import time

from training.data import synthetic
from training.data.cli import main

if __name__ == "__main__":
    rc = main(["fps", "--sizes", "128x256", "256x512", *sys.argv[1:]])
    t0 = time.perf_counter()
    synthetic.generate_clip(9, 16, (128, 256), "target")
    print(f"{'cold 16-frame 128x256 clip':26s} {time.perf_counter() - t0:7.2f} s")
    sys.exit(rc)
