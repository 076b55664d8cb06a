"""Clip sampling rules and clip-consistent augmentation (no renderer needed)."""

import numpy as np
import pytest
import torch

from training.data.clips import ClipAugment, ClipDataset, Target, keyframe_flags


def test_keyframe_flags_rule():
    assert keyframe_flags(4, 4, 0) == [True, False, False, True]
    assert keyframe_flags(6, 2, 1) == [True, False, True, False, True, False]
    assert keyframe_flags(5, 3, 2) == [True, False, True, False, False]
    with pytest.raises(ValueError, match="cannot end"):
        keyframe_flags(3, 8, 7)  # the clip is too short to end 7 frames after a keyframe
    assert keyframe_flags(1, 1, 0) == [True]
    for T, K, o in [(8, 4, 0), (8, 4, 3), (7, 3, 1)]:
        f = keyframe_flags(T, K, o)
        assert f[T - 1 - o] and f[0]
        last_key = max(i for i, x in enumerate(f) if x)
        assert T - 1 - last_key == o  # the annotated frame is `offset` after the last keyframe
    with pytest.raises(ValueError):
        keyframe_flags(4, 4, 4)


class _Toy(ClipDataset):
    """Frame t of a 10-frame sequence: image value t/10, semantic t, a gradient depth."""

    CLASSES = tuple("abcdefghij")
    per_frame_labels = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.targets = [Target(tuple(range(max(0, t - self.clip_len + 1), t + 1))) for t in range(10)]

    def read_image(self, t):
        img = np.zeros((8, 12, 3), np.float32)
        img[..., 0] = np.linspace(0, 1, 12)[None]
        img[..., 1] = t / 10
        return img

    def read_labels(self, t):
        n = np.zeros((8, 12, 3), np.float32)
        n[..., 0], n[..., 2] = 0.6, -0.8
        sem = np.tile(np.arange(12) % 10, (8, 1))
        return {"semantic": sem, "depth": np.full((8, 12), 1.0 + t, np.float32), "normals": n}

    def read_intrinsics(self, t):
        return np.array([[10, 0, 5.5], [0, 10, 3.5], [0, 0, 1]], np.float32)


def test_window_ends_on_annotated_frame_and_pads_at_start():
    ds = _Toy(clip_len=4, keyframe_interval=2, keyframe_offset="all", all_labels=True)
    assert len(ds) == 20
    s = ds[2 * 5 + 1]  # target 5, offset 1
    assert s["keyframe_offset"] == 1
    np.testing.assert_allclose(s["images"][:, 1, 0, 0].numpy(), [0.2, 0.3, 0.4, 0.5], atol=1e-6)
    assert float(s["depth"][0, 0, 0]) == 6.0
    s0 = ds[0]  # target 0: the first frame repeated
    np.testing.assert_allclose(s0["images"][:, 1, 0, 0].numpy(), [0.0] * 4)
    fixed = _Toy(clip_len=4, keyframe_interval=3, keyframe_offset=2)
    assert len(fixed) == 10 and fixed[4]["keyframe_offset"] == 2
    rnd = _Toy(clip_len=3, keyframe_interval=3)
    assert {rnd[0]["keyframe_offset"] for _ in range(40)} == {0, 1, 2}
    with pytest.raises(ValueError, match="clip_len"):
        _Toy(clip_len=2, keyframe_interval=3)  # offset 2 could not reach back to its keyframe


def test_resize_scales_intrinsics():
    ds = _Toy(clip_len=2, keyframe_interval=1, keyframe_offset=0, size=(16, 24))
    s = ds[3]
    assert s["images"].shape == (2, 3, 16, 24) and s["semantic"].shape == (16, 24)
    K = s["intrinsics"].numpy()
    assert K[0, 0] == pytest.approx(20) and K[0, 2] == pytest.approx(11.5)


def test_augmentation_is_consistent_across_clip_and_labels():
    ds = _Toy(clip_len=3, keyframe_interval=1, keyframe_offset=0, all_labels=True)
    aug = ClipAugment(scale=(1.3, 1.3), flip=True, brightness=0, contrast=0, saturation=0)
    flipped = unflipped = 0
    for seed in range(12):
        s = aug(ds[5], generator=torch.Generator().manual_seed(seed))
        imgs = s["images"]
        assert imgs.shape == (3, 3, 8, 12)
        # The horizontal gradient (channel 0) is the same in every frame: same crop and flip.
        for t in range(1, 3):
            torch.testing.assert_close(imgs[t, 0], imgs[0, 0])
        # Flip negates n_x and reverses the gradient; labels and images agree.
        grad_up = bool(imgs[0, 0, 0, -1] > imgs[0, 0, 0, 0])
        nx = float(s["normals"][0, 0, 0])
        assert (nx > 0) == grad_up
        assert torch.equal(s["semantic"], s["semantic_all"][-1])
        assert (s["depth_all"][:, 0, 0, 0] == torch.tensor([4.0, 5.0, 6.0])).all()
        # Principal point stays consistent with the mirrored / cropped geometry.
        K = s["intrinsics"]
        assert K[0, 0] == pytest.approx(10 * round(12 * 1.3) / 12, rel=1e-5)
        flipped += not grad_up
        unflipped += grad_up
    assert flipped and unflipped


def test_colour_jitter_same_for_all_frames():
    ds = _Toy(clip_len=2, keyframe_interval=1, keyframe_offset=0)
    s = ds[0]  # both frames identical (padding)
    out = ClipAugment(scale=(1.0, 1.0), flip=False, brightness=0.5)(s, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["images"][0], out["images"][1])
