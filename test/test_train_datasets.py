"""``mtl-train`` on every registered dataset type (training/data/registry.py), on fixtures written in
the real on-disk layouts (the builders of test_data_adapters.py): a few steps each, checking what
the trainer was given (labels after the documented mapping, only the tasks the data labels) and
that a config that cannot work fails with one line naming the field (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_data_adapters import H, W, _cityscapes, _nyu, _vkitti

from mtl_perception.model.config import ConfigError
from training.config import DatasetSpec, TrainConfig
from training.data import storage
from training.data.registry import ClipSettings, build_dataset
from training.evaluate import main as eval_main
from training.trainer import Trainer
from training.trainer import main as train_main

ROOT = Path(__file__).resolve().parents[1]
MH, MW = 64, 128  # config/model/tiny.yaml input size
SLOW = [{"name": "slow", "epochs": 1, "steps_per_epoch": 2}]


def _cfg_dict(out: Path, train: Any, val: Any, override: dict[str, Any], stages: list | None = None,
              **data: Any) -> dict[str, Any]:
    return {"model": str(ROOT / "config/model/tiny.yaml"), "model_override": override, "out": str(out),
            "seed": 0, "threads": 1, "batch_size": 2, "ckpt_every": 100, "optim": {"lr": 1e-3},
            "align": {"disc_hidden": 8}, "stages": stages or SLOW, "val_offsets": "last",
            "data": {"train": train, "val": val, "clip_len": 3, "augment": False, "val_max_clips": 1, **data}}


def _train(out: Path, *args: Any, **kw: Any) -> tuple[Trainer, list[dict[str, Any]]]:
    trainer = Trainer(TrainConfig.from_dict(_cfg_dict(out, *args, **kw)), progress=False)
    trainer.run()
    steps = [json.loads(ln) for ln in (out / "steps.jsonl").read_text().splitlines()]
    return trainer, steps


def _nearest(a: np.ndarray, h: int = MH, w: int = MW) -> np.ndarray:
    """Independent nearest-exact resize: output pixel i samples input floor((i + 0.5) * in / out)."""
    rows = ((np.arange(h) + 0.5) * a.shape[0] / h).astype(int)
    cols = ((np.arange(w) + 0.5) * a.shape[1] / w).astype(int)
    return a[rows][:, cols]


# -- Cityscapes ----------------------------------------------------------------------------------
def _cityscapes_root(root: Path) -> Path:
    for seq in ("000001", "000002"):
        _cityscapes(root, "train", seq=seq)
    _cityscapes(root, "val")
    return root


def test_cityscapes_7_trains_without_a_normals_loss(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cs = {"type": "cityscapes", "root": str(_cityscapes_root(tmp_path / "cs")), "options": {"num_classes": 7}}
    trainer, steps = _train(tmp_path / "run", cs, cs, {"num_classes": 7})
    # The model predicts normals, Cityscapes has none: no normals loss, no normals metric.
    assert trainer.model.tasks == ("semantic", "depth", "normals")
    assert len(steps) == 2 and all("semantic" in s and "depth" in s and "normals" not in s for s in steps)
    val = json.loads((tmp_path / "run" / "metrics.json").read_text())[-1]
    assert "val_miou" in val and "val_mean_angle" not in val
    # labelIds -> categories (flat 0, vehicle 6, sky 4; ego vehicle void -> 255), then nearest resize.
    ids = np.full((H, W), 23)
    ids[:4], ids[4:8], ids[0, 0] = 7, 26, 1
    expected = np.vectorize({7: 0, 26: 6, 23: 4, 1: 255}.get)(ids)
    s = trainer.train_data[0]
    np.testing.assert_array_equal(s["semantic"].numpy(), _nearest(expected))
    depth = np.where(np.arange(H)[:, None] < 8, 0.2 * 2000 / 20, 0.0) * np.ones((1, W))
    np.testing.assert_allclose(s["depth"][0].numpy(), _nearest(depth), rtol=1e-6)
    assert "normals" not in s and s["images"].shape == (3, 3, MH, MW)
    # mtl-eval takes the same spec: the table has the tasks Cityscapes labels, and no normals column.
    spec = f"{{type: cityscapes, root: {cs['root']}, options: {{num_classes: 7}}}}"
    args = ["--checkpoint", str(tmp_path / "run" / "best.pt"), "-K", "2", "--clip-len", "3", "--no-baselines"]
    assert eval_main([*args, "--data", spec]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "Abs" in table and "Mean°" not in table
    assert eval_main([*args, "--data", spec.replace("7}", "19}")]) == 1
    assert capsys.readouterr().err.strip() == (
        "mtl-eval: --data (cityscapes): 19 classes, but the model has num_classes 7; "
        "set model_override.num_classes: 19 or another class set")


def test_cityscapes_normals_from_depth_are_trained(tmp_path: Path) -> None:
    cs = {"type": "cityscapes", "root": str(_cityscapes_root(tmp_path / "cs")),
          "options": {"num_classes": 19, "normals": "from_depth"}}
    trainer, steps = _train(tmp_path / "run", cs, cs, {"num_classes": 19})
    assert trainer.tasks == ("semantic", "depth", "normals") and all("normals" in s for s in steps)


# -- NYUv2, Virtual KITTI 2, synthetic -----------------------------------------------------------
def test_nyuv2_trains_on_its_labels(tmp_path: Path) -> None:
    _nyu(tmp_path / "nyu")
    nyu = {"type": "nyuv2", "root": str(tmp_path / "nyu")}
    trainer, steps = _train(tmp_path / "run", nyu, nyu, {"num_classes": 13})
    assert all({"semantic", "depth", "normals"} <= set(s) for s in steps)
    lab = np.load(tmp_path / "nyu" / "train" / "label" / "0.npy")
    np.testing.assert_array_equal(trainer.train_data[0]["semantic"].numpy(),
                                  _nearest(np.where(lab < 0, 255, lab).astype(np.int64)))


def test_vkitti2_trains_on_its_labels(tmp_path: Path) -> None:
    _vkitti(tmp_path / "vk")
    vk = {"type": "vkitti2", "root": str(tmp_path / "vk")}
    trainer, steps = _train(tmp_path / "run", vk, vk, {"num_classes": 14})
    assert len(trainer.train_data) == 2 and all("normals" in s for s in steps)
    s = trainer.train_data[1]  # clip ending on frame 3
    # colors.txt order of the release: Sky 1, Car 12, Road 5; depth (1000 + 100 * 3) cm, sky invalid
    expected = np.repeat(np.array([1] * 4 + [12] * 4 + [5] * 4)[:, None], W, axis=1)
    np.testing.assert_array_equal(s["semantic"].numpy(), _nearest(expected))
    np.testing.assert_allclose(s["depth"][0].numpy(), _nearest(np.where(expected == 1, 0, 13.0)))
    # classes: cityscapes7 -> Sky 4 (sky), Car 6 (vehicle), Road 0 (flat); 7 classes now
    spec = DatasetSpec(type="vkitti2", root=str(tmp_path / "vk"), options={"classes": "cityscapes7"})
    ds7 = build_dataset(spec, "data.val", "val", ClipSettings(3, 2, (MH, MW)), ("semantic",), 7)
    expected7 = np.repeat(np.array([4] * 4 + [6] * 4 + [0] * 4)[:, None], W, axis=1)
    np.testing.assert_array_equal(ds7[1]["semantic"].numpy(), _nearest(expected7))
    with pytest.raises(ConfigError, match="7 classes, but the model has num_classes 14"):
        build_dataset(spec, "data.val", "val", ClipSettings(3, 2, (MH, MW)), ("semantic",), 14)


def _synthetic(root: Path, clips: int = 2, frames: int = 4) -> np.ndarray:
    sem = np.repeat(np.array([0, 1, 2, 3, 4, 5, 6, 7] * 2)[None], 12, axis=0).astype(np.uint8)  # (12,16)
    for c in range(clips):
        folder = storage.clip_dir(root, c)
        for t in range(frames):
            rgb = np.full((12, 16, 3), (c * 4 + t) / 10, np.float32)
            n = np.zeros((12, 16, 3), np.float32)
            n[..., 2] = -1
            storage.write_frame(folder, t, rgb, sem, np.full((12, 16), 5.0, np.float32), n)
        meta = {"seed": c, "domain": "source", "scene": "street", "height": 12, "width": 16, "dt": 0.1}
        storage.write_meta(folder, meta, ("c",) * 8, np.eye(3), np.stack([np.eye(4)] * frames))
    return sem


def test_synthetic_train_validates_on_cityscapes(tmp_path: Path) -> None:
    sem = _synthetic(tmp_path / "syn")
    train = {"type": "synthetic", "root": str(tmp_path / "syn"), "options": {"classes": "cityscapes7"}}
    cs = str(_cityscapes_root(tmp_path / "cs"))
    val = {"type": "cityscapes", "root": cs, "options": {"num_classes": 7}}
    trainer, steps = _train(tmp_path / "run", train, val, {"num_classes": 7})
    # street road, sidewalk, building, pole, vegetation, vehicle, person, sky -> the 7 categories
    to7 = {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 6, 6: 5, 7: 4}
    np.testing.assert_array_equal(trainer.train_data[0]["semantic"].numpy(),
                                  _nearest(np.vectorize(to7.get)(sem)))
    assert all("normals" in s for s in steps)  # synthetic labels normals, Cityscapes does not
    val_row = json.loads((tmp_path / "run" / "metrics.json").read_text())[-1]
    assert "val_miou" in val_row and "val_mean_angle" not in val_row


def test_bare_path_is_synthetic_and_native_classes(tmp_path: Path) -> None:
    _synthetic(tmp_path / "syn")
    trainer, steps = _train(tmp_path / "run", str(tmp_path / "syn"), str(tmp_path / "syn"), {})
    assert trainer.cfg.data.train.type == "synthetic" and len(steps) == 2
    assert trainer.train_data[0]["semantic"][0, :16].tolist() == [0] * 8 + [1] * 8  # no relabelling


# -- unlabelled video and bags -------------------------------------------------------------------
def _video(path: Path, n: int = 6) -> np.ndarray:
    av = pytest.importorskip("av", reason="PyAV not installed")
    frames = np.zeros((n, 32, 48, 3), np.uint8)
    frames[..., 0] = (30 * np.arange(n))[:, None, None]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 48, 32, "yuv420p"
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return frames


def _bag(path: Path, n: int = 5) -> Path:
    pytest.importorskip("rosbags", reason="rosbags not installed")
    from training.data.bag import write_clip_bag

    rgb = np.random.default_rng(0).random((n, 16, 20, 3)).astype(np.float32)
    return write_clip_bag(path, rgb, np.zeros((n, 16, 20), np.uint8), np.ones((n, 16, 20), np.float32),
                          np.zeros((n, 16, 20, 3), np.float32), np.eye(3))


@pytest.mark.parametrize("kind", ["video", "bag"])
def test_unlabelled_video_trains_the_alignment_only(tmp_path: Path, kind: str) -> None:
    if kind == "video":
        _video(tmp_path / "v.mp4")
        src = str(tmp_path / "v.mp4")
    else:
        src = str(_bag(tmp_path / "bag"))
    _nyu(tmp_path / "nyu")
    train = {"type": kind, "paths": [src]}
    val = {"type": "nyuv2", "root": str(tmp_path / "nyu")}
    fast = [{"name": "fast", "epochs": 1, "steps_per_epoch": 2}]
    trainer, steps = _train(tmp_path / "run", train, val, {"num_classes": 13}, fast)
    assert trainer.tasks == ()
    tasks = {"semantic", "depth", "normals"}
    assert all(not tasks & set(s) and {"align_l1", "align_adv", "total"} <= set(s) for s in steps)
    # Without labels a slow stage has no loss at all: refused at config time, by name.
    with pytest.raises(ConfigError, match=r"stages\[0\].*no labels"):
        TrainConfig.from_dict(_cfg_dict(tmp_path / "r2", train, val, {"num_classes": 13}))


def test_target_section_names_an_unlabelled_source(tmp_path: Path) -> None:
    frames = _video(tmp_path / "v.mp4", 6)
    _nyu(tmp_path / "nyu")
    nyu = {"type": "nyuv2", "root": str(tmp_path / "nyu")}
    target = {"type": "video", "paths": [str(tmp_path / "v.mp4")], "options": {"frame_step": 2}}
    cfg = TrainConfig.from_dict(_cfg_dict(tmp_path / "run", nyu, nyu, {"num_classes": 13}, target=target))
    ds = build_dataset(cfg.data.target, "data.target", "target", ClipSettings(2, 1))
    # frames 0, 2, 4 (frame_step 2) -> clips (0, 2), (2, 4); red channel ramps 30 per frame
    assert len(ds) == 2 and ds.tasks == () and "semantic" not in ds[1]
    red = ds[1]["images"][:, 0].mean(dim=(1, 2)) * 255
    torch.testing.assert_close(red, torch.tensor([60.0, 120.0]), atol=4.0, rtol=0)
    assert frames.shape[0] == 6
    bad = [({"type": "movie", "paths": ["x"]}, r"data\.target\.type: invalid value 'movie'"),
           ({"type": "video"}, r"data\.target\.paths: missing"),
           ({"type": "video", "paths": ["x"], "options": {"fps": 3}}, r"data\.target\.options\.fps")]
    for spec, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_dict(_cfg_dict(tmp_path / "run", nyu, nyu, {"num_classes": 13}, target=spec))


# -- bad configs: one line, exit 2 ---------------------------------------------------------------
@pytest.mark.parametrize("train,override,msg", [
    ({"type": "kitti"}, {}, "data.train.type: invalid value 'kitti'"),
    ({"type": "cityscapes"}, {}, "data.train.root: missing"),
    ({"type": "cityscapes", "root": "NOWHERE"}, {}, "data.train.root: no such folder 'NOWHERE'"),
    ({"type": "cityscapes", "root": "CS", "options": {"num_classes": 8}}, {},
     "data.train.options.num_classes: invalid value 8"),
    ({"type": "cityscapes", "root": "CS", "split": "tset"}, {}, "data.train.split: invalid value 'tset'"),
    ({"type": "cityscapes", "root": "CS"}, {"num_classes": 7},
     "data.train (cityscapes): 19 classes, but the model has num_classes 7"),
    ({"type": "cityscapes", "root": "CS"}, {"tasks": ["normals"], "num_classes": 19},
     "data.train (cityscapes): labels ['semantic', 'depth'], none of the model's tasks ['normals']"),
    ({"type": "cityscapes", "root": "CS", "split": "train"}, {"num_classes": 19}, None),
])
def test_cli_refuses_bad_data_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          train: dict, override: dict, msg: str | None) -> None:
    cs = _cityscapes_root(tmp_path / "cs")
    if train.get("root") == "CS":
        train = {**train, "root": str(cs)}
    val = {"type": "cityscapes", "root": str(cs)}
    cfg = _cfg_dict(tmp_path / "run", train, val, override)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = train_main(["--config", str(tmp_path / "c.yaml"), "--no-progress", "--halt-at-step", "0"])
    err = capsys.readouterr().err.strip()
    if msg is None:  # the same file with a good field trains: the failures above are the fields
        assert rc == 0
        return
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err


def test_old_kind_field_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.kind: removed"):
        TrainConfig.from_dict(_cfg_dict(tmp_path, "a", "b", {}, kind="synthetic"))


def test_repo_train_configs_load() -> None:
    # Migrated ones name their type; a bare path (older configs) still reads as a synthetic folder.
    for path in sorted((ROOT / "config/train").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())["data"]["train"]
        cfg = TrainConfig.from_yaml(path)
        want = {"type": "synthetic", "root": raw} if isinstance(raw, str) else raw
        assert (cfg.data.train.type, cfg.data.train.root) == (want["type"], want["root"]), path


# -- NYUv2 raw video -----------------------------------------------------------------------------
T0 = 1294886363.0


def _raw_scene(raw: Path, n: int = 10) -> list[str]:
    """Scene bedroom_0001: RGB frame i at T0 + 0.04 i, a constant colour (20 i, 200 - 20 i, 7);
    depth frames 13 ms after each RGB frame; INDEX.txt in reverse (the reader sorts by time)."""
    d = raw / "bedroom_0001"
    d.mkdir(parents=True)
    names = []
    for i in range(n):
        r = f"r-{T0 + 0.04 * i:.6f}-{1000 + i}.ppm"
        Image.fromarray(np.full((48, 64, 3), (20 * i, 200 - 20 * i, 7), np.uint8)).save(d / r)
        dn = f"d-{T0 + 0.04 * i + 0.013:.6f}-{2000 + i}.pgm"
        (d / dn).write_bytes(b"P5\n64 48\n65535\n" + np.zeros((48, 64), ">u2").tobytes())
        names += [r, dn]
    (d / "INDEX.txt").write_text("\n".join(reversed(names)) + "\n")
    return names


def _colour(i: int) -> torch.Tensor:
    return torch.tensor([20.0 * i, 200.0 - 20 * i, 7.0]) / 255


def test_nyuv2_raw_frames_precede_the_labelled_frame(tmp_path: Path) -> None:
    _nyu(tmp_path / "nyu")
    names = _raw_scene(tmp_path / "raw")
    rgb = names[0::2]
    (tmp_path / "nyu" / "train" / "raw_index.txt").write_text(
        f"# sample raw frame\n0 bedroom_0001/{rgb[5]}\n1 bedroom_0001/{names[2 * 8 + 1]}\n"
        f"2 bedroom_0001/{rgb[1]}\n")
    spec = TrainConfig.from_dict(_cfg_dict(tmp_path, {"type": "nyuv2", "root": str(tmp_path / "nyu"),
                                                      "options": {"raw": str(tmp_path / "raw")}},
                                           str(tmp_path), {})).data.train

    def clips(clip_len: int, **opts: Any) -> Any:
        s = type(spec)(**{**spec.__dict__, "options": {**spec.options, **opts}})
        return build_dataset(s, "data.train", "train", ClipSettings(clip_len, 1))

    ds = clips(4)
    for sample, frames in ((0, [2, 3, 4]), (1, [5, 6, 7]), (2, [0, 0, 0])):
        im = ds[sample]["images"]
        for k, f in enumerate(frames):  # raw frames, resized to the layout's 12x16
            torch.testing.assert_close(im[k], _colour(f).view(3, 1, 1).expand(3, H, W), atol=1e-6, rtol=0)
        lab = np.load(tmp_path / "nyu" / "train" / "image" / f"{sample}.npy")
        torch.testing.assert_close(im[-1], torch.from_numpy(lab).permute(2, 0, 1))
    # the depth name of sample 1 (RGB 8 + 13 ms) resolves to RGB frame 8, the nearest in time
    assert ds.dataset.raw.anchor(1) == ("bedroom_0001", 8)
    im = clips(4, raw_step=2)[0]["images"]  # frames 1, 3 before frame 5; the window repeats the first
    for k, f in enumerate([1, 1, 3]):
        torch.testing.assert_close(im[k, :, 0, 0], _colour(f), atol=1e-6, rtol=0)
    # without raw frames the labelled frame repeats: what the option fixes
    s = type(spec)(**{**spec.__dict__, "options": {}})
    im = build_dataset(s, "data.train", "train", ClipSettings(4, 1))[0]["images"]
    assert all(torch.equal(im[k], im[-1]) for k in range(3))


def test_nyuv2_raw_trains_on_distinct_frames_and_bad_index_fails(tmp_path: Path) -> None:
    _nyu(tmp_path / "nyu")
    rgb = _raw_scene(tmp_path / "raw")[0::2]
    idx = tmp_path / "index.txt"
    idx.write_text("".join(f"{i} bedroom_0001/{rgb[4 + i]}\n" for i in range(3)))
    nyu = {"type": "nyuv2", "root": str(tmp_path / "nyu"),
           "options": {"raw": str(tmp_path / "raw"), "raw_index": str(idx)}}
    trainer, steps = _train(tmp_path / "run", nyu, {"type": "nyuv2", "root": str(tmp_path / "nyu")},
                            {"num_classes": 13}, [{"name": "joint", "epochs": 1, "steps_per_epoch": 2,
                                                   "keyframe_interval": 2}])
    im = trainer.train_data[2]["images"]  # labelled frame 6: raw frames 4, 5 before it
    for k, f in enumerate([4, 5]):
        torch.testing.assert_close(im[k], _colour(f).view(3, 1, 1).expand(3, MH, MW), atol=1e-6, rtol=0)
    assert len(steps) == 2
    idx.write_text(f"0 bedroom_0001/{rgb[4]}\nbogus line\n")
    with pytest.raises(ConfigError, match=r"data\.train \(nyuv2\): .*index\.txt line 2"):
        Trainer(TrainConfig.from_dict(_cfg_dict(tmp_path / "r2", nyu, nyu, {"num_classes": 13})),
                progress=False)
