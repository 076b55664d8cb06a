"""Image helpers by value: the nearest-neighbour label resize samples pixel centres (the same
pixels as torch's ``nearest-exact``; PIL's NEAREST rounds differently at some non-integer
scales), and the semantic overlay weights the
palette by ``alpha`` and the camera image by ``1 - alpha`` (asymmetric alphas, so a swap shows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtl_perception.imaging import colorize_semantic
from mtl_perception.postprocess import postprocess, resize_labels


def test_nearest_resize_hand_cases() -> None:
    ids = np.arange(4, dtype=np.int32).reshape(1, 4)
    # 4 -> 2: centres 0.5*2 = 1 and 1.5*2 = 3 -> columns 1 and 3 (not 0 and 2)
    assert resize_labels(ids, (1, 2)).tolist() == [[1, 3]]
    # 4 -> 3: centres (0.5, 1.5, 2.5) * 4/3 = 0.67, 2.0, 3.33 -> columns 0, 2, 3
    assert resize_labels(ids, (1, 3)).tolist() == [[0, 2, 3]]
    # 2 -> 4: each source pixel covers two outputs
    assert resize_labels(np.array([[5, 7]], np.int32), (1, 4)).tolist() == [[5, 5, 7, 7]]
    # 3 -> 2 rows: centres 0.75, 2.25 -> rows 0 and 2
    col = np.array([[1], [2], [3]], np.int32)
    assert resize_labels(col, (2, 1)).tolist() == [[1], [3]]


@pytest.mark.parametrize("src, dst", [((64, 128), (96, 160)), ((64, 128), (48, 80)), ((7, 9), (20, 3)),
                                      ((30, 40), (30, 41)), ((5, 5), (13, 2))])
def test_nearest_resize_matches_torch_nearest_exact(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(src) + sum(dst))
    ids = rng.integers(0, 250, src).astype(np.int32)
    got = resize_labels(ids, dst)
    ref = F.interpolate(torch.from_numpy(ids).float()[None, None], size=dst, mode="nearest-exact")
    np.testing.assert_array_equal(got, ref[0, 0].numpy().astype(np.int32))
    # postprocess uses the same alignment for the semantic output
    np.testing.assert_array_equal(postprocess({"semantic": ids}, dst)["semantic"], got)


@pytest.mark.parametrize("alpha", [0.25, 0.8])
def test_overlay_weights_palette_by_alpha(alpha: float) -> None:
    palette = np.array([[200, 0, 0], [0, 100, 0]], np.uint8)
    ids = np.array([[0, 1]], np.int32)
    rgb = np.array([[[0, 0, 240], [40, 40, 40]]], np.uint8)
    out = colorize_semantic(ids, palette, rgb, alpha)
    expected = np.floor(palette[ids].astype(np.float64) * alpha + rgb * (1 - alpha) + 1e-9)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    if alpha == 0.25:  # hand value: pixel 0 red = 200 * 0.25, blue = 240 * 0.75
        assert out[0, 0].tolist() == [50, 0, 180]


def test_overlay_extremes() -> None:
    palette = np.array([[10, 20, 30]], np.uint8)
    ids = np.zeros((2, 2), np.int32)
    rgb = np.full((2, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(colorize_semantic(ids, palette, rgb, 0.0), palette[ids])  # palette only
    np.testing.assert_array_equal(colorize_semantic(ids, palette, rgb, 1.0), palette[ids])
    np.testing.assert_array_equal(colorize_semantic(ids, palette, rgb, 1e-6), rgb - 1)  # ~the image
