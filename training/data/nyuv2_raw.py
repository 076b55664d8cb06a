"""Raw NYU Depth V2 video aligned to the labelled frames, so NYUv2 clips hold real preceding frames.

The raw release is one folder per recording (what the NYU toolbox reads):

    RAW/bedroom_0001/r-1294886363.014233-2839434974.ppm    RGB 640x480 (P6)
    RAW/bedroom_0001/d-1294886362.985542-2837417218.pgm    depth 640x480 (P5, 16 bit)
    RAW/bedroom_0001/a-1294886363.009468-2838989690.dump   accelerometer
    RAW/bedroom_0001/INDEX.txt                             the folder's file names

``<kind>-<timestamp>-<counter>``: the timestamp is in seconds. RGB and depth are recorded
unsynchronised; the toolbox (``get_synched_frames.m``) pairs each depth frame with the RGB frame
nearest in time. A labelled frame is named by its raw RGB file (``rawRgbFilenames`` of
``nyu_depth_v2_labeled.mat``) or raw depth file (``rawDepthFilenames``); a depth name resolves to
the RGB frame nearest in time, the toolbox's pairing. The clip's earlier frames are the RGB frames
recorded before it, in timestamp order (every ``step``-th), so they are distinct frames.

An index file maps the multi-task layout's sample ids to raw frames (one line per sample):

    ROOT/{split}/raw_index.txt     "<N> <scene>/<r-...ppm or d-...pgm>", '#' starts a comment
"""

from __future__ import annotations

from bisect import bisect_left
from pathlib import Path

import numpy as np

from mtl_perception.preprocess import resize_rgb

from .storage import read_image

INDEX_NAME = "raw_index.txt"


def timestamp(name: str) -> float:
    """Seconds from a raw file name ``r-1294886363.014233-2839434974.ppm``."""
    parts = Path(name).name.split("-")
    if len(parts) != 3 or parts[0] not in ("r", "d", "a"):
        raise ValueError(f"not a raw NYUv2 frame name: {name!r} (expected r-/d-<timestamp>-<n>.ppm/pgm)")
    try:
        return float(parts[1])
    except ValueError:
        raise ValueError(f"not a raw NYUv2 frame name: {name!r} (timestamp {parts[1]!r})") from None


def read_raw_index(path: Path) -> dict[int, tuple[str, str]]:
    """``{sample id: (scene, file name)}``; a malformed line fails naming the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"NYUv2 raw index not found: {path}")
    out: dict[int, tuple[str, str]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        rel = parts[1].split("/") if len(parts) == 2 else []
        if len(rel) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path} line {i}: expected '<sample id> <scene>/<r-...ppm>', got {line!r}")
        try:
            timestamp(rel[1])
        except ValueError as e:
            raise ValueError(f"{path} line {i}: {e}") from None
        out[int(parts[0])] = (rel[0], rel[1])
    return out


class RawFrames:
    """The RGB stream of each referenced scene and, per sample, the raw frames before it."""

    def __init__(self, raw_root: str | Path, index: str | Path, step: int = 1,
                 crop: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        if step < 1:
            raise ValueError("raw_step must be >= 1")
        self.root, self.step, self.crop = Path(raw_root), step, tuple(crop)
        if not self.root.is_dir():
            raise FileNotFoundError(f"NYUv2 raw folder not found: {self.root}")
        self.index_path = Path(index)
        self.index = read_raw_index(self.index_path)
        self._scenes: dict[str, tuple[list[float], list[str]]] = {}

    def _scene(self, scene: str) -> tuple[list[float], list[str]]:
        """(timestamps, names) of the scene's RGB frames, sorted by time."""
        if scene not in self._scenes:
            d = self.root / scene
            if not d.is_dir():
                raise FileNotFoundError(f"NYUv2 raw scene folder not found: {d} (named in {self.index_path})")
            # INDEX.txt lists the folder (the toolbox reads it instead of a slow directory listing).
            listing = (d / "INDEX.txt").read_text().split() if (d / "INDEX.txt").is_file() else \
                [p.name for p in d.iterdir()]
            frames = sorted((timestamp(n), n) for n in listing if n.startswith("r-") and n.endswith(".ppm"))
            if not frames:
                raise FileNotFoundError(f"no r-*.ppm frames in {d}")
            self._scenes[scene] = ([t for t, _ in frames], [n for _, n in frames])
        return self._scenes[scene]

    def anchor(self, sample: int) -> tuple[str, int]:
        """(scene, position in the scene's RGB stream) of the labelled frame ``sample``."""
        if sample not in self.index:
            raise ValueError(f"{self.index_path}: no line for sample {sample}")
        scene, name = self.index[sample]
        times, names = self._scene(scene)
        if name.startswith("r-"):
            if name not in names:
                raise FileNotFoundError(f"{self.index_path}: {scene}/{name} is not in {self.root / scene}")
            return scene, names.index(name)
        # A depth frame: the RGB frame nearest in time (get_synched_frames' pairing).
        t = timestamp(name)
        j = bisect_left(times, t)
        near = min((k for k in (j - 1, j) if 0 <= k < len(times)), key=lambda k: abs(times[k] - t))
        return scene, near

    def preceding(self, sample: int, n: int) -> list[Path]:
        """Up to ``n`` RGB frames recorded before the labelled frame, every ``step``-th, oldest first."""
        scene, pos = self.anchor(sample)
        names = self._scene(scene)[1]
        picks = [names[k] for k in range(pos - self.step, -1, -self.step)][:n]
        return [self.root / scene / name for name in reversed(picks)]

    def read(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        """A raw frame, cropped by ``crop`` (top, bottom, left, right) and resized to ``size`` (H, W)
        so it stacks with the labelled frame of the layout."""
        rgb = read_image(path, "NYUv2 raw")
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise ValueError(f"malformed NYUv2 raw frame {path}: shape {rgb.shape}")
        top, bottom, left, right = self.crop
        rgb = rgb[top:rgb.shape[0] - bottom, left:rgb.shape[1] - right, :3]
        return resize_rgb(np.ascontiguousarray(rgb), size)
