"""WiSE-FT weight interpolation (training/weight_interpolation.py) and ``bench/ship_model.py --tuned
--alpha``, which ships the default model as a point between it and a temporal fine-tune of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_ship_model import _ship_main, _tiny_checkpoint

from mtl_perception.model import load_model
from training.weight_interpolation import InterpolationError, interpolate_state_dicts


def test_values_by_hand() -> None:
    base = {"w": torch.tensor([0.0, 2.0, -4.0]), "n": torch.tensor(7)}
    tuned = {"w": torch.tensor([4.0, 6.0, 4.0]), "n": torch.tensor(30)}
    got = interpolate_state_dicts(base, tuned, 0.25)
    assert got["w"].tolist() == [1.0, 3.0, -2.0]
    assert got["n"].item() == 7  # an update counter: the base's, never a mix
    assert interpolate_state_dicts(base, tuned, 0.0)["w"].tolist() == [0.0, 2.0, -4.0]
    assert interpolate_state_dicts(base, tuned, 1.0)["w"].tolist() == [4.0, 6.0, 4.0]


def test_other_networks_and_bad_alpha_are_refused() -> None:
    base = {"w": torch.zeros(3)}
    with pytest.raises(InterpolationError, match="different tensors"):
        interpolate_state_dicts(base, {"v": torch.zeros(3)}, 0.5)
    with pytest.raises(InterpolationError, match="w:"):
        interpolate_state_dicts(base, {"w": torch.zeros(4)}, 0.5)
    with pytest.raises(InterpolationError, match="alpha"):
        interpolate_state_dicts(base, base, 1.5)


def _perturbed_copy(ckpt: Path, out: Path) -> dict[str, torch.Tensor]:
    data = torch.load(ckpt, weights_only=True)
    torch.manual_seed(3)
    data["state_dict"] = {k: (v + torch.randn_like(v)) if v.is_floating_point() else v + 5
                          for k, v in data["state_dict"].items()}
    torch.save(data, out)
    return data["state_dict"]


def test_ship_model_writes_the_interpolated_weights(tmp_path: Path) -> None:
    base_ckpt = _tiny_checkpoint(tmp_path)
    base = torch.load(base_ckpt, weights_only=True)["state_dict"]
    tuned = _perturbed_copy(base_ckpt, tmp_path / "tuned.pt")
    shipped = tmp_path / "shipped.pt"
    assert _ship_main()(["--checkpoint", str(base_ckpt), "--out", str(shipped), "--input-size", "64x128",
                         "--tuned", str(tmp_path / "tuned.pt"), "--alpha", "0.5"]) == 0
    model, meta = load_model(shipped)
    assert meta["alpha"] == 0.5 and meta["interpolated_with"].endswith("tuned.pt")
    got = model.state_dict()
    floats = [k for k, v in base.items() if v.is_floating_point()]
    assert floats
    for k in floats:
        torch.testing.assert_close(got[k], (base[k] + tuned[k]) / 2, msg=k)
    for k in set(base) - set(floats):
        assert torch.equal(got[k], base[k]), k


def test_ship_model_refuses_a_bad_interpolation(tmp_path: Path, capsys) -> None:
    base_ckpt = _tiny_checkpoint(tmp_path)
    _perturbed_copy(base_ckpt, tmp_path / "tuned.pt")
    other = torch.load(base_ckpt, weights_only=True)
    other["state_dict"] = {f"x.{k}": v for k, v in other["state_dict"].items()}
    torch.save(other, tmp_path / "other.pt")
    out = tmp_path / "shipped.pt"
    for extra in (["--tuned", str(tmp_path / "other.pt"), "--alpha", "0.5"],
                  ["--tuned", str(tmp_path / "tuned.pt"), "--alpha", "2"],
                  ["--tuned", str(tmp_path / "tuned.pt")]):
        assert _ship_main()(["--checkpoint", str(base_ckpt), "--out", str(out),
                             "--input-size", "64x128", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), err
        assert not out.exists()
