"""A checkpoint whose weights do not match its own model_config is rejected with a message naming
the file, never loaded half-way (the loader's strictness is what is tested: a silent partial load
would leave randomly initialised layers in a "trained" model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_perception.model import ModelConfig, build_model
from mtl_perception.model.checkpoint import CheckpointError, load_model, save_model

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_model(build_model(ModelConfig.from_yaml(TINY)), path, meta={"trained": True})
    return path


def _rewrite(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001 - dict -> None
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


@pytest.mark.parametrize("case", ["extra_task_in_weights", "missing_task_in_weights", "no_propagation",
                                  "dropped_tensor"])
def test_mismatched_checkpoint_is_rejected(saved: Path, tmp_path: Path, case: str) -> None:
    def edit(ckpt: dict) -> None:
        cfg = ckpt["model_config"]
        if case == "extra_task_in_weights":  # config says fewer tasks than the weights hold
            cfg["tasks"] = ["semantic", "depth"]
        elif case == "missing_task_in_weights":
            ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items()
                                  if not k.startswith("decoders.normals.")}
        elif case == "no_propagation":  # config without ILA, weights with it
            cfg["propagation"]["name"] = "none"
        else:
            ckpt["state_dict"].pop(next(k for k in ckpt["state_dict"] if k.endswith("running_var")))

    bad = _rewrite(saved, tmp_path / f"{case}.pt", edit)
    with pytest.raises(CheckpointError, match=rf"{case}\.pt.*not match its model_config"):
        load_model(bad)


def test_matching_checkpoint_loads_every_tensor(saved: Path) -> None:
    model, meta = load_model(saved)
    ref = torch.load(saved, weights_only=True)["state_dict"]
    own = model.state_dict()
    assert set(own) == set(ref)
    for k, v in ref.items():
        assert torch.equal(own[k], v), k
    assert meta == {"trained": True}
