"""Input preprocessing: any RGB frame -> the network's input size (antialiased bilinear; no OpenCV):
``resize_rgb`` (PIL: training, calibration, the tools) and ``resize_to_network`` (torch's uint8
kernel, the same filter: the node's per-frame path).

The network normalises (ImageNet mean/std) inside ``model.step``, so preprocessing is only the
resize. Aspect ratio is not preserved: the network was trained on full frames squashed to its
size, and postprocessing stretches outputs back, so pixels stay aligned with the input.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image as PILImage


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8, always a writable array (torch refuses to
    wrap read-only buffers such as a message's data without a warning); no resize when already
    that size."""
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb)
    # BILINEAR in PIL widens its kernel when shrinking (antialiasing), unlike a plain bilinear tap.
    return np.array(PILImage.fromarray(np.ascontiguousarray(rgb)).resize((w, h), PILImage.BILINEAR))


def resize_to_network(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (size[0], size[1], 3) uint8, contiguous and writable: the same bilinear
    filter with antialiasing as ``resize_rgb`` (PIL, what training and calibration use),
    through torch's uint8 channels-last kernel instead.

    Why: on the node's path (256x512 -> 192x384, one thread) PIL took 0.74-0.84 ms and this takes
    0.13 (docs/node_overhead.md, issue 14). torch rounds the last bit differently from PIL on a few pixels:
    within 1-2 levels, on < 1 % of the values of real frames (up to 6 % of a noisy synthetic one)
    for some scale factors, identical for others
    (``test/test_pipeline_resize.py`` bounds it against PIL itself). No resize when already that size.
    """
    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb if rgb.flags.writeable and rgb.flags.c_contiguous else np.array(rgb)
    rgb = np.ascontiguousarray(rgb)  # a padded row step: one copy, then channels-last strides hold
    with warnings.catch_warnings():  # a read-only message buffer: torch only reads it here
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(rgb).unsqueeze(0).permute(0, 3, 1, 2)  # NCHW view of HWC memory
    y = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    out = y[0].permute(1, 2, 0).numpy()  # channels-last in, channels-last out: HWC, no copy
    return np.ascontiguousarray(out)  # a no-op (no copy) when already contiguous, as it is here
