"""sensor_msgs/Image <-> numpy, palettes and colourising. No rclpy import: works on rclpy messages
and on rosbags' deserialised messages alike (same field names), so the node and eval-bag share it.

Conversion goes through ``np.frombuffer(msg.data)`` and ``msg.data = arr.tobytes()``: assigning an
ndarray to an rclpy ``msg.data`` copies element by element (~25 ms per 0.4 MB).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

# Encodings the node accepts, with (channels, channel order to get RGB). REP 118 / sensor_msgs.
INPUT_ENCODINGS: dict[str, tuple[int, tuple[int, ...]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
# Output encodings and their numpy dtype / channel count.
OUTPUT_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "32FC3": (np.dtype(np.float32), 3),
}
# Anything larger is a malformed message rather than a camera (16k x 16k).
MAX_SIDE = 16384
# Decoded-pixel budget of one compressed image (node parameter ``max_input_pixels``): 4x a 4K UHD
# frame. A 140 KB PNG can declare 12000x12000 (+1.5 GB when decoded), so the declared size is
# checked from the header before anything is decoded.
MAX_INPUT_PIXELS = 4 * 3840 * 2160

# Rejection reasons: the keys of the node's "rejected" counters in /diagnostics.
REJECT_ENCODING = "unknown_encoding"
REJECT_SIZE = "bad_size"
REJECT_STEP = "bad_step"
REJECT_DATA = "truncated_data"
REJECT_DECODE = "decode_failed"
REJECT_PIXELS = "too_many_pixels"


class ImageError(ValueError):
    """A message that cannot be turned into an image; ``reason`` is one of the REJECT_* keys."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def check_image(height: int, width: int, encoding: str, step: int, data_len: int) -> None:
    """O(1) validation of Image fields (the node runs it on arrival, so a malformed message is
    counted as rejected even when the latest-frame policy would have dropped it unseen)."""
    enc = INPUT_ENCODINGS.get(encoding)
    if enc is None:
        raise ImageError(REJECT_ENCODING, f"encoding {encoding!r} not in {sorted(INPUT_ENCODINGS)}")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ImageError(REJECT_SIZE, f"size {width}x{height} outside 1..{MAX_SIDE}")
    row = width * enc[0]
    if step < row:
        raise ImageError(REJECT_STEP, f"step {step} < width*channels {row}")
    if data_len < step * height:
        raise ImageError(REJECT_DATA, f"{data_len} bytes < step*height {step * height}")


def check_image_msg(msg: Any) -> None:
    check_image(int(msg.height), int(msg.width), str(msg.encoding), int(msg.step), len(msg.data))


def decode_image(height: int, width: int, encoding: str, step: int, data: Any,
                 is_bigendian: int = 0) -> np.ndarray:
    """Raw Image fields -> (H, W, 3) uint8 RGB, validating everything a malformed message breaks.

    ``data`` is anything exposing the buffer protocol (bytes, array.array, ndarray). The result
    may share memory with ``data`` (read-only): copy before writing into it. ``is_bigendian``
    does not matter for the 8-bit encodings accepted.
    """
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    check_image(height, width, encoding, step, buf.size)
    channels, order = INPUT_ENCODINGS[encoding]
    row = width * channels
    rows = buf[: step * height].reshape(height, step)[:, :row].reshape(height, width, channels)
    if channels == 1:
        return np.repeat(rows, 3, axis=2)
    if order == (0, 1, 2) and channels == 3:
        return rows
    return rows[:, :, list(order)]


def check_compressed_format(fmt: str) -> None:
    low = fmt.lower()
    if not any(k in low for k in ("jpeg", "jpg", "png")):
        raise ImageError(REJECT_ENCODING, f"compressed format {fmt!r} is not jpeg or png")


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (rclpy or rosbags) -> (H, W, 3) uint8 RGB; raises :class:`ImageError`."""
    return decode_image(int(msg.height), int(msg.width), str(msg.encoding), int(msg.step), msg.data,
                        int(getattr(msg, "is_bigendian", 0)))


def compressed_to_rgb(fmt: str, data: Any, max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage fields (jpeg or png) -> (H, W, 3) uint8 RGB.

    ``PIL.Image.open`` only parses the header, so a declared size above ``max_pixels`` (a
    decompression bomb) is rejected before a single pixel is decoded or allocated.
    """
    from PIL import Image as PILImage

    check_compressed_format(fmt)
    try:
        with warnings.catch_warnings():  # PIL warns about the sizes refused just below
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            im = PILImage.open(io.BytesIO(bytes(memoryview(data).cast("B"))))
        with im:
            if not (0 < im.width <= MAX_SIDE and 0 < im.height <= MAX_SIDE):
                raise ImageError(REJECT_SIZE, f"size {im.width}x{im.height} outside 1..{MAX_SIDE}")
            if im.width * im.height > max_pixels:
                raise ImageError(REJECT_PIXELS, f"{fmt!r} declares {im.width}x{im.height} = "
                                 f"{im.width * im.height} pixels > max_input_pixels {max_pixels}; "
                                 "not decoded")
            return np.asarray(im.convert("RGB"))
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ImageError(REJECT_DECODE, f"cannot decode {fmt!r}: {e}") from None


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> jpeg/png bytes (for tests and tools that publish CompressedImage)."""
    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.fromarray(rgb).save(out, format="JPEG" if fmt.lower() in ("jpeg", "jpg") else "PNG",
                                 quality=quality)
    return out.getvalue()


def fill_image_msg(msg: Any, array: np.ndarray, encoding: str) -> Any:
    """Fill an (empty) sensor_msgs/Image with ``array`` in ``encoding``; returns ``msg``.

    The header is left to the caller (the node copies the input header into every output).
    """
    dtype, channels = OUTPUT_ENCODINGS.get(encoding, (None, 0))
    if dtype is None:
        raise ValueError(f"unsupported output encoding {encoding!r}")
    arr = np.ascontiguousarray(array, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != channels:
        raise ValueError(f"{encoding} needs (H, W, {channels}), got {array.shape}")
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * channels * dtype.itemsize)
    msg.data = arr.tobytes()  # bytes assignment is a memcpy; an ndarray would be per element
    return msg


def image_msg_to_array(msg: Any) -> np.ndarray:
    """Any OUTPUT_ENCODINGS Image -> ndarray (H, W) or (H, W, C), for tools and tests."""
    dtype, channels = OUTPUT_ENCODINGS[msg.encoding]
    if msg.is_bigendian:
        dtype = dtype.newbyteorder(">")
    buf = np.frombuffer(memoryview(msg.data).cast("B"), dtype=np.uint8)
    rows = buf[: msg.step * msg.height].reshape(msg.height, msg.step)
    row = msg.width * channels * dtype.itemsize
    arr = np.ascontiguousarray(rows[:, :row]).view(dtype).reshape(msg.height, msg.width, channels)
    return arr[:, :, 0] if channels == 1 else arr


# -- palettes and colourising ----------------------------------------------------------------
# Cityscapes-like first colours so the paper's 7/19-class models look familiar; then generated.
_BASE_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]


def make_palette(num_classes: int) -> np.ndarray:
    """(max(N, 1), 3) uint8 distinct colours: a fixed base, then the PASCAL VOC bit-interleaving
    scheme (skipping colours already used), deterministic for any N."""
    n = max(int(num_classes), 1)
    colours = list(_BASE_PALETTE[:n])
    used = set(colours)
    i = 0
    while len(colours) < n:
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        i += 1
        if (r, g, b) not in used:
            used.add((r, g, b))
            colours.append((r, g, b))
    return np.array(colours, np.uint8)


def colorize_semantic(ids: np.ndarray, palette: np.ndarray, overlay: np.ndarray | None = None,
                      alpha: float = 0.0) -> np.ndarray:
    """Class ids (H, W) -> (H, W, 3) uint8 RGB; ids outside the palette (255 = ignore in labels)
    are black. With ``overlay`` (same size RGB) and alpha > 0 the palette is blended over the input
    image (alpha = palette weight)."""
    ids = np.asarray(ids)
    if ids.size and ids.min() >= 0 and ids.max() < len(palette):
        colours = np.take(palette, ids, axis=0).astype(np.uint8, copy=False)  # one gather (the node's case)
    else:
        ids = ids.astype(np.int64, copy=False)
        inside = (ids >= 0) & (ids < len(palette))
        colours = np.where(inside[..., None], palette[np.where(inside, ids, 0)], np.uint8(0)).astype(np.uint8)
    return blend(colours, overlay, alpha)


def blend(colours: np.ndarray, overlay: np.ndarray | None, alpha: float) -> np.ndarray:
    """Palette colours blended over the input image (alpha = palette weight); the colours as they
    are without an overlay of the same shape or with alpha <= 0."""
    if overlay is None or alpha <= 0.0 or overlay.shape != colours.shape:
        return colours
    a = float(min(alpha, 1.0))
    return (colours.astype(np.float32) * a + overlay.astype(np.float32) * (1.0 - a)).astype(np.uint8)


def colorize_normals(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> RGB, the usual (n + 1) / 2 mapping; non-finite -> black."""
    # In place on one float32 copy (4 passes instead of nan_to_num + clip + add + multiply copies).
    out = np.add(normals, 1.0, dtype=np.result_type(normals, np.float32))  # float32 stays float32
    out *= 127.5
    np.clip(out, 0.0, 255.0, out=out)
    out[~np.isfinite(normals)] = 0.0
    return out.astype(np.uint8)


# Anchor colours of a perceptually ordered map (close to matplotlib's "magma"), near = bright.
_DEPTH_ANCHORS = np.array([(252, 253, 191), (252, 137, 97), (183, 55, 121), (81, 18, 124), (0, 0, 4)],
                          np.float32)


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """Depth (H, W) metres -> RGB; near is bright, invalid (NaN) is black. Inverse-depth scaling
    keeps detail close to the camera where it matters; ``max_depth`` defaults to the 95th
    percentile of the frame."""
    valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros((*depth.shape, 3), np.uint8)
    if not valid.any():
        return out
    d = depth[valid]
    lo = max(float(d.min()), 1e-3)
    hi = float(max_depth) if max_depth else float(np.percentile(d, 95))
    hi = max(hi, lo * 1.0001)
    # t = 0 at lo, 1 at hi, linear in inverse depth
    t = (1.0 / lo - 1.0 / np.clip(d, lo, hi)) / (1.0 / lo - 1.0 / hi)
    x = t * (len(_DEPTH_ANCHORS) - 1)
    i = np.clip(x.astype(np.int64), 0, len(_DEPTH_ANCHORS) - 2)
    f = (x - i)[:, None]
    out[valid] = (_DEPTH_ANCHORS[i] * (1 - f) + _DEPTH_ANCHORS[i + 1] * f).astype(np.uint8)
    return out


def side_by_side(rgb: np.ndarray, outputs: dict[str, np.ndarray], palette: np.ndarray,
                 alpha: float = 0.0, width: int | None = None) -> np.ndarray:
    """One row RGB | semantic | depth | normals (the tasks present), each panel at ``rgb``'s size
    (outputs are stretched with nearest neighbour if smaller) and optionally scaled to ``width``."""
    from PIL import Image as PILImage

    h, w = rgb.shape[:2]
    panels = [rgb]
    if "semantic" in outputs:
        panels.append(colorize_semantic(outputs["semantic"], palette))
    if "depth" in outputs:
        panels.append(colorize_depth(outputs["depth"]))
    if "normals" in outputs:
        panels.append(colorize_normals(outputs["normals"]))
    size = (width, max(2, round(h * width / w))) if width else (w, h)
    row = []
    for i, p in enumerate(panels):
        interp = PILImage.BILINEAR if i == 0 else PILImage.NEAREST
        row.append(p if p.shape[1::-1] == size else np.asarray(PILImage.fromarray(p).resize(size, interp)))
    if alpha > 0 and "semantic" in outputs:
        row[1] = (row[1] * alpha + row[0] * (1 - alpha)).astype(np.uint8)
    return np.concatenate(row, axis=1)
