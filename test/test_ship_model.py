"""bench/ship_model.py's file as a training ``init``: issue 16's fine-tunes start from the shipped
models/mila_street_lite.pt when the training checkpoint it was made from is gone. The shipped file
runs at another input size than training (192x384 vs 128x256) and drops the optimizer state; its
weights (parameters and BN running statistics) must still be exactly the checkpoint's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from test_train import BandClips, _cfg

from mtl_perception.model import MultiTaskVideoNet, load_model
from mtl_perception.model.checkpoint import read_checkpoint
from training.config import TrainConfig
from training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _ship_main():
    spec = importlib.util.spec_from_file_location("ship_model", ROOT / "bench" / "ship_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_shipped_file_inits_training_with_the_checkpoint_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model_cfg = TrainConfig.from_dict({"model": "config/model/tiny.yaml", "out": str(tmp_path),
                                       "stages": [{"name": "joint"}]}).model_config()
    model = MultiTaskVideoNet(model_cfg)
    # Weights and BN statistics unlike a fresh model's, so a skipped tensor shows as a difference.
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.rand_like(v))
            else:
                v.add_(7)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "stage_joint.pt"
    torch.save({"model_config": model_cfg.to_dict(), "state_dict": model.state_dict(),
                "meta": {"stage": "joint", "step": 12}, "optimizer": {"state": {}}}, ckpt)
    shipped = tmp_path / "shipped.pt"
    assert _ship_main()(["--checkpoint", str(ckpt), "--out", str(shipped), "--input-size", "96x192"]) == 0
    assert read_checkpoint(shipped)["model_config"]["input_size"] == [96, 192]
    assert load_model(shipped)[1]["step"] == 12

    # Training at the checkpoint's own size (64x128, as the street model trains at 128x256).
    stages = [{"name": "joint", "epochs": 1, "steps_per_epoch": 1, "keyframe_interval": 5}]
    cfg = _cfg(tmp_path / "run", stages, init=str(shipped))
    trainer = Trainer(cfg, progress=False, train_data=BandClips(2), val_data=BandClips(1, seed=9))
    got = trainer.model.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert torch.equal(got[k], v), k


def _tiny_checkpoint(tmp_path: Path) -> Path:
    model_cfg = TrainConfig.from_dict({"model": "config/model/tiny.yaml", "out": str(tmp_path),
                                       "stages": [{"name": "joint"}]}).model_config()
    ckpt = tmp_path / "stage_joint.pt"
    torch.save({"model_config": model_cfg.to_dict(), "state_dict": MultiTaskVideoNet(model_cfg).state_dict(),
                "meta": {"stage": "joint", "step": 3}}, ckpt)
    return ckpt


def test_set_changes_an_inference_option_of_the_shipped_file(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path)
    shipped = tmp_path / "shipped.pt"
    assert _ship_main()(["--checkpoint", str(ckpt), "--out", str(shipped), "--input-size", "64x128",
                         "--set", "propagation.nonkey_slot_weight=0.25"]) == 0
    model, _ = load_model(shipped)
    assert model.cfg.propagation.nonkey_slot_weight == 0.25
    # Every other field is the checkpoint's (only input size and encoder init paths are rewritten).
    src = torch.load(ckpt, weights_only=True)["model_config"]
    got = read_checkpoint(shipped)["model_config"]
    assert got["propagation"] == {**src["propagation"], "nonkey_slot_weight": 0.25}
    assert got["decoder"] == src["decoder"] and got["num_classes"] == src["num_classes"]


def test_bad_set_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    ckpt = _tiny_checkpoint(tmp_path)
    for bad in ("propagation.nonkey_slot_weight=1.5", "propagation.bogus=1", "nonkey_slot_weight",
                "decoder.hidden=[3, 5]"):  # the last validates but no longer fits the weights
        out = tmp_path / "shipped.pt"
        assert _ship_main()(["--checkpoint", str(ckpt), "--out", str(out), "--input-size", "64x128",
                             "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: --set:"), err
        assert not out.exists()


def test_missing_checkpoints_are_one_line_exit_1(tmp_path: Path, capsys) -> None:
    ckpt = _tiny_checkpoint(tmp_path)
    out = tmp_path / "shipped.pt"
    for args in (["--checkpoint", str(tmp_path / "nope.pt")],
                 ["--checkpoint", str(ckpt), "--tuned", str(tmp_path / "nope.pt"), "--alpha", "0.5"]):
        assert _ship_main()([*args, "--out", str(out), "--input-size", "64x128"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"error: checkpoint: no such file {str(tmp_path / 'nope.pt')!r}", err
        assert not out.exists()
