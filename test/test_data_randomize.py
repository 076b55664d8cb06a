"""Appearance randomisation of the synthetic generator (`mtl-data generate --randomize`)."""

import json

import numpy as np
import pytest

from training.data.classes import CLASSES

pytest.importorskip("moderngl", reason="moderngl not installed")
pytest.importorskip("trimesh", reason="trimesh not installed")
from training.data import randomize, synthetic  # noqa: E402

_OK, _WHY = synthetic.egl_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"no headless EGL OpenGL context: {_WHY}")

SIZE = (48, 96)
APPEARANCE_ONLY = ("texture", "lighting", "color", "blur", "noise")


@pytest.fixture(scope="module")
def gen():
    with synthetic.SyntheticGenerator(*SIZE) as g:
        yield g


def test_parse_options():
    assert randomize.parse_options("all") == randomize.OPTIONS
    assert randomize.parse_options("none") == randomize.parse_options("") == ()
    # canonical order
    assert randomize.parse_options("noise, camera,texture") == ("texture", "noise", "camera")
    with pytest.raises(ValueError, match="'glare'"):
        randomize.parse_options("noise,glare")


def test_draw_is_a_function_of_the_seed_and_independent_of_the_options():
    assert randomize.draw(7) == randomize.draw(7)
    assert randomize.draw(7) != randomize.draw(8)
    base_app, base_rig = synthetic.APPEARANCES["source"], synthetic.RIGS["source"]
    d = randomize.draw(7)
    # One option alone takes the same value as with every option on: groups never shift each other.
    app_n, _, _ = randomize.apply(("noise",), 7, base_app, base_rig)
    app_all, rig_all, used = randomize.apply(randomize.OPTIONS, 7, base_app, base_rig)
    assert app_n.noise_std == app_all.noise_std == d.noise_std
    assert app_n.sun == base_app.sun and app_n.blur == base_app.blur  # the rest untouched
    assert (rig_all.height, rig_all.focal, rig_all.pitch_deg) == (d.height, d.focal, d.pitch_deg)
    assert used["options"] == list(randomize.OPTIONS) and used["focal"] == d.focal
    # Off: the domain's appearance and rig themselves.
    assert randomize.apply((), 7, base_app, base_rig) == (base_app, base_rig, {})
    # The documented ranges, over many seeds.
    draws = [randomize.draw(s) for s in range(200)]
    assert 0.6 < np.mean([x.textured for x in draws]) < 0.9
    assert {x.blur for x in draws} == {0, 1, 2}
    assert all(1.1 <= x.height <= 2.2 and 0.5 <= x.focal <= 0.95 for x in draws)
    assert all(x.sun[2] > 0.2 for x in draws)  # the sun is above the horizon (>= 12 deg)


def test_same_seed_identical_and_off_is_the_unrandomised_clip(gen):
    a = gen.clip(3, 2, "source", randomize=randomize.OPTIONS)
    b = gen.clip(3, 2, "source", randomize=randomize.OPTIONS)
    for k in ("rgb", "semantic", "depth", "normals", "poses", "intrinsics"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    plain = gen.clip(3, 2, "source")
    off = gen.clip(3, 2, "source", randomize=())
    for k in ("rgb", "semantic", "depth", "normals", "poses", "intrinsics"):
        np.testing.assert_array_equal(getattr(plain, k), getattr(off, k))
    assert "randomize" not in off.meta and a.meta["randomize"]["options"] == list(randomize.OPTIONS)
    assert not np.array_equal(a.rgb, plain.rgb)


def test_appearance_options_change_pixels_not_labels(gen):
    plain = gen.clip(4, 2, "source")
    looks = gen.clip(4, 2, "source", randomize=APPEARANCE_ONLY)
    for k in ("semantic", "depth", "normals", "poses", "intrinsics"):
        np.testing.assert_array_equal(getattr(plain, k), getattr(looks, k))
    assert np.abs(looks.rgb - plain.rgb).mean() > 0.02


def test_camera_option_moves_the_camera_to_the_drawn_rig(gen):
    d = randomize.draw(4)
    c = gen.clip(4, 1, "source", randomize=("camera",))
    W = SIZE[1]
    assert c.intrinsics[0, 0] == pytest.approx(d.focal * W)
    assert c.poses[0][2, 3] == pytest.approx(d.height, abs=1e-5)
    # Road pixels back-projected with the drawn intrinsics and pose lie on the ground plane z = 0.
    from training.data.geometry import backproject

    P = backproject(c.depth[0], c.intrinsics)
    road = c.semantic[0] == CLASSES.index("road")
    Pw = P[road] @ c.poses[0][:3, :3].T + c.poses[0][:3, 3]
    assert road.sum() > 100 and np.abs(Pw[:, 2]).max() < 0.02


def test_cli_randomize_writes_the_clip_rig(tmp_path, capsys):
    from training.data.cli import main

    assert main(["generate", "--clips", "1", "--frames", "1", "--size", "32x64", "--seed", "4",
                 "--randomize", "camera,noise", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "clip_000000" / "meta.json").read_text())
    d = randomize.draw(4)
    assert meta["randomize"]["options"] == ["noise", "camera"]
    assert np.asarray(meta["intrinsics"])[0, 0] == pytest.approx(d.focal * 64)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--randomize", "glare", "--out", str(tmp_path)])
    assert e.value.code == 2 and "'glare'" in capsys.readouterr().err
