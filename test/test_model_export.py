"""The streaming step exports to ONNX with its state as explicit tensors; ORT matches torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from onnx_parity import assert_step_parity

from mtl_perception.model import ModelConfig, build_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"


@pytest.mark.parametrize("is_keyframe", [True, False])
def test_step_graph_exports_and_onnxruntime_matches(tmp_path, is_keyframe: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_yaml(TINY)).eval()
    path = tmp_path / "step.onnx"
    spec, sess = assert_step_parity(model, is_keyframe, path)
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in sess.get_inputs()] == spec.input_names
    assert [o.name for o in sess.get_outputs()] == spec.output_names
    # state goes in and comes out: the keyframe graph reads the non-keyframe slot and writes
    # the keyframe slot; the non-keyframe graph reads both and writes the non-keyframe slot.
    if is_keyframe:
        assert [r.slot for r in spec.reads] == ["nonkey"] and spec.writes.slot == "key"
    else:
        assert [r.slot for r in spec.reads] == ["key", "nonkey"] and spec.writes.slot == "nonkey"


def test_the_nonkey_slot_weight_is_in_the_exported_non_keyframe_graph(tmp_path) -> None:
    """The graph of a model with ``nonkey_slot_weight`` 0.25 matches its torch step, and its
    outputs differ from the weight-1 graph's on the same inputs (the weight is not lost)."""
    import numpy as np

    from mtl_perception.backends.export import example_inputs

    outs = {}
    for w in (1.0, 0.25):
        cfg = ModelConfig.from_yaml(TINY)
        cfg.propagation.nonkey_slot_weight = w
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        spec, sess = assert_step_parity(model, False, tmp_path / f"w{w}.onnx")
        feed = {n: t.numpy() for n, t in zip(spec.input_names, example_inputs(model, False))}
        outs[w] = dict(zip(spec.output_names, sess.run(None, feed)))
    sem = next(n for n in outs[1.0] if "semantic" in n)
    assert not np.allclose(outs[1.0][sem], outs[0.25][sem], atol=1e-4)
