"""Calibration frames for post-training quantization: a video, a bag topic or an image folder.

Everything becomes *clips*: (T, H, W, 3) uint8 RGB at the network's input size, resized with the
node's own preprocessing so calibration sees what the node feeds the network. Clips (not loose
frames) because the non-keyframe graph must be calibrated on real stream state: the FP32 stream is
run over each clip and its slot outputs become the slot inputs of the next graph run.

Synthetic clips written by ``mtl-data generate`` are image folders (``clip_*/rgb/*.png``): give the
folder. :func:`clips_hash` keys the quantized-graph cache, so a different calibration set means a
different file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..preprocess import resize_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def _chop(frames: Iterable[np.ndarray], clip_len: int, max_frames: int | None) -> list[np.ndarray]:
    """Consecutive frames -> clips of ``clip_len`` (a shorter last clip is kept if >= 2 frames)."""
    clips: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    n = 0
    for f in frames:
        if max_frames is not None and n >= max_frames:
            break
        cur.append(f)
        n += 1
        if len(cur) == clip_len:
            clips.append(np.stack(cur))
            cur = []
    if len(cur) >= 2 or (cur and not clips):
        clips.append(np.stack(cur))
    return clips


def clips_from_video(path: str | Path, size: tuple[int, int], clip_len: int = 10,
                     max_frames: int | None = 60, step: int = 1) -> list[np.ndarray]:
    """Frames of a video file (PyAV), resized to ``size`` (H, W)."""
    from ..tools.bagio import read_video

    frames = (resize_rgb(rgb, size) for _, rgb in read_video(path, step=step))
    clips = _chop(frames, clip_len, max_frames)
    if not clips:
        raise ValueError(f"video {str(path)!r}: no frames decoded")
    return clips


def clips_from_bag(path: str | Path, topic: str, size: tuple[int, int], clip_len: int = 10,
                   max_frames: int | None = 60) -> list[np.ndarray]:
    """Images of a bag topic (sensor_msgs/Image or CompressedImage), in time order."""
    from ..imaging import compressed_to_rgb, image_msg_to_rgb
    from ..tools.bagio import COMPRESSED, read_bag

    def frames() -> Iterable[np.ndarray]:
        for m in read_bag(path, topic):
            msg = m.deserialize()
            compressed = m.msgtype == COMPRESSED
            rgb = compressed_to_rgb(msg.format, msg.data) if compressed else image_msg_to_rgb(msg)
            yield resize_rgb(rgb, size)

    clips = _chop(frames(), clip_len, max_frames)
    if not clips:
        raise ValueError(f"bag {str(path)!r}: topic {topic!r} has no images")
    return clips


def clips_from_images(folder: str | Path, size: tuple[int, int], clip_len: int = 10,
                      max_frames: int | None = 60) -> list[np.ndarray]:
    """Images under ``folder``; each directory holding images is one sequence (sorted by name).
    If any directory is called ``rgb`` (``mtl-data generate`` clips), only those are read, so label
    images next to them are not mistaken for frames."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"images: no such folder {str(root)!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if any(p.parent.name == "rgb" for p in files):
        files = [p for p in files if p.parent.name == "rgb"]
    clips: list[np.ndarray] = []
    left = max_frames
    for d in sorted({p.parent for p in files}):
        if left is not None and left <= 0:
            break

        def frames(d: Path = d) -> Iterable[np.ndarray]:
            for p in files:
                if p.parent == d:
                    with Image.open(p) as im:
                        yield resize_rgb(np.asarray(im.convert("RGB")), size)

        got = _chop(frames(), clip_len, left)
        clips += got
        if left is not None:
            left -= sum(len(c) for c in got)
    if not clips:
        raise ValueError(f"images: no {'/'.join(IMAGE_SUFFIXES)} files under {str(root)!r}")
    return clips


def clips_hash(clips: list[np.ndarray]) -> str:
    """SHA-256 of the clip boundaries and every pixel: the calibration set's identity."""
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.shape}|".encode())
        h.update(np.ascontiguousarray(c, dtype=np.uint8).tobytes())
    return h.hexdigest()


def split_clips(clips: list[np.ndarray], held_out: float = 0.25) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration, held-out) clips: every n-th clip is held out for the accuracy gates, so they
    never see the frames the ranges were fitted on. One clip is split in halves."""
    if len(clips) == 1:
        c = clips[0]
        half = max(1, len(c) // 2)
        return [c[:half]], [c[half:]] if len(c) > half else [c]
    every = max(2, round(1 / held_out))
    idx = [i for i in range(len(clips)) if i % every == every - 1] or [len(clips) - 1]
    return [c for i, c in enumerate(clips) if i not in idx], [clips[i] for i in idx]
