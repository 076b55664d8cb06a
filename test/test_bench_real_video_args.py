"""bench/real_video.py --nonkey-slot-weight: the override reaches the model every stream runs, and an
out-of-range value is a one-line usage error naming the field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import real_video  # noqa: E402


def test_the_override_reaches_the_streamed_model(monkeypatch, capsys) -> None:
    seen = []
    monkeypatch.setattr(real_video, "clip_rows",
                        lambda model, *a: seen.append(model.cfg.propagation.nonkey_slot_weight) or {})
    own = torch.load(ROOT / "models" / "mila_street_lite.pt", weights_only=True)["model_config"]
    own = own["propagation"]["nonkey_slot_weight"]  # the shipped file's (0.25 since stage 5)
    assert own != 0.5
    assert real_video.main(["--clips", "unused", "--nonkey-slot-weight", "0.5"]) == 0
    assert seen == [0.5]
    assert "nonkey_slot_weight 0.5" in capsys.readouterr().out
    assert real_video.main(["--clips", "unused"]) == 0  # no override: the checkpoint's own
    assert seen == [0.5, own]


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_an_out_of_range_weight_is_a_usage_error(bad: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        real_video.main(["--clips", "unused", "--nonkey-slot-weight", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--nonkey-slot-weight: propagation.nonkey_slot_weight: invalid value" in err
    assert "Traceback" not in err
