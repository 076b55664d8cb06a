"""Output postprocessing: resize network outputs to the requested size and mark invalid depth.

Semantic ids use nearest neighbour (ids are labels, not quantities); depth and normals use
bilinear, and normals are renormalised afterwards because interpolated unit vectors are shorter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    # Pixel-centre mapping, the same convention as PIL/torch "nearest" with half-pixel offsets.
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def resize_labels(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if ids.shape == (h, w):
        return ids
    return ids[_nearest_indices(ids.shape[0], h)[:, None], _nearest_indices(ids.shape[1], w)[None, :]]


def resize_float(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) or (H, W, C) float32, bilinear per channel."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    if x.ndim == 2:
        return np.asarray(PILImage.fromarray(np.ascontiguousarray(x, np.float32))
                          .resize((w, h), PILImage.BILINEAR))
    return np.stack([resize_float(x[:, :, c], size) for c in range(x.shape[2])], axis=2)


def postprocess(outputs: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Network outputs (see ``StepResult``) -> the same keys at ``size`` (H, W).

    ``depth`` is float32 metres with NaN where invalid (non-finite or <= 0, REP 118);
    ``normals`` are float32 unit vectors, NaN where they cannot be normalised.
    """
    out: dict[str, np.ndarray] = {}
    if "semantic" in outputs:
        out["semantic"] = resize_labels(outputs["semantic"], size)
    if "depth" in outputs:
        d = resize_float(outputs["depth"].astype(np.float32, copy=False), size)
        out["depth"] = np.where(np.isfinite(d) & (d > 0), d, np.float32(np.nan)).astype(np.float32)
    if "normals" in outputs:
        n = resize_float(outputs["normals"].astype(np.float32, copy=False), size)
        norm = np.linalg.norm(n, axis=2, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            n = np.where(norm > 1e-6, n / norm, np.float32(np.nan))
        out["normals"] = n.astype(np.float32, copy=False)
    return out
