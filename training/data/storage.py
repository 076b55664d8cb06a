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
import os
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "mtl-synthetic-v1"
DEPTH_SCALE = 100.0  # stored units per metre
SUBFOLDERS = ("rgb", "semantic", "depth", "normals")


class _OneLine:
    """Keeps a data error one line when it crosses a DataLoader worker: torch re-raises a worker's
    exception as ``type(text)``, text = "Caught X in DataLoader worker ...\nOriginal Traceback ...";
    the original message is the traceback's last line, after the exception's name."""

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            args = (args[0].rstrip().splitlines()[-1].split(": ", 1)[-1],)
        super().__init__(*args)


class DataFileError(_OneLine, OSError, ValueError):
    """A data file exists but cannot be read (truncated, not an image, not an array). An OSError,
    so ``mtl-train`` reports one line and exit 1 when it meets one during training; a ValueError,
    so a dataset's build turns it into a config error naming the dataset (exit 2)."""


class MissingDataFileError(_OneLine, FileNotFoundError):
    """A data file a dataset needs is not there."""


def clip_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"clip_{index:06d}"


def write_frame(
    folder: Path, t: int, rgb: np.ndarray, semantic: np.ndarray, depth: np.ndarray, normals: np.ndarray
) -> None:
    name = f"{t:06d}.png"
    for sub in SUBFOLDERS:
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
    """A clip's meta.json, checked for what the readers index (frames, intrinsics, poses), so a
    damaged file fails here naming its field rather than as a KeyError deep in training."""
    path = Path(folder) / "meta.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MissingDataFileError(f"missing clip metadata: {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFileError(f"malformed clip metadata {path}: {exc}") from exc
    except OSError as exc:
        raise DataFileError(f"clip metadata {path} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(doc, dict):
        raise DataFileError(f"malformed clip metadata {path}: a {type(doc).__name__}, not a JSON object")
    if doc.get("format") != FORMAT:
        raise DataFileError(f"{path}: format {doc.get('format')!r}, expected {FORMAT!r}")
    n = doc.get("frames")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataFileError(f"{path}: field 'frames' is {n!r}, expected an integer >= 1")
    for key, shape, what in (("intrinsics", (3, 3), "a 3x3 matrix"),
                             ("poses", (n, 4, 4), f"{n} 4x4 matrices (one per frame)")):
        try:
            ok = np.asarray(doc.get(key), dtype=float).shape == shape
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DataFileError(f"{path}: field {key!r} is not {what}")
    return doc


def check_frames(folder: Path, frames: int) -> None:
    """Every frame file of a clip is there and not empty (a stat per file, no decoding), so a
    clip damaged on disk fails when the dataset is built, not hours into training."""
    for sub in SUBFOLDERS:
        try:
            sizes = {e.name: e.stat().st_size for e in os.scandir(folder / sub)}
        except FileNotFoundError:
            raise MissingDataFileError(f"missing frame folder: {folder / sub}") from None
        for t in range(frames):
            size = sizes.get(f"{t:06d}.png")
            if size is None:
                raise MissingDataFileError(f"missing frame file: {folder / sub / f'{t:06d}.png'} "
                                      f"(meta.json says {frames} frames)")
            if size == 0:
                raise DataFileError(f"empty frame file: {folder / sub / f'{t:06d}.png'}")


def read_image(path: Path, what: str = "frame") -> np.ndarray:
    """An image file as an array; a missing or malformed file raises an error naming ``what`` and
    the path (shared by the on-disk format and the dataset adapters)."""
    try:
        with Image.open(path) as im:
            return np.array(im)
    except FileNotFoundError as exc:
        raise MissingDataFileError(f"missing {what} file: {path}") from exc
    except OSError as exc:
        raise DataFileError(f"malformed {what} file {path}: {exc}") from exc


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


def is_clip_folder(p: Path) -> bool:
    """A folder named as :func:`clip_dir` names clips (not ``mtl-data generate --bag``'s
    ``clip_<index>_bag``), with or without its meta.json."""
    return p.name.startswith("clip_") and p.name[5:].isdigit() and p.is_dir()


def list_clips(root: str | Path, max_clips: int | None = None) -> list[Path]:
    """The clip folders of ``root`` in sorted order, the first ``max_clips`` of them (None = all)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"synthetic data folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir())  # one listing, one meta.json test each
    has_meta = {p: (p / "meta.json").exists() for p in folders}
    clips = [p for p in folders if has_meta[p]]
    taken = clips[:max_clips]
    # meta.json is written after a clip's frames: a clip folder without one is a generation that
    # was stopped; reading past it would train on fewer clips than asked for without a word. One
    # after the clips taken changes nothing (the same clips as a folder holding only those).
    last = taken[-1] if len(taken) < len(clips) else None
    for p in folders:
        if last is not None and p > last:
            break
        if not has_meta[p] and is_clip_folder(p):
            raise MissingDataFileError(f"{p}: no meta.json (an interrupted `mtl-data generate`?): "
                                       "generate again or remove the folder")
    if not clips:
        raise FileNotFoundError(f"no clip_*/meta.json under {root} (write some with `mtl-data generate`)")
    return taken
