"""The INT8 recipes against real exported graphs: each FLOAT_GROUPS entry a recipe uses selects
exactly the nodes it names, the ladder runs fastest first (each rung quantizes a subset of what
the one before quantized), and a graph a recipe leaves out stays the FP32 graph.

Expectations come from the ONNX graph's own structure, not from the group regexes: a depthwise
conv is a Conv whose ``group`` attribute equals its output channels (weight shape (C, 1, k, k)),
an encoder's stem is the Conv that reads the 3 image channels, and the keyframe graph holds the
slow encoder, the non-keyframe graph the fast one (``export.graph_spec``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from mtl_perception.backends import quantize as q  # noqa: E402
from mtl_perception.backends.export import ensure_onnx  # noqa: E402
from mtl_perception.model import ModelConfig, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 128)


def _model(cfg: str):  # noqa: ANN202
    c = ModelConfig.from_yaml(ROOT / "config/model" / cfg)
    for enc in (c.slow, c.fast):  # the structure is what matters; no pretrained weights needed
        if hasattr(enc, "weights"):
            enc.weights = None
    return build_model(c).eval()


@pytest.fixture(scope="module", params=["efflite_tiny.yaml", "tiny.yaml"])
def graphs(request, tmp_path_factory):  # noqa: ANN001, ANN201
    """(model, {is_keyframe: pre-processed graph path}) as quantize_graph hands them to _float_nodes."""
    from mtl_perception.backends.quantize import preprocess

    model = _model(request.param)
    folder = tmp_path_factory.mktemp("graphs")
    out = {}
    for k in (True, False):
        src = ensure_onnx(model, k, folder, SIZE)
        out[k] = folder / f"pre_{'key' if k else 'nonkey'}.onnx"
        preprocess(src.path, out[k])
    return request.param, model, out


def _convs(path: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Conv node name -> (group attribute, weight shape)."""
    g = onnx.load(str(path)).graph
    shapes = {i.name: tuple(i.dims) for i in g.initializer}
    return {n.name: (next((a.i for a in n.attribute if a.name == "group"), 1), shapes[n.input[1]])
            for n in g.node if n.op_type == "Conv"}


def _selected_convs(path: Path, group: str) -> set[str]:
    return set(q._float_nodes(path, [group])) & set(_convs(path))


def test_int8_preprocessing_keeps_the_same_pads_apart_that_fp32_folds(graphs) -> None:
    """The FP32 export lets ONNX Runtime fold EfficientNet's "same" Pads into their convs; the
    graphs handed to quantize_static keep them apart (folded, the default model's INT8 missed its
    gates: 97.7 % agreement). tiny.yaml (ResNet) has no Pads either way."""
    import onnx

    name, _, pre = graphs
    pads = [sum(n.op_type == "Pad" for n in onnx.load(str(p)).graph.node) for p in pre.values()]
    assert all(p > 0 for p in pads) if name == "efflite_tiny.yaml" else pads == [0, 0], pads


def test_pads_fold_only_in_front_of_quantized_convs(graphs, tmp_path) -> None:
    """With a recipe's float groups, preprocess folds the Pads whose conv is quantized (exact, and
    faster) and keeps apart those whose conv stays float (folded there, the default model's rung 4
    missed its gates). Expectation from the graph: a Pad is kept iff the conv it feeds is a
    depthwise or stem conv (EfficientNet pads only those) and that group is float."""
    import onnx

    name, _, pre = graphs
    if name != "efflite_tiny.yaml":
        pytest.skip("ResNet graphs have no Pads")
    model = _model(name)
    src = {k: ensure_onnx(model, k, tmp_path, SIZE).path for k in pre}  # the FP32 graphs

    def pads(path: Path) -> int:
        return sum(n.op_type == "Pad" for n in onnx.load(str(path)).graph.node)

    for k, path in src.items():
        everything = tmp_path / "all.onnx"
        q.preprocess(path, everything)
        apart = pads(everything)
        assert apart > 0
        for keep, expected in (((), 0), (("head_out",), 0), (("depthwise",), None),
                               (("stem", "depthwise"), apart)):
            out = tmp_path / "pre.onnx"
            q.preprocess(path, out, keep_float=keep)
            got = pads(out)
            if expected is None:  # only the stem's Pad folds
                assert got == apart - 1, (k, keep, got, apart)
            else:
                assert got == expected, (k, keep, got, apart)


def test_depthwise_groups_select_exactly_the_depthwise_convs_of_each_encoder(graphs) -> None:
    cfg, _, paths = graphs
    for k, path in paths.items():
        convs = _convs(path)
        dw = {n for n, (grp, w) in convs.items() if grp > 1 and grp == w[0] and w[1] == 1}
        assert _selected_convs(path, "depthwise") == dw, (cfg, k)
        # keyframe graph = slow encoder, non-keyframe graph = fast encoder
        assert _selected_convs(path, "slow_depthwise") == (dw if k else set()), (cfg, k)
        assert _selected_convs(path, "fast_depthwise") == (set() if k else dw), (cfg, k)
        if cfg == "efflite_tiny.yaml":
            assert len(dw) >= 10, k  # every MBConv block has one: the check is not vacuous
        else:
            assert dw == set(), k  # ResNet has none


def test_fast_early_group_selects_the_first_four_blocks_of_the_fast_encoder(graphs) -> None:
    """EfficientNet-Lite blocks 0-3: block 0 (expand ratio 1) has a depthwise and a project conv,
    blocks 1-3 an expand conv too: 2 + 3 x 3 = 11 convs, hand-counted from the architecture; the
    blocks' depthwise convs are the first four of the graph's (in graph order)."""
    cfg, _, paths = graphs
    assert _selected_convs(paths[True], "fast_early") == set(), cfg
    sel = _selected_convs(paths[False], "fast_early")
    if cfg != "efflite_tiny.yaml":
        assert sel == set()
        return
    convs = _convs(paths[False])
    assert len(sel) == 11
    dw = [n for n, (grp, w) in convs.items() if grp > 1 and grp == w[0] and w[1] == 1]  # graph order
    assert sel & set(dw) == set(dw[:4])


def test_stem_group_selects_the_conv_that_reads_the_image(graphs) -> None:
    cfg, _, paths = graphs
    for k, path in paths.items():
        rgb_in = {n for n, (grp, w) in _convs(path).items() if w[1] == 3 and grp == 1}
        assert len(rgb_in) == 1, (cfg, k)
        assert _selected_convs(path, "stem") == rgb_in, (cfg, k)


def test_every_group_the_ladder_keeps_float_selects_convs_of_its_own_scope(graphs) -> None:
    """A group whose pattern matches no node of the exported graphs would leave its layers INT8
    silently (the ladder test still sees strict subsets from the other groups of a rung). Each
    group named by RECIPES selects at least one conv, and only convs under its scope: ``project``
    the encoders' projections, ``heads`` the task heads (a superset of ``head_out``)."""
    cfg, _, paths = graphs
    used = {g for st in q.RECIPES for g in st.keep_float}
    sel = {g: set().union(*(_selected_convs(p, g) for p in paths.values())) for g in used}
    for g in sorted(used):
        if cfg != "efflite_tiny.yaml" and g in ("depthwise", "slow_depthwise", "fast_depthwise",
                                                 "fast_early"):
            continue  # EfficientNet-Lite groups: tiny.yaml's ResNet encoders have no MBConv blocks
        assert sel[g], (cfg, g)
    assert all(re.match(r"^/(slow|fast)/project/", n) for n in sel["project"]), (cfg, sel["project"])
    assert all(n.startswith("/head/") for n in sel["heads"]), (cfg, sel["heads"])
    assert sel["head_out"] < sel["heads"], cfg


def test_ladder_runs_fastest_first_each_rung_quantizes_a_subset_of_the_one_before(graphs) -> None:
    """More float (fewer INT8 convs) is slower; a rung that quantized something its predecessor
    kept float would be out of order (and could not be more accurate for that reason)."""
    cfg, _, paths = graphs
    convs = {k: set(_convs(p)) for k, p in paths.items()}

    def quantized(st: q.QuantSettings) -> set[tuple[bool, str]]:
        out = set()
        for k, path in paths.items():
            if ("key" if k else "nonkey") in st.graphs:
                out |= {(k, n) for n in convs[k] - set(q._float_nodes(path, st.keep_float))}
        return out

    rungs = [quantized(st) for st in q.RECIPES]
    assert rungs[0], cfg
    for i in range(1, len(rungs)):
        assert rungs[i] <= rungs[i - 1], (cfg, i)
        if cfg == "efflite_tiny.yaml":  # on this family every rung changes something
            assert rungs[i] < rungs[i - 1], (cfg, i)


def test_recipe_graphs_validated() -> None:
    with pytest.raises(ValueError, match="graphs"):
        q.QuantSettings(graphs=())
    with pytest.raises(ValueError, match="graphs"):
        q.QuantSettings(graphs=("keyframe",))


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):  # noqa: ANN001, ANN201
    """efflite_tiny (random weights) quantized with the default recipe: (model, clips, cache, result)."""
    model = _model("efflite_tiny.yaml")
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (5, *SIZE, 3), dtype=np.uint8) for _ in range(3)]
    cache = tmp_path_factory.mktemp("int8")
    res = q.ensure_int8(model, clips[:2], clips[2:], cache, SIZE, q.QuantSettings(), threads=1)
    assert res.quantized is not None
    return model, clips, cache, res


def test_a_conv_before_relu6_is_quantized_on_the_activation_range(tiny_int8) -> None:
    """The default recipe quantizes Clip with its conv: ONNX Runtime drops the Clip and the conv's
    output takes the ReLU6 range, so its u8 zero point is 0 and its scale at most 6/255. With Conv
    alone the output kept its pre-activation range (negative values: zero point > 0, scale up to
    0.72 on the default model): the error that sank INT8 on it."""
    model, _, cache, res = tiny_int8
    fp32 = onnx.load(str(ensure_onnx(model, False, cache, SIZE).path)).graph
    consumers: dict[str, list] = {}
    for n in fp32.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    relu6_convs = {n.name for n in fp32.node if n.op_type == "Conv" and n.name.startswith("/fast/")
                   and [c.op_type for c in consumers.get(n.output[0], [])] == ["Clip"]}
    assert len(relu6_convs) >= 10  # stem, expand and depthwise convs
    g = onnx.load(str(res.quantized[False].path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    by_input: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            by_input.setdefault(i, []).append(n)
    checked = 0
    for n in g.node:
        if n.name in relu6_convs:
            after = by_input[n.output[0]]
            assert [c.op_type for c in after] == ["QuantizeLinear"], n.name  # the Clip is gone
            scale, zp = inits[after[0].input[1]], inits[after[0].input[2]]
            assert int(zp) == 0 and 0 < float(scale) <= 6 / 255 + 1e-7, (n.name, scale, zp)
            checked += 1
    assert checked == len(relu6_convs)


def test_a_graph_left_out_of_the_recipe_stays_fp32(tiny_int8) -> None:
    model, clips, cache, both = tiny_int8
    st = q.QuantSettings(graphs=("key",))
    res = q.ensure_int8(model, clips[:2], clips[2:], cache, SIZE, st, threads=1)
    assert res.quantized is not None
    fp32 = {k: ensure_onnx(model, k, cache, SIZE) for k in (True, False)}
    assert res.quantized[False].path.read_bytes() == fp32[False].path.read_bytes()
    key_ops = {n.op_type for n in onnx.load(str(res.quantized[True].path)).graph.node}
    assert "DequantizeLinear" in key_ops
    # the recipe is part of the cache key: both graphs quantized is another pair of files
    assert both.quantized is not None and both.quantized[False].path != res.quantized[False].path
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(both.quantized[False].path)).graph.node}


def test_cli_graphs_needs_keep_float_and_takes_key_nonkey_only(tmp_path, capsys) -> None:
    from mtl_perception.backends.quantize_cli import main

    base = ["--checkpoint", "random", "--images", str(tmp_path)]
    for extra in (["--graphs", "key"], ["--graphs", "keyframe", "--keep-float", "stem"]):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2, extra
    err = capsys.readouterr().err
    assert "--graphs needs --keep-float" in err and "invalid choice: 'keyframe'" in err
