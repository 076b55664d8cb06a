"""Whole-clip streaming evaluation (mtl-eval --temporal, bench/keyframes.py): the policy's keyframes
are the ones run, MACs are weighted by the realised keyframe share, labels are scored per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.keyframe_policy import make_policy
from mtl_perception.model import ModelConfig, build_model
from training.stream_eval import from_arrays, stream_evaluate

TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"


def test_policy_keyframes_macs_and_perfect_labels() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_yaml(TINY)).eval()
    h, w = model.cfg.input_size
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, h, w, 3)).astype(np.uint8)
    # Labels = the model's own K=3 stream predictions, so mIoU must be exactly 100.
    state, sem, depth, normals = None, [], [], []
    with torch.no_grad():
        for t in range(7):
            out, state = model.step(torch.from_numpy(rgb[t]).permute(2, 0, 1)[None].float() / 255, state,
                                    t % 3 == 0)
            sem.append(out["semantic"][0].argmax(0).numpy())
            depth.append(out["depth"][0, 0].numpy())
            normals.append(out["normals"][0].permute(1, 2, 0).numpy())
    seq = from_arrays("s", rgb, (h, w), np.stack(sem), np.stack(depth), np.stack(normals))
    result, temporal = stream_evaluate(model, [seq], lambda: make_policy("fixed", interval=3),
                                       macs=(1000.0, 100.0))
    assert [f["keyframe"] for f in temporal.frames] == [t % 3 == 0 for t in range(7)]
    assert result["keyframe_rate"] == pytest.approx(3 / 7)
    assert result["macs"] == pytest.approx(100 + 900 * 3 / 7)
    assert result["miou"] == pytest.approx(100.0) and result["abs_err"] == pytest.approx(0.0, abs=1e-5)
    flips = [float((sem[t] != sem[t - 1]).mean()) for t in range(1, 7)]
    assert result["temporal.flip"] == pytest.approx(np.mean(flips))
    assert result["temporal.flip_static"] == pytest.approx(0.0)  # predictions change only where labels do
