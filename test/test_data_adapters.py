"""Dataset adapters read tiny fixtures written in the exact on-disk layouts."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.cityscapes import CLASSES_7, CLASSES_19, CityscapesDataset, disparity_to_depth
from training.data.nyuv2 import NYUv2Dataset
from training.data.vkitti2 import CLASSES as VK_CLASSES
from training.data.vkitti2 import VKITTI2Dataset

H, W = 12, 16


def _check_sample(s, t_len, ncls):
    assert s["images"].shape == (t_len, 3, H, W) and s["images"].dtype == torch.float32
    assert 0 <= s["images"].min() and s["images"].max() <= 1
    assert s["semantic"].shape == (H, W) and s["semantic"].dtype == torch.int64
    sem = s["semantic"]
    assert ((sem >= 0) & (sem < ncls) | (sem == 255)).all()
    assert s["depth"].shape == (1, H, W) and torch.isfinite(s["depth"]).all() and (s["depth"] >= 0).all()
    assert s["normals"].shape == (3, H, W) and s["intrinsics"].shape == (3, 3)


# ----------------------------------------------------------------------------------------- NYUv2
def _nyu(root, n=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("image", "label", "depth", "normal"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((H, W, 3)).astype(np.float32))
            lab = rng.integers(-1, 13, (H, W)).astype(np.float32)
            np.save(root / split / "label" / f"{i}.npy", lab)
            d = rng.uniform(0.5, 8, (H, W, 1)).astype(np.float32)
            d[0, 0] = 0
            np.save(root / split / "depth" / f"{i}.npy", d)
            nrm = rng.normal(size=(H, W, 3)).astype(np.float32)
            np.save(root / split / "normal" / f"{i}.npy", nrm / np.linalg.norm(nrm, axis=-1, keepdims=True))


def test_nyuv2(tmp_path):
    _nyu(tmp_path)
    ds = NYUv2Dataset(tmp_path, "val", keyframe_interval=1, keyframe_offset=0)
    assert len(ds) == 3 and len(ds.CLASSES) == 13 and ds.PALETTE.shape == (13, 3)
    s = ds[1]
    _check_sample(s, 1, 13)
    lab = np.load(tmp_path / "val" / "label" / "1.npy")
    np.testing.assert_array_equal(s["semantic"].numpy(), np.where(lab < 0, 255, lab))
    assert s["depth"][0, 0, 0] == 0 and (s["depth"][0].flatten()[1:] > 0).all()
    torch.testing.assert_close(s["normals"].norm(dim=0), torch.ones(H, W))


def test_nyuv2_errors_name_the_path(tmp_path):
    _nyu(tmp_path, 1)
    (tmp_path / "train" / "depth" / "0.npy").unlink()
    ds = NYUv2Dataset(tmp_path, "train", keyframe_interval=1, keyframe_offset=0)
    with pytest.raises(FileNotFoundError, match=r"depth/0\.npy"):
        ds[0]
    (tmp_path / "train" / "label" / "0.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"label/0\.npy"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="nothere"):
        NYUv2Dataset(tmp_path / "nothere")


# ------------------------------------------------------------------------------------ Cityscapes
def _cityscapes(root, split="val", city="lindau", seq="000001", annotated=19, frames=(16, 17, 18, 19)):
    rng = np.random.default_rng(1)
    for f in frames:
        d = root / "leftImg8bit_sequence" / split / city
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            d / f"{city}_{seq}_{f:06d}_leftImg8bit.png"
        )
    base = f"{city}_{seq}_{annotated:06d}"
    for kind in ("gtFine", "disparity", "camera"):
        (root / kind / split / city).mkdir(parents=True, exist_ok=True)
    ids = np.zeros((H, W), np.uint8)
    ids[:4] = 7  # road
    ids[4:8] = 26  # car
    ids[8:] = 23  # sky
    ids[0, 0] = 1  # ego vehicle (void)
    Image.fromarray(ids).save(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png")
    disp = np.full((H, W), 1 + 20 * 256, np.uint16)  # disparity 20 px
    disp[8:] = 0  # invalid
    Image.fromarray(disp).save(root / "disparity" / split / city / f"{base}_disparity.png")
    cam = {
        "extrinsic": {"baseline": 0.2, "pitch": 0.0},
        "intrinsic": {"fx": 2000.0, "fy": 2000.0, "u0": 1000.0, "v0": 500.0},
    }
    (root / "camera" / split / city / f"{base}_camera.json").write_text(json.dumps(cam))
    return base


def test_disparity_to_depth():
    d = disparity_to_depth(np.array([0, 1, 257, 1 + 2 * 256], np.uint16), baseline=0.2, fx=2000.0)
    np.testing.assert_allclose(d, [0, 0, 400.0, 200.0])


@pytest.mark.parametrize("ncls", [19, 7])
def test_cityscapes(tmp_path, ncls):
    _cityscapes(tmp_path)
    ds = CityscapesDataset(
        tmp_path, "val", num_classes=ncls, clip_len=3, keyframe_interval=2, keyframe_offset="all"
    )
    assert ds.CLASSES == (CLASSES_19 if ncls == 19 else CLASSES_7) and len(ds) == 2
    s = ds[1]
    _check_sample(s, 3, ncls)
    sem = s["semantic"]
    road, car, sky = (0, 13, 10) if ncls == 19 else (0, 6, 4)
    assert (
        sem[0, 0] == 255 and (sem[1:4] == road).all() and (sem[4:8] == car).all() and (sem[8:] == sky).all()
    )
    torch.testing.assert_close(s["depth"][0, :8], torch.full((8, W), 0.2 * 2000 / 20))
    assert (s["depth"][0, 8:] == 0).all()
    assert (s["normals"] == 0).all()
    assert s["intrinsics"][0, 0] == 2000
    # The clip comes from the sequence frames 17, 18, 19.
    img19 = np.array(Image.open(next((tmp_path / "leftImg8bit_sequence").rglob("*000019_leftImg8bit.png"))))
    torch.testing.assert_close(s["images"][-1], torch.from_numpy(img19).permute(2, 0, 1).float() / 255)


def test_cityscapes_normals_from_depth_and_errors(tmp_path):
    base = _cityscapes(tmp_path)
    ds = CityscapesDataset(
        tmp_path, "val", normals="from_depth", clip_len=2, keyframe_interval=1, keyframe_offset=0
    )
    n = ds[0]["normals"]
    # Constant depth: a fronto-parallel plane, normal -z wherever the stencil is valid.
    valid = n.norm(dim=0) > 0
    assert valid.sum() > 0 and torch.allclose(n[2][valid], torch.tensor(-1.0))
    (tmp_path / "camera" / "val" / "lindau" / f"{base}_camera.json").write_text("{broken")
    ds = CityscapesDataset(tmp_path, "val", clip_len=2, keyframe_interval=1, keyframe_offset=0)
    with pytest.raises(ValueError, match=f"{base}_camera.json"):
        ds[0]
    (tmp_path / "leftImg8bit_sequence" / "val" / "lindau" / "lindau_000001_000018_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match="000018_leftImg8bit.png"):
        ds[0]


# --------------------------------------------------------------------------------------- VKITTI2
def _vkitti(root, n=4):
    var = root / "Scene01" / "clone"
    fr = var / "frames"
    for sub in ("rgb", "depth", "classSegmentation"):
        (fr / sub / "Camera_0").mkdir(parents=True)
    (var / "colors.txt").write_text("Category r g b\nSky 90 200 255\nRoad 100 60 100\nCar 255 127 80\n")
    (var / "intrinsic.txt").write_text(
        "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n"
        + "".join(f"{i} {c} 725.0087 725.0087 620.5 187.0\n" for i in range(n) for c in (0, 1))
    )
    rng = np.random.default_rng(2)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
            fr / "rgb" / "Camera_0" / f"rgb_{i:05d}.jpg"
        )
        seg = np.zeros((H, W, 3), np.uint8)
        seg[:4] = (90, 200, 255)
        seg[4:8] = (255, 127, 80)
        seg[8:] = (100, 60, 100)
        Image.fromarray(seg).save(fr / "classSegmentation" / "Camera_0" / f"classgt_{i:05d}.png")
        d = np.full((H, W), 1000 + 100 * i, np.uint16)
        d[:4] = 65535
        Image.fromarray(d).save(fr / "depth" / "Camera_0" / f"depth_{i:05d}.png")


def test_vkitti2(tmp_path):
    _vkitti(tmp_path)
    ds = VKITTI2Dataset(tmp_path, clip_len=3, keyframe_interval=2, keyframe_offset=1, all_labels=True)
    assert len(ds) == 2
    s = ds[1]
    _check_sample(s, 3, len(VK_CLASSES))
    sem = s["semantic"]
    assert (sem[:4] == VK_CLASSES.index("Sky")).all() and (sem[4:8] == VK_CLASSES.index("Car")).all()
    assert (sem[8:] == VK_CLASSES.index("Road")).all()
    assert (s["depth"][0, :4] == 0).all()
    torch.testing.assert_close(s["depth"][0, 4:], torch.full((8, W), 13.0))
    torch.testing.assert_close(s["depth_all"][:, 0, 6, 3], torch.tensor([11.0, 12.0, 13.0]))
    valid = s["normals"].norm(dim=0) > 0
    assert valid.sum() > 0 and torch.allclose(s["normals"][2][valid], torch.tensor(-1.0))
    assert s["intrinsics"][0, 2] == pytest.approx(620.5)


def test_vkitti2_errors(tmp_path):
    _vkitti(tmp_path, 2)
    (tmp_path / "Scene01" / "clone" / "frames" / "depth" / "Camera_0" / "depth_00001.png").unlink()
    ds = VKITTI2Dataset(tmp_path, clip_len=1, keyframe_interval=1, keyframe_offset=0)
    with pytest.raises(FileNotFoundError, match="depth_00001.png"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="Camera_9"):
        VKITTI2Dataset(tmp_path, camera="Camera_9")
