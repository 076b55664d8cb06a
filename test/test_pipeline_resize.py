"""The node's input resize (``preprocess.resize_to_network``, torch's uint8 kernel) against PIL's
bilinear-with-antialiasing resize, the filter the model was trained and calibrated with
(``preprocess.resize_rgb``): the same image within 2 grey levels, on few pixels; and what the
backend receives from ``Pipeline.infer`` is that image."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image as PILImage

from mtl_perception.pipeline import Pipeline
from mtl_perception.preprocess import resize_to_network
from mtl_perception.scheduler import Decision


def _pil(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference, straight from PIL (not through the package)."""
    return np.asarray(PILImage.fromarray(np.ascontiguousarray(rgb)).resize((size[1], size[0]),
                                                                          PILImage.BILINEAR))


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise and a sharp edge: what a camera frame has."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 9.0 + seed) + 50 * np.cos(yy / 7.0)
    base[:, w // 3:w // 3 + 5] = 250
    return np.clip(base[..., None] + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src,dst", [((256, 512), (192, 384)), ((576, 768), (192, 384)),
                                     ((272, 640), (256, 512)), ((120, 160), (192, 384)),
                                     ((257, 511), (64, 128))])
def test_matches_pil_within_two_levels_on_few_pixels(src: tuple[int, int], dst: tuple[int, int]) -> None:
    rgb = _scene(*src, seed=src[0])
    ours, ref = resize_to_network(rgb, dst), _pil(rgb, dst)
    assert ours.shape == (*dst, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert diff.max() <= 2
    assert (diff > 0).mean() < 0.1 and diff.mean() < 0.1  # last-bit rounding, not another filter


def test_the_node_case_is_antialiased_not_a_plain_bilinear_tap() -> None:
    """A one-pixel checkerboard shrunk by 3/4: PIL's widened kernel averages it to mid-grey
    (~127 everywhere); a plain two-tap bilinear keeps stripes of 0..255."""
    board = ((np.indices((256, 512)).sum(0) % 2) * 255).astype(np.uint8)
    rgb = np.repeat(board[..., None], 3, axis=2)
    out = resize_to_network(rgb, (192, 384)).astype(int)
    assert np.abs(out - _pil(rgb, (192, 384)).astype(int)).max() <= 2
    assert out[2:-2, 2:-2].min() >= 100 and out[2:-2, 2:-2].max() <= 155


def test_output_is_contiguous_writable_and_inputs_are_left_alone() -> None:
    rgb = _scene(256, 512, 1)
    ro = np.frombuffer(rgb.tobytes(), np.uint8).reshape(rgb.shape)  # a message buffer: read-only
    padded = np.zeros((256, 520, 3), np.uint8)
    padded[:, :512] = rgb
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's non-writable-array warning would fail here
        a = resize_to_network(ro, (192, 384))
    b = resize_to_network(padded[:, :512], (192, 384))  # row step larger than the row
    for out in (a, b):
        assert out.flags.c_contiguous and out.flags.writeable
        np.testing.assert_array_equal(out, a)
    same = resize_to_network(ro, (256, 512))  # already that size: a writable copy of the pixels
    assert same.flags.writeable and same is not ro
    np.testing.assert_array_equal(same, rgb)
    assert resize_to_network(rgb, (256, 512)) is rgb


class _Recording:
    """The smallest backend: records the image it is given."""

    input_size = (48, 96)

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def step(self, image, state, is_keyframe):  # noqa: ANN001, ANN201
        from mtl_perception.backends.base import StepResult

        self.seen.append(image.copy())
        return StepResult(outputs={"depth": np.ones((48, 96), np.float32)}, state=state or 1)


def test_pipeline_feeds_the_backend_the_resized_frame() -> None:
    rgb = _scene(64, 128, 3)
    backend = _Recording()
    res = Pipeline(backend).infer(rgb, Decision(is_keyframe=True))
    (seen,) = backend.seen
    assert seen.shape == (48, 96, 3)
    assert np.abs(seen.astype(int) - _pil(rgb, (48, 96)).astype(int)).max() <= 2
    np.testing.assert_array_equal(res.rgb, seen)  # the overlay image at network resolution
