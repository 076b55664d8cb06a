"""Output units: depth is metres through the head's softplus, the pipeline, eval-bag's files and
the label topics of a bag (the node's published depth is checked in test_node_behaviour.py).

The model is pinned by hand: the depth head's last conv has zero weights and bias ``b``, so every
pixel's depth is exactly ``log(1 + e^b) + 1 mm`` (computed here with ``math``, not torch).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.model import ModelConfig, build_model
from mtl_perception.model.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "model" / "tiny.yaml"


def softplus_mm(b: float) -> float:
    return math.log1p(math.exp(b)) + 1e-3


def constant_depth_model(bias: float, **cfg_fields):
    cfg = ModelConfig.from_yaml(TINY)
    for k, v in cfg_fields.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    last = m.decoders["depth"].head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(bias)
    return m


@pytest.mark.parametrize("bias", [-3.0, -0.5, 0.0, 1.5])
def test_depth_head_is_softplus_in_metres(bias: float) -> None:
    """Negative pre-activations separate softplus from relu (0) and from exp; 0 gives log 2."""
    m = constant_depth_model(bias)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 64, 128, generator=g)
    with torch.no_grad():
        out, s = m.step(x, None, True)
        nxt, _ = m.step(torch.rand(1, 3, 64, 128, generator=g), s, False)
    for d in (out["depth"], nxt["depth"]):
        assert torch.allclose(d, torch.full_like(d, softplus_mm(bias)), rtol=1e-6, atol=1e-7)


def test_pipeline_and_eval_bag_keep_metres(tmp_path: Path) -> None:
    """Pipeline at input resolution, then eval-bag's .npy files: the same metres as the model."""
    from mtl_perception.pipeline import Pipeline, load_backend
    from mtl_perception.scheduler import Decision

    expected = softplus_mm(1.5)  # 1.7024 m
    ckpt = tmp_path / "const.pt"
    save_model(constant_depth_model(1.5), ckpt, meta={"trained": True})
    backend = load_backend(checkpoint=str(ckpt), backend="torch", device="cpu", warmup=False).backend
    rgb = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    for res in ("network", "input"):
        out = Pipeline(backend, res).process(rgb, Decision(True, "start")).outputs
        assert out["depth"].dtype == np.float32
        np.testing.assert_allclose(out["depth"], expected, rtol=1e-5)

    pytest.importorskip("rosbags", reason="rosbags not installed")
    pytest.importorskip("av", reason="PyAV not installed")
    from mtl_perception.tools import eval_bag
    from training.data.bag import IMAGE_TOPIC, write_clip_bag

    bag = _label_bag(tmp_path / "bag", write_clip_bag)
    out = tmp_path / "eval"
    assert eval_bag.main([str(bag), "--topic", IMAGE_TOPIC, "--out", str(out), "--checkpoint", str(ckpt),
                          "--backend", "torch", "--device", "cpu", "--threads", "1"]) == 0
    files = sorted((out / "depth").glob("*.npy"))
    assert len(files) == 3
    for f in files:
        np.testing.assert_allclose(np.load(f), expected, rtol=1e-5)


DEPTHS = (0.5, 2.25, 37.5)  # metres, one per frame


def _label_bag(path: Path, write_clip_bag) -> Path:  # noqa: ANN001
    t, h, w = 3, 64, 128
    sem = np.zeros((t, h, w), np.uint8)
    sem[:, :, 64:] = 6
    sem[:, :4] = 255
    depth = np.stack([np.full((h, w), d, np.float32) for d in DEPTHS])
    depth[:, :4] = 0.0  # invalid
    normals = np.zeros((t, h, w, 3), np.float32)
    normals[..., 2] = -1.0
    normals[:, :, :10] = (0.6, 0.0, -0.8)
    rgb = np.random.default_rng(3).random((t, h, w, 3)).astype(np.float32)
    k = np.array([[100.0, 0, 64], [0, 100.0, 32], [0, 0, 1]])
    return write_clip_bag(path, rgb, sem, depth, normals, k)


def test_bag_label_topics_read_back_in_their_units(tmp_path: Path) -> None:
    pytest.importorskip("rosbags", reason="rosbags not installed")
    from mtl_perception.imaging import image_msg_to_array
    from mtl_perception.tools.bagio import read_bag
    from training.data.bag import LABEL_TOPICS, write_clip_bag

    bag = _label_bag(tmp_path / "bag", write_clip_bag)
    got = {k: [image_msg_to_array(m.deserialize()) for m in read_bag(bag, topic)]
           for k, topic in LABEL_TOPICS.items()}
    assert [m.deserialize().encoding for m in read_bag(bag, LABEL_TOPICS["depth"])] == ["32FC1"] * 3
    for i, d in enumerate(DEPTHS):
        dep = got["depth"][i]
        assert dep.dtype == np.float32
        assert (dep[:4] == 0).all() and (dep[4:] == np.float32(d)).all()  # metres, 0 = invalid
        sem = got["semantic"][i]
        assert (sem[:4] == 255).all() and (sem[4:, :64] == 0).all() and (sem[4:, 64:] == 6).all()
        n = got["normals"][i]
        np.testing.assert_array_equal(n[0, 0], np.float32([0.6, 0.0, -0.8]))
        np.testing.assert_array_equal(n[20, 50], np.float32([0.0, 0.0, -1.0]))


def test_pipeline_postprocesses_only_the_wanted_tasks(tmp_path: Path) -> None:
    """Subscriber-gated work: only the tasks someone listens to are resized and returned; their
    values are those of the full run."""
    from mtl_perception.pipeline import Pipeline, load_backend
    from mtl_perception.scheduler import Decision

    backend = load_backend(model_config=str(TINY), backend="torch", device="cpu", warmup=False).backend
    rgb = np.random.default_rng(1).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    full = Pipeline(backend, "input").process(rgb, Decision(True, "start")).outputs
    assert set(full) == {"semantic", "depth", "normals"}
    for wanted in ({"depth"}, {"semantic", "normals"}, set()):
        out = Pipeline(backend, "input").process(rgb, Decision(True, "start"), wanted).outputs
        assert set(out) == wanted
        for k in wanted:
            np.testing.assert_array_equal(out[k], full[k])
