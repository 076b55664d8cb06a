"""Input preprocessing: any RGB frame -> the network's input size (PIL, antialiased; no OpenCV).

The network normalises (ImageNet mean/std) inside ``model.step``, so preprocessing is only the
resize. Aspect ratio is not preserved: the network was trained on full frames squashed to its
size, and postprocessing stretches outputs back, so pixels stay aligned with the input.
"""

from __future__ import annotations

import numpy as np
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
