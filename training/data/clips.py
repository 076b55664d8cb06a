"""Clip sampling for training and evaluation: T frames ending on the annotated frame.

A clip sample (what every dataset here returns):
    images            float32 (T,3,H,W) RGB in [0,1]
    semantic          int64 (H,W), 255 = ignore          } labels of the LAST (annotated) frame
    depth             float32 (1,H,W) metres, 0 = invalid }
    normals           float32 (3,H,W) optical frame, 0 = invalid
    intrinsics        float32 (3,3), scaled to the returned size (and crop / flip)
    keyframe_interval int K
    keyframe_offset   int in 0..K-1: the annotated frame is `offset` frames after the last keyframe
    semantic_all, depth_all, normals_all, poses   (T,...) - only where every frame is labelled

The paper (Sec. 4.1) averages metrics over the keyframe offsets 0..K-1; `keyframe_offset="all"`
enumerates every (annotated frame, offset) pair so an evaluator can do exactly that, and "random"
draws one per sample for training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mtl_perception.model.schedule import keyframe_flags

from . import storage
from .classes import CLASSES, IGNORE_INDEX, INDOOR_CLASSES, INDOOR_PALETTE, PALETTE
from .geometry import scale_intrinsics


# --------------------------------------------------------------------------------------------------
# Augmentations, one draw of parameters per clip so every frame and label agrees
# --------------------------------------------------------------------------------------------------
@dataclass
class ClipAugment:
    """Scale-crop, horizontal flip and colour jitter applied identically to all frames of a clip."""

    scale: tuple[float, float] = (1.0, 1.5)
    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __call__(self, s: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        def u(lo: float, hi: float) -> float:
            return lo + (hi - lo) * torch.rand((), generator=generator).item()

        images = s["images"]
        T, _, H, W = images.shape
        K = s["intrinsics"].numpy().copy()
        label_keys = [
            k for k in ("semantic", "depth", "normals", "semantic_all", "depth_all", "normals_all") if k in s
        ]
        # Scale up then crop back to (H,W): a zoom that keeps the output size; depth stays metric
        # and the intrinsics absorb the zoom.
        sc = u(*self.scale)
        if sc > 1.0 + 1e-6:
            h2, w2 = max(H, round(H * sc)), max(W, round(W * sc))
            y0 = int(torch.randint(0, h2 - H + 1, (), generator=generator))
            x0 = int(torch.randint(0, w2 - W + 1, (), generator=generator))
            images = F.interpolate(
                images, size=(h2, w2), mode="bilinear", align_corners=False, antialias=False
            )
            images = images[..., y0 : y0 + H, x0 : x0 + W]
            for k in label_keys:
                s[k] = _resize_nearest(s[k], (h2, w2))[..., y0 : y0 + H, x0 : x0 + W]
            K = scale_intrinsics(K, w2 / W, h2 / H)
            K[0, 2] -= x0
            K[1, 2] -= y0
        if self.flip and torch.rand((), generator=generator).item() < 0.5:
            images = images.flip(-1)
            for k in label_keys:
                s[k] = s[k].flip(-1)
            # Mirroring the image mirrors the scene about the optical y-z plane: n_x changes sign.
            for k in ("normals", "normals_all"):
                if k in s:
                    s[k] = s[k].clone()
                    s[k][..., 0, :, :] *= -1
            K[0, 2] = W - 1 - K[0, 2]
        # Colour jitter (same factors for the whole clip).
        b = u(1 - self.brightness, 1 + self.brightness)
        c = u(1 - self.contrast, 1 + self.contrast)
        sat = u(1 - self.saturation, 1 + self.saturation)
        images = images * b
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * c + mean
        gray = 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]
        images = (images - gray) * sat + gray
        s["images"] = images.clamp(0.0, 1.0).contiguous()
        s["intrinsics"] = torch.from_numpy(K.astype(np.float32))
        for k in label_keys:
            s[k] = s[k].contiguous()
        return s


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of (..., H, W) label tensors of any dtype (ids must not be interpolated)."""
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:])
    dtype = y.dtype
    y = F.interpolate(y.float(), size=size, mode="nearest-exact")
    return y.to(dtype).reshape(*shape[:-2], *size)


# --------------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One annotated frame: the frame keys of its sequence up to and including it (in order)."""

    frames: tuple[Any, ...]  # keys of the frames preceding the target, the target last


class ClipDataset(Dataset):
    """Map-style dataset of clips ending on an annotated frame; subclasses only read frames.

    Subclasses set CLASSES / PALETTE, fill `self.targets` and implement `read_image`, `read_labels`
    and `read_intrinsics` (native resolution). Everything else (clip windowing, keyframe offsets,
    resizing, augmentation, tensor conversion) lives here so all datasets behave the same.
    """

    CLASSES: tuple[str, ...] = ()
    PALETTE: np.ndarray = np.zeros((0, 3), np.uint8)
    per_frame_labels = False

    def __init__(
        self,
        clip_len: int = 4,
        keyframe_interval: int = 4,
        keyframe_offset: int | str = "random",
        size: tuple[int, int] | None = None,
        augment: ClipAugment | None = None,
        all_labels: bool = False,
    ) -> None:
        if clip_len < 1:
            raise ValueError("clip_len must be >= 1")
        if isinstance(keyframe_offset, int):
            keyframe_flags(clip_len, keyframe_interval, keyframe_offset)  # validates the range
        elif keyframe_offset not in ("random", "all"):
            raise ValueError(f"keyframe_offset must be an int, 'random' or 'all', got {keyframe_offset!r}")
        elif clip_len < keyframe_interval:
            # every offset 0..K-1 must fit: the clip has to reach back to its keyframe
            raise ValueError(f"clip_len ({clip_len}) must be >= keyframe_interval ({keyframe_interval}) "
                             f"for keyframe_offset={keyframe_offset!r}")
        self.clip_len = clip_len
        self.K = keyframe_interval
        self.offset = keyframe_offset
        self.size = size
        self.augment = augment
        self.all_labels = all_labels and self.per_frame_labels
        self.targets: list[Target] = []

    # -- to implement -------------------------------------------------------------------------------
    def read_image(self, key: Any) -> np.ndarray:  # (H,W,3) uint8 or float in [0,1]
        raise NotImplementedError

    def read_labels(self, key: Any) -> dict[str, np.ndarray]:  # semantic (H,W), depth (H,W), normals (H,W,3)
        raise NotImplementedError

    def read_intrinsics(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def read_pose(self, key: Any) -> np.ndarray | None:
        return None

    # -- generic ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.targets) * (self.K if self.offset == "all" else 1)

    def window(self, target: Target) -> list[Any]:
        """The T frame keys ending on the target; a sequence shorter than T repeats its first frame."""
        keys = list(target.frames[-self.clip_len :])
        return [keys[0]] * (self.clip_len - len(keys)) + keys

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.offset == "all":
            target, offset = self.targets[index // self.K], index % self.K
        elif self.offset == "random":
            target, offset = self.targets[index], int(torch.randint(0, self.K, ()).item())
        else:
            target, offset = self.targets[index], int(self.offset)
        keys = self.window(target)
        images = [_to_chw(self.read_image(k)) for k in keys]
        H0, W0 = images[-1].shape[-2:]
        label_keys = keys if self.all_labels else keys[-1:]
        labels = [self.read_labels(k) for k in label_keys]
        sem = torch.stack([torch.as_tensor(np.asarray(lb["semantic"], dtype=np.int64)) for lb in labels])
        dep = torch.stack([torch.as_tensor(np.asarray(lb["depth"], dtype=np.float32))[None] for lb in labels])
        nrm = torch.stack(
            [torch.as_tensor(np.asarray(lb["normals"], dtype=np.float32)).permute(2, 0, 1) for lb in labels]
        )
        img = torch.stack(images)
        Kmat = np.asarray(self.read_intrinsics(keys[-1]), np.float32)
        if self.size is not None and tuple(self.size) != (H0, W0):
            H, W = self.size
            img = F.interpolate(img, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
            sem, dep, nrm = (_resize_nearest(x, (H, W)) for x in (sem, dep, nrm))
            Kmat = scale_intrinsics(Kmat, W / W0, H / H0)
        s: dict[str, Any] = {"images": img.clamp(0, 1).contiguous(), "intrinsics": torch.from_numpy(Kmat)}
        if self.all_labels:
            s.update(semantic_all=sem, depth_all=dep, normals_all=nrm)
        s.update(semantic=sem[-1], depth=dep[-1], normals=nrm[-1])
        if self.augment is not None:
            s = self.augment(s)
            if self.all_labels:  # keep the last-frame labels identical to the augmented per-frame ones
                s.update(
                    semantic=s["semantic_all"][-1], depth=s["depth_all"][-1], normals=s["normals_all"][-1]
                )
        poses = [self.read_pose(k) for k in keys]
        if all(p is not None for p in poses):
            s["poses"] = torch.from_numpy(np.stack(poses).astype(np.float32))
        s["keyframe_interval"] = self.K
        s["keyframe_offset"] = offset
        return s


def _to_chw(img: np.ndarray) -> torch.Tensor:
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    a = a[..., :3]
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
    return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()


def unlabelled(height: int, width: int) -> dict[str, np.ndarray]:
    """Labels that are invalid everywhere, so unlabelled clips collate with labelled ones."""
    return {
        "semantic": np.full((height, width), IGNORE_INDEX, np.int64),
        "depth": np.zeros((height, width), np.float32),
        "normals": np.zeros((height, width, 3), np.float32),
    }


def nominal_intrinsics(height: int, width: int, hfov_deg: float = 60.0) -> np.ndarray:
    """A plausible K for video with unknown calibration (used only for unlabelled clips)."""
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float32)


# --------------------------------------------------------------------------------------------------
# Synthetic clips from disk (what `mtl-data generate` writes)
# --------------------------------------------------------------------------------------------------
class SyntheticClipDataset(ClipDataset):
    """Reads `DIR/clip_*/`; every frame is labelled, so every frame with a full window is a target.
    ``max_clips``: only the first N clip folders in sorted order (None = all), the same samples in
    the same order as a folder holding just those clips."""

    CLASSES = CLASSES
    PALETTE = PALETTE
    per_frame_labels = True

    def __init__(self, root: str | Path, *, stride: int = 1, max_clips: int | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        if max_clips is not None and max_clips < 1:
            raise ValueError(f"max_clips must be >= 1 (or None for all), got {max_clips!r}")
        self.root = Path(root)
        self.clips = storage.list_clips(self.root, max_clips)
        self.meta = [storage.read_meta(c) for c in self.clips]
        for c, m in zip(self.clips, self.meta):
            storage.check_frames(c, int(m["frames"]))
        scenes = {m.get("scene", "street") for m in self.meta}
        if scenes == {"indoor"}:
            self.CLASSES, self.PALETTE = INDOOR_CLASSES, INDOOR_PALETTE
        elif len(scenes) > 1:
            raise ValueError(f"{self.root}: mixes scene kinds {sorted(scenes)} with different class lists")
        for ci, m in enumerate(self.meta):
            n = int(m["frames"])
            first = min(self.clip_len - 1, n - 1)
            for t in range(first, n, stride):
                self.targets.append(
                    Target(tuple((ci, j) for j in range(max(0, t - self.clip_len + 1), t + 1)))
                )

    def read_image(self, key: tuple[int, int]) -> np.ndarray:
        return storage.read_rgb(self.clips[key[0]], key[1])

    def read_labels(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        return storage.read_labels(self.clips[key[0]], key[1])

    def read_intrinsics(self, key: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.meta[key[0]]["intrinsics"], np.float32)

    def read_pose(self, key: tuple[int, int]) -> np.ndarray:
        return np.asarray(self.meta[key[0]]["poses"][key[1]], np.float32)


class OnTheFlySyntheticDataset(ClipDataset):
    """Renders clip i with seed `seed + i` when asked; one EGL context per worker process.

    Why: unlimited fresh data without disk, at the cost of rendering time in the loader workers.
    """

    CLASSES = CLASSES
    PALETTE = PALETTE
    per_frame_labels = True

    def __init__(
        self,
        num_clips: int,
        size: tuple[int, int],
        *,
        domain: str = "source",
        scene: str = "street",
        seed: int = 0,
        **kw: Any,
    ) -> None:
        kw.pop("size", None)
        super().__init__(size=None, **kw)
        self.render_size = tuple(size)
        self.domain, self.scene, self.seed = domain, scene, seed
        if scene == "indoor":
            self.CLASSES, self.PALETTE = INDOOR_CLASSES, INDOOR_PALETTE
        self.targets = [Target(((i, t),)) for i in range(num_clips) for t in [self.clip_len - 1]]
        self._gen = None
        self._cache: tuple[int, Any] | None = None

    def window(self, target: Target) -> list[Any]:
        i = target.frames[0][0]
        return [(i, t) for t in range(self.clip_len)]

    def _clip(self, i: int):
        if self._cache is None or self._cache[0] != i:
            from .synthetic import SyntheticGenerator

            if self._gen is None:
                self._gen = SyntheticGenerator(*self.render_size)
            self._cache = (i, self._gen.clip(self.seed + i, self.clip_len, self.domain, self.scene))
        return self._cache[1]

    def read_image(self, key: tuple[int, int]) -> np.ndarray:
        return self._clip(key[0]).rgb[key[1]]

    def read_labels(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        c = self._clip(key[0])
        return {"semantic": c.semantic[key[1]], "depth": c.depth[key[1]], "normals": c.normals[key[1]]}

    def read_intrinsics(self, key: tuple[int, int]) -> np.ndarray:
        return self._clip(key[0]).intrinsics

    def read_pose(self, key: tuple[int, int]) -> np.ndarray:
        return self._clip(key[0]).poses[key[1]]

    def __getstate__(self) -> dict[str, Any]:  # GL contexts don't pickle; workers make their own
        d = dict(self.__dict__)
        d["_gen"], d["_cache"] = None, None
        return d
