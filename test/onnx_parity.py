"""One ONNX step-graph parity check for every model variant's export test: export the step,
run it in ONNX Runtime on real slot contents, compare each output with the PyTorch step graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl_perception.backends.export import GraphSpec, StepGraph, example_inputs, export_step


def assert_step_parity(model: torch.nn.Module, is_keyframe: bool, path: Path,
                       rel_tol: float = 1e-4) -> tuple[GraphSpec, Any]:
    """Every graph output within ``rel_tol`` x max(1, |reference|) of PyTorch; (spec, session)."""
    import onnxruntime as ort

    spec = export_step(model, path, is_keyframe)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(model, is_keyframe)
    with torch.no_grad():
        ref = StepGraph(model, is_keyframe)(*inputs)
    got = sess.run(None, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
    assert len(got) == len(ref) == len(spec.output_names)
    for name, a, b in zip(spec.output_names, got, ref):
        b = b.numpy()
        assert np.abs(a - b).max() <= rel_tol * max(1.0, float(np.abs(b).max())), name
    return spec, sess
