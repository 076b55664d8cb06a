"""Output postprocessing: resize network outputs to the requested size and mark invalid depth.

Semantic ids use nearest neighbour (ids are labels, not quantities); depth and normals use
bilinear, and normals are renormalised afterwards because interpolated unit vectors are shorter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image as PILImage


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    # Pixel-centre mapping, the same convention as PIL/torch "nearest" with half-pixel offsets.
    return np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.int64), src - 1)


def resize_labels(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) or (H, W, C) of any dtype, nearest neighbour (class ids, or their palette colours)."""
    h, w = size
    if ids.shape[:2] == (h, w):
        return ids
    # two 1-D takes: 3-4x faster than one broadcast fancy index, same pixels
    rows = np.take(ids, _nearest_indices(ids.shape[0], h), axis=0)
    return np.take(rows, _nearest_indices(ids.shape[1], w), axis=1)


def resize_float(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) or (H, W, C) float32, bilinear per channel."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    if x.ndim == 2:
        return np.asarray(PILImage.fromarray(np.ascontiguousarray(x, np.float32))
                          .resize((w, h), PILImage.BILINEAR))
    return np.stack([resize_float(x[:, :, c], size) for c in range(x.shape[2])], axis=2)


def valid_depth(d: np.ndarray) -> np.ndarray:
    """float32 depth with NaN where invalid (non-finite or <= 0, REP 118). Returns ``d`` itself
    (no copy) when every pixel is valid, the usual case: models end in a positive activation."""
    d = d.astype(np.float32, copy=False)
    ok = np.isfinite(d) & (d > 0)
    if ok.all():
        return d
    return np.where(ok, d, np.float32(np.nan)).astype(np.float32, copy=False)


def _unit_planes(planes: Sequence[np.ndarray]) -> np.ndarray:
    """Three float32 (H, W) planes of vectors -> a new (H, W, 3) array of unit vectors, NaN where
    the norm is <= 1e-6, each plane divided straight into the interleaved result. The squared
    norm is summed plane by plane: ``np.linalg.norm(axis=2)`` over a 3-long last axis is several
    times slower, with the same sums in the same order."""
    sq = planes[0] * planes[0]
    sq += planes[1] * planes[1]
    sq += planes[2] * planes[2]
    norm = np.sqrt(sq, out=sq)
    ok = norm > 1e-6
    safe = np.where(ok, norm, np.float32(1.0))
    out = np.empty(planes[0].shape + (3,), np.float32)
    for c in range(3):
        np.divide(planes[c], safe, out=out[..., c])
    if not ok.all():
        out[~ok] = np.nan
    return out


def unit_normals(n: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> a new float32 (H, W, 3) array of unit vectors, NaN where the norm is <= 1e-6.

    Works on the planes of ``n.transpose(2, 0, 1)``: when ``n`` is a view of a planar (3, H, W)
    output (ONNX Runtime's, see ``backends.base.reduce_outputs_host``) they are contiguous and no
    interleaved copy is made before the result (192x384 on the AVX2 CPU: 0.36 ms, against 1.31 ms
    for a contiguous copy plus the per-pixel form; docs/node_overhead.md).
    """
    return _unit_planes(n.transpose(2, 0, 1).astype(np.float32, copy=False))


def resize_unit_normals(n: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``unit_normals(resize_float(n, size))`` with the same values, without the interleaved
    intermediate: the three resized planes are normalised and written into the (H, W, 3) result in
    one pass (the costliest output of ``output_resolution: input``)."""
    if n.shape[:2] == tuple(size):
        return unit_normals(n)
    return _unit_planes([resize_float(n[:, :, c].astype(np.float32, copy=False), size) for c in range(3)])


def postprocess(outputs: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Network outputs (see ``StepResult``) -> the same keys at ``size`` (H, W).

    ``depth`` is float32 metres with NaN where invalid (non-finite or <= 0, REP 118);
    ``normals`` are float32 unit vectors, NaN where they cannot be normalised.
    """
    out: dict[str, np.ndarray] = {}
    if "semantic" in outputs:
        out["semantic"] = resize_labels(outputs["semantic"], size)
    if "depth" in outputs:
        out["depth"] = valid_depth(resize_float(outputs["depth"].astype(np.float32, copy=False), size))
    if "normals" in outputs:
        out["normals"] = resize_unit_normals(outputs["normals"], size)
    return out
