"""bench/randomization_ablation.py: the variant list follows the generator's OPTIONS, the effect
arithmetic (leave-one-out worth, seed spread, noise marking), and a 1-step end-to-end run that
resumes without retraining."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from training.data.randomize import OPTIONS, parse_options

ROOT = Path(__file__).resolve().parents[1]


def _load():
    path = ROOT / "bench" / "randomization_ablation.py"
    spec = importlib.util.spec_from_file_location("randomization_ablation", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["randomization_ablation"] = mod
    spec.loader.exec_module(mod)
    return mod


ra = _load()


def test_variants_from_options_hand_written():
    runs = ra.variants(("a", "b", "c"), seeds_all=(0, 1), seeds_none=(0, 7))
    assert [(v.run, v.options) for v in runs] == [
        ("none_s0", ()), ("all_s0", ("a", "b", "c")), ("all_s1", ("a", "b", "c")),
        ("no-a_s0", ("b", "c")), ("no-b_s0", ("a", "c")), ("no-c_s0", ("a", "b")), ("none_s7", ())]


def test_leave_one_out_repeats_come_last():
    runs = ra.variants(("a", "b"), seeds_all=(0, 1, 2), seeds_none=(0,), seeds_loo=(0, 1))
    assert [v.run for v in runs] == ["none_s0", "all_s0", "all_s1", "all_s2", "no-a_s0", "no-b_s0",
                                     "no-a_s1", "no-b_s1"]
    assert next(v for v in runs if v.run == "no-a_s1").options == ("b",)
    # a whole leave-one-out repeat per seed before the next seed (a stopped run has complete repeats)
    runs = ra.variants(("a", "b"), seeds_all=(0,), seeds_none=(), seeds_loo=(0, 1, 2))
    assert [v.run for v in runs][-4:] == ["no-a_s1", "no-b_s1", "no-a_s2", "no-b_s2"]


def test_variants_cover_every_generator_option_once():
    runs = ra.variants()
    loo = [v for v in runs if v.name.startswith("no-")]
    assert sorted(v.name for v in loo) == sorted(f"no-{o}" for o in OPTIONS)
    for v in loo:
        left_out = v.name[3:]
        assert set(v.options) == set(OPTIONS) - {left_out} and len(v.options) == len(OPTIONS) - 1
    # The --randomize argument each run hands to mtl-data means what the run says it does.
    for v in runs:
        assert parse_options(v.randomize) == v.options
    assert parse_options(next(v for v in runs if v.name == "all").randomize) == parse_options("all")
    assert parse_options(next(v for v in runs if v.name == "none").randomize) == ()
    assert len({v.run for v in runs}) == len(runs) == 1 + 2 + len(OPTIONS) + 1


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="no-fog"):
        ra.variant_options("no-fog")


def test_effects_hand_computed():
    rows = {"all_s0": {"miou": 50.0}, "all_s1": {"miou": 48.0}, "none_s0": {"miou": 40.0},
            "none_s1": {"miou": 43.0}, "no-texture_s0": {"miou": 45.0}, "no-blur_s0": {"miou": 47.0}}
    eff = ra.effects(rows, options=("texture", "blur", "noise"))
    assert eff["+texture"]["miou"] == pytest.approx(4.0)  # mean(50, 48) - 45
    assert eff["+blur"]["miou"] == pytest.approx(2.0)
    assert "+noise" not in eff  # no run without it
    assert eff["all - none"]["miou"] == pytest.approx(7.5)  # 49 - 41.5
    assert eff["spread all"]["miou"] == pytest.approx(2.0)
    assert eff["spread none"]["miou"] == pytest.approx(3.0)
    table = "\n".join(ra.effects_table(eff))
    assert "| +texture | +4.0 |" in table  # above the 2-point spread of 'all'
    assert "| +blur | ~+2.0 |" in table  # not above it: no measurable effect
    assert "| all - none | +7.5 |" in table  # above both spreads


def test_all_minus_none_is_held_against_the_larger_spread():
    rows = {"all_s0": {"miou": 50.0}, "all_s1": {"miou": 50.0}, "none_s0": {"miou": 40.0},
            "none_s1": {"miou": 60.0}, "no-a_s0": {"miou": 49.0}}
    eff = ra.effects(rows, options=("a",))
    table = "\n".join(ra.effects_table(eff))
    assert "| all - none | ~+0.0 |" in table  # 50 - 50, none's spread is 20
    assert "| +a | +1.0 |" in table  # against the 0-point 'all' spread
    # all - none = 10: above the 0-point 'all' spread but not the 20-point 'none' spread
    rows = {**rows, "none_s0": {"miou": 30.0}, "none_s1": {"miou": 50.0}}
    table = "\n".join(ra.effects_table(ra.effects(rows, options=("a",))))
    assert "| all - none | ~+10.0 |" in table


def test_effects_single_seed_has_no_noise_floor():
    eff = ra.effects({"all_s0": {"miou": 50.0}, "none_s0": {"miou": 40.0}}, options=("a",))
    assert math.isnan(eff["spread all"]["miou"]) and math.isnan(ra.noise_floor(eff, "all - none", "miou"))
    assert "| all - none | +10.0 |" in "\n".join(ra.effects_table(eff))


def test_one_step_end_to_end_then_resume(tmp_path, capsys):
    video = ROOT / "data_cache" / "videos" / "vtest.avi"
    if not video.is_file():
        pytest.skip("no real clip (make real-videos)")
    args = ["--out", str(tmp_path), "--steps", "1", "--clips", "2", "--frames", "2", "--target-clips", "1",
            "--target-frames", "2", "--seeds-all", "0", "--seeds-none", "--only", "all_s0",
            "--real-frames", "2", "--video", str(video)]
    assert ra.main(args) == 0
    r = json.loads((tmp_path / "all_s0" / "result.json").read_text())
    assert r["randomize"] == ",".join(OPTIONS) and r["steps"] == 1
    assert r["target"]["frames"] == 1  # 2 frames, every 2nd annotated
    assert 0 <= r["target"]["miou"] <= 100 and r["target"]["abs_rel"] > 0
    assert r["real"]["vtest.avi"]["frames"] == 2
    meta = json.loads(next((tmp_path / "data" / "all").glob("clip_*/meta.json")).read_text())
    assert meta["seed"] == 0
    meta = json.loads(next((tmp_path / "data" / "target").glob("clip_*/meta.json")).read_text())
    assert meta["domain"] == "target" and meta["seed"] == ra.TARGET_SEED
    mtime = (tmp_path / "all_s0" / "stage_slow.pt").stat().st_mtime
    capsys.readouterr()
    assert ra.main(args) == 0  # finished: nothing is trained or scored again
    assert (tmp_path / "all_s0" / "stage_slow.pt").stat().st_mtime == mtime
    assert "| all_s0 |" in capsys.readouterr().out
