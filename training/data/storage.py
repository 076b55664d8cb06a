"""The on-disk format of generated clips (`mtl-data generate`), one folder per clip.

    DIR/clip_000000/
        meta.json               format, seed, domain, scene, size, dt, classes, intrinsics (3x3),
                                poses (T x 4x4 camera-to-world, optical frame -> world)
        rgb/000000.png          8-bit RGB
        semantic/000000.png     8-bit class ids (255 = ignore)
        depth/000000.png        16-bit z-depth in centimetres (0 = invalid; 655.35 m max)
        normals/000000.png      8-bit RGB = round((n + 1) / 2 * 255), optical frame; invalid where depth is 0

Why PNG and not npy: ~10x smaller, readable by any image viewer, and 1 cm / 0.5 degree quantisation
is far below what the models resolve. Same units as Virtual KITTI 2's depth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "mtl-synthetic-v1"
DEPTH_SCALE = 100.0  # stored units per metre


def clip_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"clip_{index:06d}"


def write_frame(
    folder: Path, t: int, rgb: np.ndarray, semantic: np.ndarray, depth: np.ndarray, normals: np.ndarray
) -> None:
    name = f"{t:06d}.png"
    for sub in ("rgb", "semantic", "depth", "normals"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(folder / "rgb" / name)
    Image.fromarray(semantic.astype(np.uint8)).save(folder / "semantic" / name)
    d = np.round(np.clip(depth, 0, 655.35) * DEPTH_SCALE).astype(np.uint16)
    Image.fromarray(d).save(folder / "depth" / name)
    n = np.round((np.clip(normals, -1, 1) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(n).save(folder / "normals" / name)


def write_meta(
    folder: Path,
    meta: dict,
    classes: tuple[str, ...],
    K: np.ndarray,  # noqa: N803
    poses: np.ndarray,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        **meta,
        "frames": int(len(poses)),
        "classes": list(classes),
        "intrinsics": np.asarray(K, dtype=float).round(6).tolist(),
        "poses": np.asarray(poses, dtype=float).round(6).tolist(),
    }
    (folder / "meta.json").write_text(json.dumps(doc, indent=1))


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / "meta.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"missing clip metadata: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed clip metadata {path}: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    return doc


def read_image(path: Path, what: str = "frame") -> np.ndarray:
    """An image file as an array; a missing or malformed file raises an error naming ``what`` and
    the path (shared by the on-disk format and the dataset adapters)."""
    try:
        with Image.open(path) as im:
            return np.array(im)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"missing {what} file: {path}") from exc
    except OSError as exc:
        raise ValueError(f"malformed {what} file {path}: {exc}") from exc


def read_rgb(folder: Path, t: int) -> np.ndarray:
    return read_image(folder / "rgb" / f"{t:06d}.png")


def read_labels(folder: Path, t: int) -> dict[str, np.ndarray]:
    """-> semantic (H,W) int64, depth (H,W) float32 metres, normals (H,W,3) float32 unit or 0."""
    name = f"{t:06d}.png"
    sem = read_image(folder / "semantic" / name).astype(np.int64)
    depth = read_image(folder / "depth" / name).astype(np.float32) / DEPTH_SCALE
    n = read_image(folder / "normals" / name).astype(np.float32) / 127.5 - 1.0
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    n[depth <= 0] = 0.0
    return {"semantic": sem, "depth": depth, "normals": n}


def list_clips(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"synthetic data folder not found: {root}")
    clips = sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.json").exists())
    if not clips:
        raise FileNotFoundError(f"no clip_*/meta.json under {root} (write some with `mtl-data generate`)")
    return clips
