"""Cityscapes from a local copy: video snippets, fine labels, metric depth from disparity.

    ROOT/leftImg8bit_sequence/{split}/{city}/{city}_{seq}_{frame:06d}_leftImg8bit.png   (30-frame snippets)
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame:06d}_gtFine_labelIds.png             (frame 19 of each)
    ROOT/disparity/{split}/{city}/{city}_{seq}_{frame:06d}_disparity.png                (uint16)
    ROOT/camera/{split}/{city}/{city}_{seq}_{frame:06d}_camera.json                     (baseline, fx, ...)

Depth = baseline * fx / disparity with disparity = (p - 1) / 256; p = 0 (and p = 1, zero disparity)
are invalid. Labels: 19 train classes (`num_classes=19`) or the 7 categories (`num_classes=7`).
Cityscapes has no normal labels: `normals="zeros"` (invalid) or "from_depth" (from the disparity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtl_perception.imaging import make_palette

from .classes import IGNORE_INDEX
from .clips import ClipDataset, Target
from .geometry import intrinsics_matrix, normals_from_depth
from .storage import DataFileError, MissingDataFileError
from .storage import read_image as read_image_file

CLASSES_19: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# The official Cityscapes colours, which the node's palette starts with.
PALETTE_19 = make_palette(19)
CLASSES_7: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
# Each category in the colour of its most common class: road, building, pole, vegetation, sky,
# person, car.
PALETTE_7 = PALETTE_19[[0, 2, 5, 8, 10, 11, 13]]
# labelIds 0..33 -> trainId (cityscapesScripts labels.py); 255 = ignore.
_TRAIN_ID = [
    255,
    255,
    255,
    255,
    255,
    255,
    255,
    0,
    1,
    255,
    255,
    2,
    3,
    4,
    255,
    255,
    255,
    5,
    255,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    255,
    255,
    16,
    17,
    18,
]
# labelIds 0..33 -> categoryId - 1 (void -> ignore).
_CATEGORY = [255] * 7 + [0] * 4 + [1] * 6 + [2] * 4 + [3] * 2 + [4] + [5] * 2 + [6] * 8


def _lut(table: list[int]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.int64)
    lut[: len(table)] = table
    return lut


def disparity_to_depth(p: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """Cityscapes uint16 disparity PNG values -> metric depth (0 where invalid)."""
    d = (p.astype(np.float64) - 1.0) / 256.0
    valid = (p > 0) & (d > 0)
    depth = np.zeros(p.shape, np.float32)
    depth[valid] = (baseline * fx / d[valid]).astype(np.float32)
    return depth


class CityscapesDataset(ClipDataset):
    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        num_classes: int = 19,
        normals: str = "zeros",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if num_classes not in (7, 19):
            raise ValueError("num_classes must be 7 or 19")
        if normals not in ("zeros", "from_depth"):
            raise ValueError("normals must be 'zeros' or 'from_depth'")
        self.CLASSES = CLASSES_19 if num_classes == 19 else CLASSES_7
        self.PALETTE = PALETTE_19 if num_classes == 19 else PALETTE_7
        self.lut = _lut(_TRAIN_ID if num_classes == 19 else _CATEGORY)
        self.root, self.split, self.normals = Path(root), split, normals
        gt = self.root / "gtFine" / split
        if not gt.is_dir():
            raise FileNotFoundError(f"Cityscapes folder not found: {gt}")
        labels = sorted(gt.glob("*/*_gtFine_labelIds.png"))
        if not labels:
            raise FileNotFoundError(f"no *_gtFine_labelIds.png under {gt}")
        for lab in labels:
            city, seq, frame = lab.name.split("_")[:3]
            if not frame.isdigit():
                raise ValueError(f"unexpected Cityscapes file name: {lab}")
            f = int(frame)
            # The annotated frame and the snippet frames before it (sequence frames are consecutive).
            keys = tuple((city, seq, j) for j in range(max(0, f - self.clip_len + 1), f + 1))
            self.targets.append(Target(keys))
        self._cam: dict[tuple[str, str, int], dict] = {}

    def _path(self, kind: str, key: tuple[str, str, int], suffix: str) -> Path:
        city, seq, f = key
        return self.root / kind / self.split / city / f"{city}_{seq}_{f:06d}_{suffix}"

    def read_image(self, key: tuple[str, str, int]) -> np.ndarray:
        path = self._path("leftImg8bit_sequence", key, "leftImg8bit.png")
        return read_image_file(path, "Cityscapes")[..., :3]

    def camera(self, key: tuple[str, str, int]) -> dict:
        if key not in self._cam:
            path = self._path("camera", key, "camera.json")
            try:
                doc = json.loads(path.read_text())
                self._cam[key] = {
                    "baseline": float(doc["extrinsic"]["baseline"]),
                    "fx": float(doc["intrinsic"]["fx"]),
                    "fy": float(doc["intrinsic"]["fy"]),
                    "u0": float(doc["intrinsic"]["u0"]),
                    "v0": float(doc["intrinsic"]["v0"]),
                }
            except FileNotFoundError as exc:
                raise MissingDataFileError(f"missing Cityscapes file: {path}") from exc
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DataFileError(f"malformed Cityscapes camera file {path}: {exc!r}") from exc
        return self._cam[key]

    def read_labels(self, key: tuple[str, str, int]) -> dict[str, np.ndarray]:
        ids = read_image_file(self._path("gtFine", key, "gtFine_labelIds.png"), "Cityscapes")
        if ids.ndim != 2:
            raise ValueError(
                f"malformed Cityscapes label {self._path('gtFine', key, 'gtFine_labelIds.png')}: "
                f"shape {ids.shape}"
            )
        sem = self.lut[ids.astype(np.int64).clip(0, 255)]
        cam = self.camera(key)
        disp = read_image_file(self._path("disparity", key, "disparity.png"), "Cityscapes")
        depth = disparity_to_depth(disp, cam["baseline"], cam["fx"])
        if self.normals == "from_depth":
            n = normals_from_depth(depth, self.read_intrinsics(key))
        else:
            n = np.zeros((*depth.shape, 3), np.float32)
        return {"semantic": sem, "depth": depth, "normals": n}

    def read_intrinsics(self, key: tuple[str, str, int]) -> np.ndarray:
        c = self.camera(self.targets_key(key))
        return intrinsics_matrix(c["fx"], c["fy"], c["u0"], c["v0"])

    def targets_key(self, key: tuple[str, str, int]) -> tuple[str, str, int]:
        """Camera files exist for annotated frames; any frame of a snippet shares its camera."""
        if self._path("camera", key, "camera.json").exists():
            return key
        for t in self.targets:
            if t.frames[-1][:2] == key[:2]:
                return t.frames[-1]
        return key
