"""Inter-frame local attention: Eq. 1-2 semantics, the fast path against the reference, MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtl_perception.model.flops import ila_macs
from mtl_perception.model.ila import (
    EAGER_TILES_MAX_BYTES,
    build_global,
    build_ila,
    global_attention,
    local_attention,
    reference_local_attention,
)


def sharp_embedding(b: int, ck: int, h: int, w: int, scale: float = 60.0) -> torch.Tensor:
    """Unit vectors per pixel, scaled so the self-similarity dominates every other one."""
    g = torch.Generator().manual_seed(1)
    return F.normalize(torch.randn(b, ck, h, w, generator=g), dim=1) * scale


@pytest.mark.parametrize("window", [3, 5, 7])
def test_one_hot_attention_returns_previous_features(window: int) -> None:
    # Identical frames and a sharp softmax: each pixel attends only to itself.
    emb = sharp_embedding(2, 32, 12, 20)
    value = torch.randn(2, 64, 12, 20)
    out = local_attention(emb, emb, value, window)
    assert torch.allclose(out, value, atol=1e-4)


def test_attention_follows_motion() -> None:
    # The previous frame is the current one shifted by one pixel right: ILA finds the match.
    emb = sharp_embedding(1, 32, 10, 16)
    value = torch.randn(1, 8, 10, 16)
    prev_emb = torch.roll(emb, shifts=1, dims=3)
    prev_val = torch.roll(value, shifts=1, dims=3)
    out = local_attention(emb, prev_emb, prev_val, 3)
    assert torch.allclose(out[..., :-1], value[..., :-1], atol=1e-4)


@pytest.mark.parametrize("window", [1, 3, 5, 7])
def test_shift_implementation_equals_reference(window: int) -> None:
    g = torch.Generator().manual_seed(window)
    q = torch.randn(2, 4, 9, 13, generator=g)
    k = torch.randn(2, 4, 9, 13, generator=g)
    v = torch.randn(2, 16, 9, 13, generator=g)
    fast = local_attention(q, k, v, window)
    ref = reference_local_attention(q, k, v, window)
    assert torch.allclose(fast, ref, atol=1e-5)
    # channels_last inputs (what the compiled/CPU paths use) give the same result.
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
    assert torch.allclose(local_attention(*cl, window), ref, atol=1e-5)


def test_reference_gradients_match() -> None:
    q, k, v = (torch.randn(1, 2, 6, 7, requires_grad=True) for _ in range(3))
    local_attention(q, k, v, 5).square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    reference_local_attention(q, k, v, 5).square().sum().backward()
    for a, t in zip(grads, (q, k, v)):
        assert torch.allclose(a, t.grad, atol=1e-5)


def test_weights_outside_the_frame_are_zero() -> None:
    # A constant value map must come back unchanged at the borders too (weights sum to 1 over
    # in-frame positions only; zero padding would pull border pixels towards 0).
    q = torch.randn(1, 4, 5, 6)
    v = torch.full((1, 3, 5, 6), 2.5)
    assert torch.allclose(local_attention(q, torch.randn(1, 4, 5, 6), v, 7), v, atol=1e-5)


def test_global_variant_is_full_softmax_attention() -> None:
    q, k = torch.randn(1, 4, 3, 5), torch.randn(1, 4, 3, 5)
    v = torch.randn(1, 6, 3, 5)
    out = global_attention(q, k, v)
    w = torch.softmax(torch.einsum("cp,cq->pq", q[0].flatten(1), k[0].flatten(1)), dim=1)
    assert torch.allclose(out[0].flatten(1), v[0].flatten(1) @ w.T, atol=1e-5)
    # With a window covering the whole map, local attention equals global attention.
    assert torch.allclose(local_attention(q, k, v, 9), out, atol=1e-5)


def test_module_is_one_conv_to_c_over_16() -> None:
    ila = build_ila(512, 16, 5)
    convs = [m for m in ila.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].out_channels == 32 and convs[0].kernel_size == (3, 3)
    params = sum(p.numel() for p in ila.parameters())
    assert 0.1e6 < params < 0.25e6  # Table 8: ~0.2 M


def test_ila_macs_match_the_paper_at_1024x2048() -> None:
    # Table 8: ILA costs 5.4 GFLOPs (thop MACs) at 1024x2048, i.e. a 128x256 map at stride 8.
    m = ila_macs(build_ila(512, 16, 5), 512, (128, 256))
    assert m["attention"] == 128 * 256 * 25 * (32 + 512)
    assert abs(m["total"] / 1e9 - 5.4) / 5.4 < 0.10
    g = ila_macs(build_global(512, 16), 512, (8, 16))
    assert g["attention"] == (8 * 16) ** 2 * (32 + 512)


@pytest.mark.parametrize("window", [3, 7])
def test_inference_and_autograd_paths_agree(window: int) -> None:
    from mtl_perception.model.ila import _local_attention_functional, _local_attention_inplace

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 4, 6, 11, generator=g), torch.randn(1, 4, 6, 11, generator=g)
    v = torch.randn(1, 8, 6, 11, generator=g)
    a = _local_attention_inplace(q, k, v, window)
    b = _local_attention_functional(q, k, v, window)
    assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(local_attention(q, k, v, window), reference_local_attention(q, k, v, window),
                              atol=1e-5)


def test_bf16_values_accumulate_in_fp32_on_the_cpu() -> None:
    """BF16 in, BF16 out, and only the final rounding differs from the FP32 result on the same
    (BF16-rounded) inputs: a BF16 accumulation over the 25 window terms would be off by more."""
    from mtl_perception.model.ila import _local_attention_inplace

    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(1, 4, 12, 20, generator=g).bfloat16() for _ in range(2))
    v = (torch.randn(1, 16, 12, 20, generator=g) * 10).bfloat16()
    out = _local_attention_inplace(q, k, v, 5)
    assert out.dtype == torch.bfloat16
    expected = reference_local_attention(q.float(), k.float(), v.float(), 5)
    # rounding to BF16 moves a value by at most half a unit in the last place (2^-9 relative)
    assert ((out.float() - expected).abs() <= expected.abs() * 2.0 ** -8 + 1e-6).all()


@pytest.mark.parametrize("window, size, tile", [(1, (9, 13), (4, 8)), (3, (8, 16), (4, 8)),
                                                (5, (9, 13), (4, 8)), (7, (9, 13), (2, 3)),
                                                (5, (3, 2), (4, 8)), (5, (33, 65), None),
                                                (3, (10, 13), None)])
def test_export_form_equals_reference(window: int, size: tuple[int, int],
                                      tile: tuple[int, int] | None) -> None:
    """Tiles that divide the map and ones that do not (clamped query rows, cropped output rows),
    halos that leave the frame on every side, a map smaller than one tile, the automatic tile
    (the ResNet encoders' 33x65 map at 256x512 input)."""
    from mtl_perception.model.ila import _local_attention_tiles

    g = torch.Generator().manual_seed(10 + window)
    q, k = torch.randn(2, 4, *size, generator=g), torch.randn(2, 4, *size, generator=g)
    v = torch.randn(2, 16, *size, generator=g)
    expected = reference_local_attention(q, k, v, window)
    assert torch.allclose(_local_attention_tiles(q, k, v, window, tile), expected, atol=1e-5)


@pytest.mark.parametrize("limit, size", [(None, (8, 12)), (0, (8, 12)), (None, (7, 11))])
def test_onnx_runtime_runs_the_tiled_form_and_matches_reference(tmp_path, monkeypatch, limit, size) -> None:
    """8x12: the tile (4x6) divides the map; 7x11: it does not (4x11: clamped query rows, cropped
    output rows) in ONNX Runtime too."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import warnings

    from mtl_perception.model import ila

    if limit is not None:  # over the memory limit the export keeps the shift loop
        monkeypatch.setattr(ila, "TILES_MAX_BYTES", limit)
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 4, *size, generator=g), torch.randn(1, 4, *size, generator=g)
    v = torch.randn(1, 8, *size, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_ila(16, 4, 5).attend, (q, k, v), str(tmp_path / "a.onnx"), opset_version=17,
                          dynamo=False, input_names=["q", "k", "v"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "a.onnx")).graph.node]
    gathered = "MatMul" in ops and ops.count("Slice") < 10  # the shift loop slices 25+ times
    assert gathered == (limit is None)
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), reference_local_attention(q, k, v, 5), atol=1e-5)


@pytest.mark.parametrize("batch, size, channels", [(1, (12, 24), (4, 64)), (2, (9, 13), (4, 16)),
                                                   (1, (3, 2), (2, 8)), (2, (33, 65), (8, 32))])
def test_graph_form_in_onnx_runtime_equals_reference(tmp_path, batch, size, channels) -> None:
    """The export branch of the tiled form (2-D index gathers, output gathered as (B, H, W, C)) as
    ONNX Runtime runs it: the default model's 12x24 map, a tile that does not divide the map with a
    batch of 2, a map smaller than one tile, the 33x65 ResNet map."""
    ort = pytest.importorskip("onnxruntime")
    import warnings

    ck, c = channels
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(batch, ck, *size, generator=g) * 3 for _ in range(2))
    v = torch.randn(batch, c, *size, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_ila(16, 4, 5).attend, (q, k, v), str(tmp_path / "a.onnx"), opset_version=17,
                          dynamo=False, input_names=["q", "k", "v"])
    sess = ort.InferenceSession(str(tmp_path / "a.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
    assert out.shape == (batch, c, *size)
    assert torch.allclose(torch.from_numpy(out), reference_local_attention(q, k, v, 5), atol=1e-5)


def test_graph_form_has_no_reshape_after_a_gather(tmp_path) -> None:
    """The export branch's point (docs/ila_runtimes.md, "2-D index gathers"): 2-D index gathers
    give the blocks and the output in their final shape, so no Gather feeds a Reshape. The
    eager form (1-D index_select then view) would put a Reshape after each of its gathers."""
    onnx = pytest.importorskip("onnx")
    import warnings

    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(1, 4, 12, 24, generator=g) for _ in range(2))
    v = torch.randn(1, 16, 12, 24, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_ila(16, 4, 5).attend, (q, k, v), str(tmp_path / "a.onnx"), opset_version=17,
                          dynamo=False, input_names=["q", "k", "v"])
    nodes = onnx.load(str(tmp_path / "a.onnx")).graph.node
    gathered = {o for n in nodes if n.op_type == "Gather" for o in n.output}
    assert len(gathered) >= 4  # query, key and value halos, output: the check is not vacuous
    assert not [n.name for n in nodes if n.op_type == "Reshape" and n.input[0] in gathered]


def test_tile_for_prefers_divisors_near_4x8() -> None:
    from mtl_perception.model.ila import TILE, tile_for

    assert tile_for(32, 64) == (4, 8)  # the measured best where it divides
    assert tile_for(33, 65) == (3, 5)  # ResNet encoders at 256x512: no padded rows or columns
    assert tile_for(12, 24) == (4, 8)  # the default model at 192x384
    assert tile_for(65, 129) == (5, TILE[1])  # no preferred divisor of 129: the default column size
    assert tile_for(7, 7) == (TILE[0], 7)


def test_eager_cpu_inference_takes_the_tiled_form_on_small_maps_only(monkeypatch) -> None:
    """The rule of ``local_attention`` without grad on the CPU: gathered halos <= EAGER_TILES_MAX_BYTES
    (the default model's 12x24 map) -> the tiled form, larger (33x65 with 512 channels) -> the
    in-place loop; either way the reference's values, FP32 and BF16 (accumulated in FP32)."""
    from mtl_perception.model import ila

    calls: list[str] = []
    tiles, loop = ila._local_attention_tiles, ila._local_attention_inplace
    monkeypatch.setattr(ila, "_local_attention_tiles",
                        lambda *a, **k: calls.append("tiles") or tiles(*a, **k))
    monkeypatch.setattr(ila, "_local_attention_inplace",
                        lambda *a, **k: calls.append("loop") or loop(*a, **k))
    g = torch.Generator().manual_seed(11)
    for (h, w, ck, c), path in [((12, 24, 4, 64), "tiles"), ((33, 65, 32, 512), "loop")]:
        q, k = torch.randn(1, ck, h, w, generator=g), torch.randn(1, ck, h, w, generator=g)
        v = torch.randn(1, c, h, w, generator=g)
        calls.clear()
        with torch.no_grad():
            out = local_attention(q, k, v, 5)
        assert calls[0] == path
        assert torch.allclose(out, reference_local_attention(q, k, v, 5), atol=1e-5)
    # BF16 values on the tiled path: only the final rounding differs from FP32 on the same inputs
    q, k = (torch.randn(1, 4, 12, 24, generator=g).bfloat16() for _ in range(2))
    v = (torch.randn(1, 64, 12, 24, generator=g) * 10).bfloat16()
    calls.clear()
    with torch.no_grad():
        out = local_attention(q, k, v, 5)
    assert calls[0] == "tiles" and out.dtype == torch.bfloat16
    expected = reference_local_attention(q.float(), k.float(), v.float(), 5)
    assert ((out.float() - expected).abs() <= expected.abs() * 2.0 ** -8 + 1e-5).all()


def test_eager_tiled_form_keeps_masked_pixels_at_zero_weight_for_huge_logits() -> None:
    """In-window dot products of ~1.6e5: an additive -1e4 mask would let out-of-window halo pixels
    win the softmax; the eager tiled form must still equal the reference (-inf masking)."""
    g = torch.Generator().manual_seed(0)
    q = 150 + 100 * torch.rand(1, 4, 12, 24, generator=g)
    k = 150 + 100 * torch.rand(1, 4, 12, 24, generator=g)
    v = torch.randn(1, 8, 12, 24, generator=g)
    with torch.no_grad():
        out = local_attention(q, k, v, 5)
    # FP32 logits of this size carry ~1e-2 absolute rounding: compare with the FP64 reference at
    # a tolerance far below what a leaking mask does (errors of ~3 on these values)
    expected = reference_local_attention(q.double(), k.double(), v.double(), 5)
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("eager_tiles_limit", [EAGER_TILES_MAX_BYTES, 0])  # tiled form, in-place loop
@pytest.mark.parametrize("key_sign", [1.0, -1.0])
def test_eager_paths_give_out_of_frame_positions_no_weight_for_huge_logits(monkeypatch, eager_tiles_limit,
                                                                           key_sign) -> None:
    """Dot products of +-1.6e5: with every in-frame logit below -1e4 a -1e4 out-of-frame fill would
    take the weight at the border pixels (the in-place loop: error ~3); both eager paths must
    still equal the FP64 reference."""
    from mtl_perception.model import ila

    monkeypatch.setattr(ila, "EAGER_TILES_MAX_BYTES", eager_tiles_limit)
    g = torch.Generator().manual_seed(0)
    q = 150 + 100 * torch.rand(1, 4, 12, 24, generator=g)
    k = key_sign * (150 + 100 * torch.rand(1, 4, 12, 24, generator=g))
    v = torch.randn(1, 8, 12, 24, generator=g)
    with torch.no_grad():
        out = local_attention(q, k, v, 5)
    expected = reference_local_attention(q.double(), k.double(), v.double(), 5)
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


def test_eager_tiled_form_accumulates_fp16_values_in_fp32() -> None:
    """FP16 values (and embeddings whose dot products exceed 65504) on the tiled path: FP32 logits
    and products, one rounding to FP16 at the end."""
    g = torch.Generator().manual_seed(5)
    q, k = ((20 * torch.randn(1, 4, 12, 24, generator=g)).half() for _ in range(2))
    v = (torch.randn(1, 64, 12, 24, generator=g) * 10).half()
    with torch.no_grad():
        out = local_attention(q, k, v, 5)
    assert out.dtype == torch.float16
    expected = reference_local_attention(q.float(), k.float(), v.float(), 5)
    assert ((out.float() - expected).abs() <= expected.abs() * 2.0 ** -11 + 1e-5).all()
