"""Frames per second of the synthetic generator at 128x256 and 256x512 for each domain.

Usage: python bench/data_fps.py [--frames 32]
"""

import sys

from training.data.cli import main

if __name__ == "__main__":
    sys.exit(main(["fps", "--sizes", "128x256", "256x512", *sys.argv[1:]]))
