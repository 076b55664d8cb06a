"""``training.data.cli.ensure_clips``: the bench scripts' "generate synthetic data if missing"
(bench/ablation.py, pretrained.py, train_amp.py, seed_uda.py, randomization_ablation.py). It must
write what ``mtl-data generate`` writes with the same arguments, render nothing when the clips are
there, render again after an interrupted run, and say when a folder holds other data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data.cli import ensure_clips
from training.data.cli import main as data_main


def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*.png"))}


def test_ensure_clips_generates_once_and_after_an_interrupted_run(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert ensure_clips(out, 2, 2, "16x32", seed=5, domain="target", randomize="color") is True
    # The same bytes as the command line with these arguments.
    assert data_main(["generate", "--clips", "2", "--frames", "2", "--size", "16x32", "--seed", "5",
                      "--domain", "target", "--randomize", "color", "--out", str(ref)]) == 0
    pngs = sorted(p.relative_to(ref) for p in ref.rglob("*.png"))
    assert len(pngs) == 2 * 2 * 4  # clips x frames x (rgb, semantic, depth, normals)
    assert all((out / p).read_bytes() == (ref / p).read_bytes() for p in pngs)
    meta = json.loads((out / "clip_000001" / "meta.json").read_text())
    assert (meta["seed"], meta["frames"], meta["domain"], meta["randomize"]["options"]) == (6, 2, "target",
                                                                                           ["color"])
    # Present: nothing rendered, nothing rewritten, nothing said.
    before = _stamps(out)
    capsys.readouterr()
    assert ensure_clips(out, 2, 2, "16x32", seed=5, domain="target", randomize="color") is False
    assert _stamps(out) == before and capsys.readouterr().err == ""
    # An interrupted run leaves its last clip without meta.json (written after the frames).
    (out / "clip_000001" / "meta.json").unlink()
    assert ensure_clips(out, 2, 2, "16x32", seed=5, domain="target", randomize="color") is True
    assert json.loads((out / "clip_000001" / "meta.json").read_text())["seed"] == 6


@pytest.mark.parametrize("kw,note", [
    ({"seed": 9, "domain": "target", "randomize": "color"}, "clip_000000 has seed 5, not 9"),
    ({"seed": 5, "domain": "source", "randomize": "color"}, "clip_000000 has domain 'target', not 'source'"),
    ({"seed": 5, "domain": "target"}, "clip_000000 has randomize ['color'], not []"),
])
def test_other_data_is_used_but_named(tmp_path: Path, capsys: pytest.CaptureFixture, kw: dict,
                                      note: str) -> None:
    ensure_clips(tmp_path, 1, 2, "16x32", seed=5, domain="target", randomize="color")
    before = _stamps(tmp_path)
    capsys.readouterr()
    assert ensure_clips(tmp_path, 1, 2, "16x32", **kw) is False
    err = capsys.readouterr().err.strip()
    assert note in err and "using the folder as it is" in err and len(err.splitlines()) == 1, err
    assert _stamps(tmp_path) == before
    capsys.readouterr()
    ensure_clips(tmp_path, 1, 3, "16x32", seed=5, domain="target", randomize="color")
    assert "has frames 2, not 3" in capsys.readouterr().err


def test_clip_folders_beyond_the_asked_number_are_named(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """The trainer reads every clip folder of ``out``: clips left by an earlier, larger (or
    interrupted) run would be trained on without a word, so they are named on stderr."""
    ensure_clips(tmp_path, 3, 2, "16x32", seed=5)
    (tmp_path / "clip_000002" / "meta.json").unlink()  # the larger run was interrupted in clip 2
    capsys.readouterr()
    assert ensure_clips(tmp_path, 1, 2, "16x32", seed=5) is False
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "holds 2 clip folder(s) beyond the 1 asked for" in err and "clip_000001" in err, err
    assert "clip_000002" in err and "(no meta.json)" in err, err
    ensure_clips(tmp_path / "b", 2, 2, "16x32", seed=5)  # exactly what was asked: nothing said
    (tmp_path / "b" / "clip_000000_bag").mkdir()  # `mtl-data generate --bag`'s folders are not clips
    capsys.readouterr()
    assert ensure_clips(tmp_path / "b", 2, 2, "16x32", seed=5) is False
    assert capsys.readouterr().err == ""
