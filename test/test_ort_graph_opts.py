"""What the exported graphs and the ONNX Runtime session options do for speed, checked by
structure and values (no timing): the EfficientNet "same" Pads fold into their convs, and the
backend's sessions get the thread and spinning settings it names.

Expectations come from the graphs themselves: a Pad whose output feeds only a Conv with zero
padding value is what ONNX Runtime's PadFusion removes; the outputs with and without the fold are
compared with each other (same arithmetic, so equal to float rounding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from mtl_perception.backends.export import drop_empty_trailing_inputs, example_inputs, export_step  # noqa: E402
from mtl_perception.backends.ort_backend import session_options  # noqa: E402
from mtl_perception.backends.quantize import _keep_pads_apart as _with_empty_pad_value  # noqa: E402
from mtl_perception.model import ModelConfig, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lite(tmp_path_factory):  # noqa: ANN201
    """(model, exported non-keyframe graph) of the EfficientNet-Lite tiny model, random weights."""
    import torch

    c = ModelConfig.from_yaml(ROOT / "config/model/efflite_tiny.yaml")
    for enc in (c.slow, c.fast):
        enc.weights = None
    torch.manual_seed(0)
    model = build_model(c).eval()
    path = tmp_path_factory.mktemp("lite") / "nonkey.onnx"
    spec = export_step(model, path, False)
    return model, spec, path


def _optimized(path: Path, tmp: Path, level: str = "ORT_ENABLE_BASIC") -> onnx.ModelProto:
    o = ort.SessionOptions()
    o.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    o.optimized_model_filepath = str(tmp / f"opt_{path.stem}.onnx")
    o.log_severity_level = 3
    ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    return onnx.load(o.optimized_model_filepath)


def test_exported_graph_has_no_empty_trailing_inputs(lite):
    _, _, path = lite
    g = onnx.load(str(path)).graph
    pads = [n for n in g.node if n.op_type == "Pad"]
    assert pads, "the EfficientNet encoders pad explicitly ('same' padding): the export should hold Pads"
    assert not [n.name for n in g.node if n.input and n.input[-1] == ""]


def test_pads_fold_into_convs_and_values_stay(lite, tmp_path):
    model, spec, path = lite
    raw = tmp_path / "raw.onnx"
    # the graph as torch.onnx writes it: each two-input Pad's empty third input put back (the INT8
    # preprocessing's own function, quantize._keep_pads_apart)
    m = onnx.load(str(path))
    assert _with_empty_pad_value(m) > 0
    onnx.save(m, str(raw))
    # ONNX Runtime's PadFusion runs at the basic level: with the empty input every Pad survives,
    # without it none does.
    assert sum(n.op_type == "Pad" for n in _optimized(raw, tmp_path).graph.node) > 0
    assert sum(n.op_type == "Pad" for n in _optimized(path, tmp_path).graph.node) == 0
    feed = {n: t.numpy() for n, t in zip(spec.input_names, example_inputs(model, False))}
    cpu = ["CPUExecutionProvider"]
    outs = [ort.InferenceSession(str(p), session_options(1), providers=cpu).run(None, feed)
            for p in (raw, path)]
    for a, b in zip(*outs):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max())))


def test_drop_empty_trailing_inputs_keeps_inner_empty_inputs(tmp_path):
    """Resize(X, roi="", scales="", sizes): the inner empty inputs are positional and must stay."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 1, 4, 4])
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], mode="nearest"),
             helper.make_node("Pad", ["r", "pads", ""], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [sizes, pads]),
                          opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    assert drop_empty_trailing_inputs(p) == 1
    got = {n.op_type: list(n.input) for n in onnx.load(str(p)).graph.node}
    assert got == {"Resize": ["x", "", "", "sizes"], "Pad": ["r", "pads"]}
    out = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)})[0]
    assert out.shape == (1, 1, 6, 6) and out[0, 0, 0].tolist() == [0] * 6 and out[0, 0, 1, 1] == 0.0


def test_host_reduction_equals_the_torch_one():
    """The ONNX Runtime backend reduces its outputs in NumPy (no OpenMP pool between two runs);
    ids, depth and normals must equal what every other backend gets from ``reduce_outputs``."""
    import torch

    from mtl_perception.backends.base import reduce_outputs, reduce_outputs_host

    rng = np.random.default_rng(0)
    for classes in (2, 8, 19):
        logits = rng.standard_normal((1, classes, 24, 40)).astype(np.float32)
        logits[0, :, :3, :3] = 0.5  # ties: the first class wins
        logits[0, 1, 5, 5] = np.nan  # never picked
        out = {"semantic": logits, "depth": rng.random((1, 1, 24, 40), dtype=np.float32),
               "normals": rng.standard_normal((1, 3, 24, 40)).astype(np.float32)}
        got = reduce_outputs_host(out)
        ref = reduce_outputs({k: torch.from_numpy(v) for k, v in out.items()})
        ref = {k: v.numpy() for k, v in ref.items()}
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
            assert np.array_equal(got[k], ref[k]), k
        plain = np.isfinite(logits[0]).all(0)
        assert np.array_equal(got["semantic"][plain], logits[0].argmax(0)[plain])
        assert got["semantic"][0, 0] == 0 and got["semantic"][5, 5] != 1
        # a view of the planar output, no copy (postprocess.unit_normals reads its planes)
        assert np.shares_memory(got["normals"], out["normals"])
