"""What a new user meets with damaged or wrong training data (docs/errors.md, "Training data"):
``mtl-train`` on a synthetic folder with one damage each, and ``mtl-data generate`` with bad
arguments. Each must end in one line naming the file or field, with the documented exit code
(2: found when the dataset is built, before training; 1: a file that turns out unreadable during
training), never a traceback.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from training.data import storage
from training.data.cli import main as data_main
from training.trainer import main as train_main

ROOT = Path(__file__).resolve().parents[1]
H, W, FRAMES = 16, 32, 4


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four valid clips in the on-disk format (storage's writers; no renderer needed)."""
    root = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    n = np.zeros((H, W, 3), np.float32)
    n[..., 2] = -1
    for c in range(4):
        folder = storage.clip_dir(root, c)
        for t in range(FRAMES):
            rgb, sem = rng.random((H, W, 3)).astype(np.float32), rng.integers(0, 8, (H, W)).astype(np.uint8)
            storage.write_frame(folder, t, rgb, sem, np.full((H, W), 3.0, np.float32), n)
        meta = {"seed": c, "domain": "source", "scene": "street", "height": H, "width": W, "dt": 0.1}
        storage.write_meta(folder, meta, ("c",) * 8, np.eye(3), np.stack([np.eye(4)] * FRAMES))
    return root


def _edit_meta(key: str, value: object) -> Callable[[Path], None]:
    def f(d: Path) -> None:
        p = d / "clip_000002" / "meta.json"
        doc = json.loads(p.read_text())
        if value is None:
            del doc[key]
        else:
            doc[key] = value
        p.write_text(json.dumps(doc))
    return f


def _truncate_all_rgb(d: Path) -> None:
    for p in d.glob("clip_*/rgb/*.png"):
        p.write_bytes(p.read_bytes()[:60])  # a PNG header and part of IHDR: opens, fails to decode


CASES = {
    # found while building the dataset: exit 2, before any step
    "empty folder": (lambda d: [shutil.rmtree(c) for c in d.glob("clip_*")], 2,
                     "data.train (synthetic): no clip_*/meta.json under {d}"),
    "root is a file": (lambda d: (shutil.rmtree(d), d.write_text("")), 2,
                       "data.train.root: '{d}' is a file, not a folder"),
    "interrupted generation": (lambda d: (d / "clip_000003/meta.json").unlink(), 2,
                               "{d}/clip_000003: no meta.json (an interrupted `mtl-data generate`?)"),
    "missing frame file": (lambda d: (d / "clip_000001/depth/000003.png").unlink(), 2,
                           "missing frame file: {d}/clip_000001/depth/000003.png (meta.json says 4 frames)"),
    "zero-byte frame file": (lambda d: (d / "clip_000003/semantic/000000.png").write_bytes(b""), 2,
                             "empty frame file: {d}/clip_000003/semantic/000000.png"),
    "meta.json not JSON": (lambda d: (d / "clip_000002/meta.json").write_text("{bad"), 2,
                           "malformed clip metadata {d}/clip_000002/meta.json"),
    "meta.json a list": (lambda d: (d / "clip_000002/meta.json").write_text("[1, 2]"), 2,
                         "{d}/clip_000002/meta.json: a list, not a JSON object"),
    "meta.json without frames": (_edit_meta("frames", None), 2,
                                 "clip_000002/meta.json: field 'frames' is None, expected an integer >= 1"),
    "meta.json short poses": (_edit_meta("poses", [np.eye(4).tolist()] * 2), 2,
                              "{d}/clip_000002/meta.json: field 'poses' is not 4 4x4 matrices"),
    "meta.json bad intrinsics": (_edit_meta("intrinsics", [[1, 0], [0, 1]]), 2,
                                 "{d}/clip_000002/meta.json: field 'intrinsics' is not a 3x3 matrix"),
    # found only when a frame is decoded: exit 1, during training
    "truncated png": (_truncate_all_rgb, 1, "malformed frame file {d}/clip_00000"),
}


def _train(tmp_path: Path, train: Path, val: Path, workers: int = 0) -> int:
    cfg = {"model": str(ROOT / "config/model/tiny.yaml"), "out": str(tmp_path / "run"), "threads": 1,
           "batch_size": 2, "val_offsets": "last",
           "stages": [{"name": "slow", "epochs": 1, "steps_per_epoch": 2}],
           "data": {"train": str(train), "val": str(val), "clip_len": 2, "val_max_clips": 1,
                    "num_workers": workers}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return train_main(["--config", str(tmp_path / "c.yaml"), "--no-progress"])


# The build-time cases never reach the loader; the decode-time one runs in-process and in 2
# DataLoader workers (torch re-raises a worker's error with the worker's traceback in its text).
@pytest.mark.parametrize("case,workers", [(c, 0) for c in CASES] + [("truncated png", 2)])
def test_damaged_synthetic_data_one_line(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         case: str, workers: int) -> None:
    damage, code, msg = CASES[case]
    d = tmp_path / "d"
    shutil.copytree(good, d)
    damage(d)
    rc = _train(tmp_path, d, good, workers)
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("mtl-train: stage")]
    assert rc == code and len(err) == 1 and msg.format(d=d) in err[0], (rc, err)


def test_the_same_folder_undamaged_trains(good: Path, tmp_path: Path) -> None:
    """The cases above fail by their damage: the fixture itself trains (exit 0)."""
    assert _train(tmp_path, good, good) == 0


@pytest.mark.parametrize("args,msg", [
    (["--clips", "0"], "argument --clips: expected an integer >= 1, got '0'"),
    (["--clips", "-1"], "argument --clips: expected an integer >= 1, got '-1'"),
    (["--frames", "0"], "argument --frames: expected an integer >= 1, got '0'"),
    (["--size", "0x128"], "argument --size: size must be HxW with each side in 1..8192; got '0x128'"),
    (["--size", "20000x20000"], "argument --size: size must be HxW with each side in 1..8192"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0"),
    (["--out", "FILE"], "--out '{f}': a file, not a folder"),
])
def test_generate_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                        msg: str) -> None:
    f = tmp_path / "a_file"
    f.write_text("")
    argv = ["generate", "--out", str(tmp_path / "out"), *[str(f) if a == "FILE" else a for a in args]]
    with pytest.raises(SystemExit) as e:
        data_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and msg.format(f=f) in err[-1], err
    assert err[0].startswith("usage:") and "Traceback" not in "\n".join(err)  # argparse: usage + error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["truncated png", "meta.json not JSON"])
def test_eval_on_damaged_data_one_line(good: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       case: str) -> None:
    """``mtl-eval --data`` on the same damage: one line naming the file, exit 1 (docs/errors.md)."""
    from training.evaluate import main as eval_main

    damage, _, msg = CASES[case]
    d = tmp_path / "d"
    shutil.copytree(good, d)
    damage(d)
    rc = eval_main(["--checkpoint", str(ROOT / "models/mila_tiny_synthetic.pt"), "--data", str(d),
                    "-K", "2", "--max-clips", "2", "--no-baselines"])
    # the progress bar (tqdm, stderr) aside
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("eval ")]
    assert rc == 1 and len(err) == 1 and msg.format(d=d) in err[0], (rc, err)


def test_nested_section_not_a_mapping_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      good: Path) -> None:
    """``data.train: [1]`` names ``data.train`` (no stray trailing dot)."""
    cfg = {"model": str(ROOT / "config/model/tiny.yaml"), "out": str(tmp_path / "run"),
           "stages": [{"name": "slow", "epochs": 1}], "data": {"train": [1], "val": str(good)}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = train_main(["--config", str(tmp_path / "c.yaml"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "data.train: expected a mapping" in err[0], (rc, err)
