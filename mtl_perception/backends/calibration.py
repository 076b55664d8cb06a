"""Calibration frames for post-training quantization: a video, a bag topic or an image folder.

Everything becomes *clips*: (T, H, W, 3) uint8 RGB at the network's input size, resized with the
node's own preprocessing so calibration sees what the node feeds the network. Clips (not loose
frames) because the non-keyframe graph must be calibrated on real stream state: the FP32 stream is
run over each clip and its slot outputs become the slot inputs of the next graph run.

Synthetic clips written by ``mtl-data generate`` are image folders (``clip_*/rgb/*.png``): give the
folder; :func:`labelled_clips_from_images` also reads their ground truth (semantic, depth, normals
next to ``rgb/``), so the accuracy gates can be measured against labels (the issue's form) instead
of against FP32's outputs. :func:`clips_hash` keys the quantized-graph cache, so a different
calibration set means a different file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import resize_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def _chop(frames: Iterable[Any], clip_len: int, max_frames: int | None,
          join: Callable[[list[Any]], Any] = np.stack) -> list[Any]:
    """Consecutive frames -> clips of ``clip_len`` (a shorter last clip is kept if >= 2 frames)."""
    clips: list[Any] = []
    cur: list[Any] = []
    n = 0
    for f in frames:
        if max_frames is not None and n >= max_frames:
            break
        cur.append(f)
        n += 1
        if len(cur) == clip_len:
            clips.append(join(cur))
            cur = []
    if len(cur) >= 2 or (cur and not clips):
        clips.append(join(cur))
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


def _image_paths(folder: str | Path, clip_len: int, max_frames: int | None) -> list[list[Path]]:
    """Image files under ``folder`` cut into clips; each directory holding images is one sequence
    (sorted by name). If any directory is called ``rgb`` (``mtl-data generate`` clips), only those
    are read, so label images next to them are not mistaken for frames."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"images: no such folder {str(root)!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if any(p.parent.name == "rgb" for p in files):
        files = [p for p in files if p.parent.name == "rgb"]
    clips: list[list[Path]] = []
    left = max_frames
    for d in sorted({p.parent for p in files}):
        if left is not None and left <= 0:
            break
        got = _chop((p for p in files if p.parent == d), clip_len, left, join=list)
        clips += got
        if left is not None:
            left -= sum(len(c) for c in got)
    if not clips:
        raise ValueError(f"images: no {'/'.join(IMAGE_SUFFIXES)} files under {str(root)!r}")
    return clips


def _read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return resize_rgb(np.asarray(im.convert("RGB")), size)


def clips_from_images(folder: str | Path, size: tuple[int, int], clip_len: int = 10,
                      max_frames: int | None = 60) -> list[np.ndarray]:
    """Images under ``folder``, resized to ``size``; see :func:`_image_paths` for the layout."""
    return [np.stack([_read_rgb(p, size) for p in c]) for c in _image_paths(folder, clip_len, max_frames)]


# Label folders next to ``rgb/`` in a ``mtl-data generate`` clip (training/data/storage.py documents
# the format; this runtime package does not import training, so the few decoding lines live here).
LABEL_DIRS = ("semantic", "depth", "normals")
DEPTH_SCALE = 100.0  # stored units (cm) per metre


def read_labels(rgb_path: Path, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Ground truth of one generated frame at ``size`` (nearest resize if it differs):
    semantic (H, W) int64 (255 ignore), depth (H, W) float32 m (0 invalid), normals (H, W, 3)
    float32 unit vectors (0 invalid)."""
    from PIL import Image

    clip, name = rgb_path.parent.parent, rgb_path.name
    raw = {}
    for what in LABEL_DIRS:
        path = clip / what / name
        try:
            with Image.open(path) as im:
                if im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
                raw[what] = np.array(im)
        except OSError as e:
            raise ValueError(f"labels: cannot read {str(path)!r}: {e}") from e
    depth = raw["depth"].astype(np.float32) / DEPTH_SCALE
    n = raw["normals"].astype(np.float32) / 127.5 - 1.0
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    n[depth <= 0] = 0.0
    return {"semantic": raw["semantic"].astype(np.int64), "depth": depth, "normals": n}


Labels = list[list[dict[str, np.ndarray]]]


def labelled_clips_from_images(folder: str | Path, size: tuple[int, int], clip_len: int = 10,
                               max_frames: int | None = 60
                               ) -> tuple[list[np.ndarray], Labels | None, tuple[str, ...]]:
    """:func:`clips_from_images` plus ground truth when ``folder`` is ``mtl-data generate`` output
    with every frame labelled: ``(clips, labels per clip and frame or None, class names)``; the
    class names come from the clips' ``meta.json`` (empty when none names them)."""
    paths = _image_paths(folder, clip_len, max_frames)
    clips = [np.stack([_read_rgb(p, size) for p in c]) for c in paths]
    labelled = all(p.parent.name == "rgb" and (p.parent.parent / d / p.name).is_file()
                   for c in paths for p in c for d in LABEL_DIRS)
    if not labelled:
        return clips, None, ()
    names: set[tuple[str, ...]] = set()
    for meta in {p.parent.parent / "meta.json" for c in paths for p in c}:
        try:
            names.add(tuple(json.loads(meta.read_text()).get("classes", ())))
        except (OSError, ValueError) as e:
            raise ValueError(f"labels: cannot read {str(meta)!r}: {e}") from e
    if len(names) > 1:
        raise ValueError(f"labels: the clips under {str(folder)!r} have different class lists")
    return clips, [[read_labels(p, size) for p in c] for c in paths], next(iter(names), ())


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
