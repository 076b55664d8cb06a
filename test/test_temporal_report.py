"""``mtl-perception-eval-bag``: the temporal report and the adaptive keyframe policy on a bag with a
cut. The flip rate it reports is recomputed here from the class-id PNGs it wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("rosbags")

from PIL import Image  # noqa: E402

from mtl_perception.tools import bag_from_video, eval_bag  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "config/model/tiny.yaml")
N, CUT = 12, 6


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.integers(0, 256, (12, 20, 3)).astype(np.uint8), 8, 0), 8, 1)


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """A still shot, a cut at frame 6, another still shot (lossless enough: high bit rate)."""
    tmp = tmp_path_factory.mktemp("cutbag")
    video = tmp / "cut.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt, s.bit_rate = 160, 96, "yuv420p", 4_000_000
        for i in range(N):
            img = _scene(1 if i < CUT else 2)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = tmp / "bag"
    assert bag_from_video.convert(video, out, "/cam/image_raw", "cam", start_time_s=1000.0) == N
    return out


def test_temporal_report_and_adaptive_keyframes(bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc = eval_bag.main([str(bag), "--topic", "/cam/image_raw", "--out", str(out), "--model-config", TINY,
                        "--threads", "1", "--device", "cpu", "--keyframe-policy", "adaptive",
                        "--keyframe-min-interval", "2", "--keyframe-max-interval", "20",
                        "--keyframe-target-rate", "0.1"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "frames.csv")))
    # still shots fire nothing; the cut fires at once
    assert [int(r["frame"]) for r in rows if r["keyframe"] == "1"] == [0, CUT]
    assert rows[0]["keyframe_reason"] == "reset" and rows[CUT]["keyframe_reason"] == "drift"
    report = json.loads((out / "temporal.json").read_text())
    ids = [np.array(Image.open(out / "semantic" / f"{i:06d}.png"))
           for i in range(N)]
    flips = [float((ids[i] != ids[i - 1]).mean()) for i in range(1, N)]
    s = report["summary"]
    assert s["flip"] == pytest.approx(np.mean(flips), abs=1e-9)
    assert s["flip.key"] == pytest.approx(flips[CUT - 1], abs=1e-9)  # the one transition into a keyframe
    assert s["keyframe_rate"] == pytest.approx(2 / N)
    assert (out / "temporal.png").stat().st_size > 1000


def test_bad_policy_settings_are_a_usage_error(bag: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        eval_bag.main([str(bag), "--topic", "/cam/image_raw", "--out", str(tmp_path), "--model-config", TINY,
                       "--keyframe-policy", "adaptive", "--keyframe-min-interval", "5",
                       "--keyframe-max-interval", "3"])
    assert e.value.code == 2
    assert "keyframe_max_interval" in capsys.readouterr().err
