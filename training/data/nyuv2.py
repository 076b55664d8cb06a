"""NYUv2 in the common multi-task layout (MTAN / Liu et al.): a local copy the user brings.

    ROOT/{train,val}/image/N.npy    (288,384,3) float in [0,1] (uint8 0..255 also accepted)
    ROOT/{train,val}/label/N.npy    (288,384) 13-class ids, -1 = ignore
    ROOT/{train,val}/depth/N.npy    (288,384,1) metres, 0 = invalid
    ROOT/{train,val}/normal/N.npy   (288,384,3) unit normals in [-1,1], 0 = invalid

The layout holds single frames, not video: a clip repeats the annotated frame T times, unless
`raw=RAW_ROOT` points at the raw NYUv2 scene folders and an index maps each sample to its raw frame
(:mod:`.nyuv2_raw`); then the T-1 earlier frames are the raw RGB frames recorded before it.
Normals are passed through as stored (the layout's camera frame); set `flip_normals_yz=True` to
convert from a y-up/z-backward convention to the optical frame (x right, y down, z forward).
Intrinsics: the Kinect's (fx=518.86, fy=519.47, cx=325.58, cy=253.74 at 640x480) scaled to 288x384
after the standard crop, approximately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .classes import IGNORE_INDEX
from .clips import ClipDataset, Target
from .geometry import intrinsics_matrix, scale_intrinsics
from .nyuv2_raw import INDEX_NAME, RawFrames
from .storage import DataFileError, MissingDataFileError

CLASSES: tuple[str, ...] = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)
PALETTE = (
    np.array(
        [
            [0, 0, 1],
            [0.9137, 0.3490, 0.1882],
            [0, 0.8549, 0],
            [0.5843, 0, 0.9412],
            [0.8706, 0.9451, 0.0941],
            [1.0000, 0.8078, 0.8078],
            [0, 0.8784, 0.8980],
            [0.4157, 0.5333, 0.8000],
            [0.4588, 0.1137, 0.1608],
            [0.9412, 0.1373, 0.9216],
            [0, 0.6549, 0.6118],
            [0.9765, 0.5451, 0],
            [0.8824, 0.8980, 0.7608],
        ],
    )
    * 255
)
PALETTE = PALETTE.round().astype(np.uint8)
_KINECT = intrinsics_matrix(518.86, 519.47, 325.58, 253.74)


def _load(path: Path, ndim: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise MissingDataFileError(f"missing NYUv2 file: {path}") from exc
    except (ValueError, OSError) as exc:
        raise DataFileError(f"malformed NYUv2 file {path}: {exc}") from exc
    if a.ndim not in ndim:
        raise DataFileError(f"malformed NYUv2 file {path}: shape {a.shape}, expected {len(ndim)} dims "
                            f"in {ndim}")
    return a


class NYUv2Dataset(ClipDataset):
    CLASSES = CLASSES
    PALETTE = PALETTE

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        flip_normals_yz: bool = False,
        raw: str | Path | None = None,
        raw_index: str | Path | None = None,
        raw_step: int = 1,
        raw_crop: tuple[int, int, int, int] = (0, 0, 0, 0),
        **kw: Any,
    ) -> None:
        # single annotated frames: a clip of 1 frame, which is its own keyframe
        kw.setdefault("clip_len", 1)
        kw.setdefault("keyframe_interval", kw["clip_len"])
        super().__init__(**kw)
        self.dir = Path(root) / split
        img_dir = self.dir / "image"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"NYUv2 folder not found: {img_dir}")
        ids = sorted(int(p.stem) for p in img_dir.glob("*.npy") if p.stem.isdigit())
        if not ids:
            raise FileNotFoundError(f"no N.npy images in {img_dir}")
        self.flip = flip_normals_yz
        self.raw = None
        if raw is None:
            self.targets = [Target((i,)) for i in ids]
        else:
            self.raw = RawFrames(raw, raw_index or self.dir / INDEX_NAME, raw_step, raw_crop)
            # Raw frames are keyed (sample, path): read_image sizes them like the sample's image.
            self.targets = [
                Target(tuple((i, p) for p in self.raw.preceding(i, self.clip_len - 1)) + (i,)) for i in ids
            ]

    def read_image(self, key: int | tuple[int, Path]) -> np.ndarray:
        if isinstance(key, tuple):
            assert self.raw is not None
            shape = np.load(self.dir / "image" / f"{key[0]}.npy", mmap_mode="r").shape
            return self.raw.read(key[1], shape[1:] if shape[0] == 3 and shape[-1] != 3 else shape[:2])
        a = _load(self.dir / "image" / f"{key}.npy", (3,))
        if a.shape[0] == 3 and a.shape[-1] != 3:  # CHW
            a = np.moveaxis(a, 0, -1)
        return a if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)

    def read_labels(self, key: int) -> dict[str, np.ndarray]:
        sem = _load(self.dir / "label" / f"{key}.npy", (2, 3)).astype(np.int64)
        sem = (
            sem.reshape(sem.shape[-2:]) if sem.ndim == 3 and sem.shape[0] == 1 else sem.reshape(sem.shape[:2])
        )
        sem = np.where((sem < 0) | (sem >= len(CLASSES)), IGNORE_INDEX, sem)
        depth = _load(self.dir / "depth" / f"{key}.npy", (2, 3)).astype(np.float32)
        depth = depth.reshape(sem.shape)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
        n = _load(self.dir / "normal" / f"{key}.npy", (3,)).astype(np.float32)
        if n.shape[0] == 3 and n.shape[-1] != 3:
            n = np.moveaxis(n, 0, -1)
        if self.flip:
            n = n * np.array([1, -1, -1], np.float32)
        norm = np.linalg.norm(n, axis=-1, keepdims=True)
        n = np.where(norm > 0.5, n / np.maximum(norm, 1e-6), 0).astype(np.float32)
        return {"semantic": sem, "depth": depth, "normals": n}

    def read_intrinsics(self, key: int) -> np.ndarray:
        # 640x480 Kinect, 16 px border crop to 608x448 and resize to 384x288 (approximation).
        K = _KINECT.copy()
        K[0, 2] -= 16
        K[1, 2] -= 16
        return scale_intrinsics(K, 384 / 608, 288 / 448)
