"""Camera geometry helpers shared by the generator, the adapters and the tests."""

from __future__ import annotations

import numpy as np


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """3x3 pinhole K (OpenCV convention: pixel centres at integer coordinates)."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float32)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:  # noqa: N803
    """K for an image resized by (sx, sy); keeps pixel-centre alignment ((c + 0.5) * s - 0.5)."""
    K = np.array(K, dtype=np.float32, copy=True)
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:  # noqa: N803
    """(H,W) z-depth -> (H,W,3) points in the camera optical frame (x right, y down, z forward)."""
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    z = depth.astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return np.stack([x, y, z], axis=-1)


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:  # noqa: N803
    """Unit normals (H,W,3) in the optical frame from a z-depth map by central differences.

    Zero where the depth or any neighbour is invalid (<= 0). Oriented towards the camera. Used for
    datasets without normal labels and to check the generator's exact normals.
    """
    P = backproject(depth, K)
    valid = depth > 0
    n = np.zeros_like(P)
    du = P[1:-1, 2:] - P[1:-1, :-2]
    dv = P[2:, 1:-1] - P[:-2, 1:-1]
    c = np.cross(du, dv)
    ok = valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1]
    norm = np.linalg.norm(c, axis=-1, keepdims=True)
    ok &= norm[..., 0] > 0
    c = np.where(ok[..., None], c / np.maximum(norm, 1e-12), 0.0)
    # Face the camera: a visible surface's normal points against the viewing ray.
    flip = np.sum(c * P[1:-1, 1:-1], axis=-1) > 0
    c[flip] *= -1
    n[1:-1, 1:-1] = c
    return n.astype(np.float32)
