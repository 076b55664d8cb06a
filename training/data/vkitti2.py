"""Virtual KITTI 2 from a local copy: every frame of every sequence is labelled.

    ROOT/Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg
    ROOT/Scene01/clone/frames/depth/Camera_0/depth_00000.png                 uint16, centimetres
    ROOT/Scene01/clone/frames/classSegmentation/Camera_0/classgt_00000.png   RGB colour codes
    ROOT/Scene01/clone/colors.txt          "Category r g b" (optional; built-in table otherwise)
    ROOT/Scene01/clone/intrinsic.txt       "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]" (optional)

Depth 65535 (655.35 m, the sky cap) and 0 are invalid. Normals: "from_depth" (default; the depth is
exact synthetic geometry) or "zeros".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .classes import IGNORE_INDEX
from .clips import ClipDataset, Target
from .geometry import intrinsics_matrix, normals_from_depth
from .storage import read_image as read_image_file

# Category colours of the Virtual KITTI 2 release (colors.txt); "Undefined" (0,0,0) -> ignore.
_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Terrain", (210, 0, 200)),
    ("Sky", (90, 200, 255)),
    ("Tree", (0, 199, 0)),
    ("Vegetation", (90, 240, 0)),
    ("Building", (140, 140, 140)),
    ("Road", (100, 60, 100)),
    ("GuardRail", (250, 100, 255)),
    ("TrafficSign", (255, 255, 0)),
    ("TrafficLight", (200, 200, 0)),
    ("Pole", (255, 130, 0)),
    ("Misc", (80, 80, 80)),
    ("Truck", (160, 60, 60)),
    ("Car", (255, 127, 80)),
    ("Van", (0, 139, 139)),
)
CLASSES: tuple[str, ...] = tuple(n for n, _ in _COLORS)
PALETTE = np.array([c for _, c in _COLORS], dtype=np.uint8)
DEFAULT_K = (725.0087, 725.0087, 620.5, 187.0)


def _color_table(path: Path) -> dict[int, int]:
    """colour code (r<<16|g<<8|b) -> class id in CLASSES, from colors.txt if present."""
    pairs = list(_COLORS)
    if path.exists():
        pairs = []
        for i, line in enumerate(path.read_text().splitlines()):
            parts = line.split()
            if i == 0 or not parts:
                continue  # header "Category r g b"
            try:
                pairs.append((parts[0], (int(parts[1]), int(parts[2]), int(parts[3]))))
            except (IndexError, ValueError) as exc:
                raise ValueError(
                    f"malformed Virtual KITTI 2 colors file {path} line {i + 1}: {line!r}"
                ) from exc
    table = {}
    for name, (r, g, b) in pairs:
        if name in CLASSES:
            table[(r << 16) | (g << 8) | b] = CLASSES.index(name)
    return table


class VKITTI2Dataset(ClipDataset):
    CLASSES = CLASSES
    PALETTE = PALETTE
    per_frame_labels = True

    def __init__(
        self,
        root: str | Path,
        *,
        scenes: list[str] | None = None,
        variations: list[str] | None = None,
        camera: str = "Camera_0",
        stride: int = 1,
        normals: str = "from_depth",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        if normals not in ("zeros", "from_depth"):
            raise ValueError("normals must be 'zeros' or 'from_depth'")
        self.root, self.camera, self.normals = Path(root), camera, normals
        if not self.root.is_dir():
            raise FileNotFoundError(f"Virtual KITTI 2 folder not found: {self.root}")
        self.seqs: list[Path] = []
        self.tables: list[dict[int, int]] = []
        self.K: list[dict[int, np.ndarray]] = []
        for scene in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("Scene")):
            if scenes and scene.name not in scenes:
                continue
            for var in sorted(p for p in scene.iterdir() if p.is_dir()):
                if variations and var.name not in variations:
                    continue
                rgb_dir = var / "frames" / "rgb" / camera
                frames = sorted(int(p.stem.split("_")[1]) for p in rgb_dir.glob("rgb_*.jpg"))
                if not frames:
                    continue
                si = len(self.seqs)
                self.seqs.append(var)
                self.tables.append(_color_table(var / "colors.txt"))
                self.K.append(self._intrinsics_file(var / "intrinsic.txt"))
                for t in range(min(self.clip_len - 1, len(frames) - 1), len(frames), stride):
                    w = frames[max(0, t - self.clip_len + 1) : t + 1]
                    self.targets.append(Target(tuple((si, f) for f in w)))
        if not self.targets:
            raise FileNotFoundError(f"no Scene*/*/frames/rgb/{camera}/rgb_*.jpg under {self.root}")

    def _intrinsics_file(self, path: Path) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        if not path.exists():
            return out
        cam_id = int(self.camera.split("_")[-1])
        for i, line in enumerate(path.read_text().splitlines()[1:]):
            parts = line.split()
            try:
                if int(parts[1]) == cam_id:
                    out[int(parts[0])] = intrinsics_matrix(*map(float, parts[2:6]))
            except (IndexError, ValueError) as exc:
                raise ValueError(
                    f"malformed Virtual KITTI 2 intrinsics {path} line {i + 2}: {line!r}"
                ) from exc
        return out

    def _file(self, key: tuple[int, int], kind: str, prefix: str, ext: str) -> Path:
        return self.seqs[key[0]] / "frames" / kind / self.camera / f"{prefix}_{key[1]:05d}.{ext}"

    def read_image(self, key: tuple[int, int]) -> np.ndarray:
        return read_image_file(self._file(key, "rgb", "rgb", "jpg"), "Virtual KITTI 2")[..., :3]

    def read_labels(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        seg_path = self._file(key, "classSegmentation", "classgt", "png")
        seg = read_image_file(seg_path, "Virtual KITTI 2")
        if seg.ndim != 3 or seg.shape[-1] < 3:
            raise ValueError(f"malformed Virtual KITTI 2 segmentation {seg_path}: shape {seg.shape}")
        code = (seg[..., 0].astype(np.int64) << 16) | (seg[..., 1].astype(np.int64) << 8) | seg[..., 2]
        sem = np.full(code.shape, IGNORE_INDEX, np.int64)
        for c, i in self.tables[key[0]].items():
            sem[code == c] = i
        raw = read_image_file(self._file(key, "depth", "depth", "png"), "Virtual KITTI 2").astype(np.float32)
        depth = np.where((raw > 0) & (raw < 65535), raw / 100.0, 0).astype(np.float32)
        if self.normals == "from_depth":
            n = normals_from_depth(depth, self.read_intrinsics(key))
        else:
            n = np.zeros((*depth.shape, 3), np.float32)
        return {"semantic": sem, "depth": depth, "normals": n}

    def read_intrinsics(self, key: tuple[int, int]) -> np.ndarray:
        return self.K[key[0]].get(key[1], intrinsics_matrix(*DEFAULT_K))
