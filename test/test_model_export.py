"""The streaming step exports to ONNX with its state as explicit tensors; ORT matches torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_perception.backends.export import StepGraph, example_inputs, export_step
from mtl_perception.model import ModelConfig, build_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
TINY = Path(__file__).resolve().parents[1] / "config" / "model" / "tiny.yaml"


@pytest.mark.parametrize("is_keyframe", [True, False])
def test_step_graph_exports_and_onnxruntime_matches(tmp_path, is_keyframe: bool) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_yaml(TINY)).eval()
    path = tmp_path / "step.onnx"
    spec = export_step(model, path, is_keyframe)
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == spec.input_names
    assert [o.name for o in sess.get_outputs()] == spec.output_names
    # state goes in and comes out: the keyframe graph reads the non-keyframe slot and writes
    # the keyframe slot; the non-keyframe graph reads both and writes the non-keyframe slot.
    if is_keyframe:
        assert [r.slot for r in spec.reads] == ["nonkey"] and spec.writes.slot == "key"
    else:
        assert [r.slot for r in spec.reads] == ["key", "nonkey"] and spec.writes.slot == "nonkey"
    inputs = example_inputs(model, is_keyframe)
    with torch.no_grad():
        ref = StepGraph(model, is_keyframe)(*inputs)
    got = sess.run(None, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
    for name, a, b in zip(spec.output_names, got, ref):
        b = b.numpy()
        scale = max(1.0, float(np.abs(b).max()))
        assert np.abs(a - b).max() <= 1e-4 * scale, name
