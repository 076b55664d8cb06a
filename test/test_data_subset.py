"""``data.train.max_clips``: a synthetic dataset limited to the first N clip folders in sorted order
(docs/data.md), replacing the Makefile's folder of symlinks. Checked against the clip files read
back independently (PIL), against a symlinked folder of the same clips through the trainer's own
sampler (same batches), and for the one-line errors of bad values.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mtl_perception.model.config import ConfigError
from training.config import DatasetSpec, TrainConfig
from training.data import storage
from training.data.registry import ClipSettings, build_dataset
from training.trainer import Trainer
from training.trainer import main as train_main

ROOT = Path(__file__).resolve().parents[1]
CLIPS, FRAMES, H, W = 5, 4, 12, 16


def _clips(root: Path) -> None:
    """Five clips whose every pixel encodes (clip, frame), written last-first, next to a
    ``clip_000000_bag`` folder (no meta.json: not a clip) as ``mtl-data generate --bag`` leaves."""
    sem = np.repeat(np.arange(8).repeat(2)[None], H, axis=0).astype(np.uint8)
    n = np.zeros((H, W, 3), np.float32)
    n[..., 2] = -1
    for c in reversed(range(CLIPS)):
        folder = storage.clip_dir(root, c)
        for t in range(FRAMES):
            rgb = np.full((H, W, 3), (10 * c + t) / 255, np.float32)
            storage.write_frame(folder, t, rgb, sem, np.full((H, W), 2.0 + c, np.float32), n)
        meta = {"seed": c, "domain": "source", "scene": "street", "height": H, "width": W, "dt": 0.1}
        storage.write_meta(folder, meta, ("c",) * 8, np.eye(3), np.stack([np.eye(4)] * FRAMES))
    (root / "clip_000000_bag").mkdir()


def test_first_n_clips_frames_in_order(tmp_path: Path) -> None:
    _clips(tmp_path)
    spec = DatasetSpec(root=str(tmp_path), max_clips=3)
    ds = build_dataset(spec, "data.train", "train", ClipSettings(2, 1))
    # Independently: the first 3 folders by name; clip_len 2 -> targets on frames 1..3 of each.
    folders = sorted(p for p in tmp_path.glob("clip_*") if (p / "meta.json").is_file())[:3]
    expected = [[np.asarray(Image.open(f / "rgb" / f"{t:06d}.png")) for t in (j - 1, j)]
                for f in folders for j in range(1, FRAMES)]
    assert len(ds) == len(expected) == 9
    for i, frames in enumerate(expected):
        got = (ds[i]["images"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, np.stack(frames), err_msg=f"sample {i}")
    # clip 2's value is 20 + t; nothing of clips 3, 4 (values 30.., 40..) is read
    assert ds[8]["images"].mul(255).round().unique().tolist() == [22.0, 23.0]
    # More than the folder holds: every clip (at most N, like val_max_clips)
    assert len(build_dataset(DatasetSpec(root=str(tmp_path), max_clips=99), "d", "train",
                             ClipSettings(2, 1))) == CLIPS * 3


def _cfg(out: Path, train: dict[str, Any], val: str) -> dict[str, Any]:
    return {"model": str(ROOT / "config/model/tiny.yaml"), "out": str(out), "seed": 3, "threads": 1,
            "batch_size": 2, "model_override": {"input_size": [32, 64]}, "val_offsets": "last",
            "stages": [{"name": "joint", "epochs": 1, "steps_per_epoch": 4, "keyframe_interval": 2}],
            "data": {"train": train, "val": {"type": "synthetic", "root": val}, "clip_len": 3}}


def _batches(cfg: dict[str, Any], n: int = 4) -> list[dict[str, Any]]:
    t = Trainer(TrainConfig.from_dict(cfg), progress=False)
    return list(itertools.islice(iter(t._loader(t.stage)), n))


def test_same_batches_as_a_folder_of_symlinks(tmp_path: Path) -> None:
    """What the Makefile did before (a folder linking the first N clips) and the option draw the
    same augmented batches in the same order; the whole folder draws others."""
    full, pilot = tmp_path / "train", tmp_path / "pilot"
    _clips(full)
    pilot.mkdir()
    for c in range(3):
        (pilot / f"clip_{c:06d}").symlink_to(full / f"clip_{c:06d}")
    linked = _batches(_cfg(tmp_path / "a", {"root": str(pilot)}, str(full)))
    option = _batches(_cfg(tmp_path / "b", {"root": str(full), "max_clips": 3}, str(full)))
    whole = _batches(_cfg(tmp_path / "c", {"root": str(full)}, str(full)))
    assert len(linked) == len(option) == 4
    for x, y in zip(linked, option):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k], k
    assert any(not torch.equal(x["images"], z["images"]) for x, z in zip(linked, whole))


@pytest.mark.parametrize("value,msg", [
    (0, "data.train.max_clips: invalid value 0; allowed: an integer >= 1"),
    (-2, "data.train.max_clips: invalid value -2"),
    ("true", "data.train.max_clips: expected an integer, got True"),
    ("2.5", "data.train.max_clips: expected an integer, got 2.5"),
])
def test_bad_max_clips_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          value: Any, msg: str) -> None:
    _clips(tmp_path / "d")
    cfg = _cfg(tmp_path / "run", {"root": str(tmp_path / "d")}, str(tmp_path / "d"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = train_main(["--config", str(tmp_path / "c.yaml"), "--set", f"data.train.max_clips={value}",
                     "--no-progress", "--halt-at-step", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err


def test_max_clips_only_on_clip_folders(tmp_path: Path) -> None:
    msg = r"data\.val\.max_clips: invalid value 2; allowed: null \(cityscapes"
    with pytest.raises(ConfigError, match=msg):
        DatasetSpec(type="cityscapes", root="x", max_clips=2).validate("data.val")
    DatasetSpec(root="x", max_clips=2).validate("data.val")  # synthetic: fine, no file access


def test_an_interrupted_clip_counts_only_among_the_first_n(tmp_path: Path) -> None:
    """A clip folder without meta.json (a stopped ``mtl-data generate``) after the first N clips
    changes nothing (a folder of just those N clips would train), so the subset builds; one among
    them would shift the selection to a later clip, so it fails the build naming the folder."""
    _clips(tmp_path)
    (tmp_path / "clip_000004" / "meta.json").unlink()

    def build(n: int | None) -> Any:
        spec = DatasetSpec(root=str(tmp_path), max_clips=n)
        return build_dataset(spec, "data.train", "train", ClipSettings(2, 1))

    ds = build(3)
    assert len(ds) == 3 * 3 and ds[8]["images"].mul(255).round().unique().tolist() == [22.0, 23.0]
    for n in (None, 4, 5):  # all clips, or a subset reaching past the interrupted one
        with pytest.raises(ConfigError, match=r"clip_000004: no meta\.json"):
            build(n)
    (tmp_path / "clip_000001" / "meta.json").unlink()  # now one among the first 3
    with pytest.raises(ConfigError, match=r"clip_000001: no meta\.json"):
        build(3)
