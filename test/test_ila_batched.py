"""Several ILA products in one call (every task's and slot's of a frame): stacked products each
equal the unfold reference computed alone, stacking never mixes products, the measured rule for
when to stack, and the exported non-keyframe graph of the default-size model runs one product."""

from __future__ import annotations

import pytest
import torch

from mtl_perception.model.config import ModelConfig
from mtl_perception.model.flops import count_macs
from mtl_perception.model.ila import LocalAttention, build_global, reference_local_attention, stack_products
from mtl_perception.model.network import MultiTaskVideoNet


def _products(n: int, ck: int = 4, c: int = 16, h: int = 9, w: int = 13, seed: int = 0):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, ck, h, w, generator=g) * 2, torch.randn(1, ck, h, w, generator=g) * 2,
             torch.randn(1, c, h, w, generator=g)) for _ in range(n)]


def _lists(prods):  # noqa: ANN001, ANN202 - [(q, k, v), ...] -> [qs], [ks], [vs]
    return tuple(list(x) for x in zip(*prods))


@pytest.fixture
def counted(monkeypatch):  # noqa: ANN001, ANN201
    """LocalAttention always stacks; records the batch of each product it computes."""
    batches: list[int] = []
    product = LocalAttention.product

    def spy(self, q, k, v):  # noqa: ANN001, ANN202
        batches.append(int(q.shape[0]))
        return product(self, q, k, v)

    monkeypatch.setattr(LocalAttention, "stacks", lambda *_: True)
    monkeypatch.setattr(LocalAttention, "product", spy)
    return batches


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_each_stacked_product_equals_the_reference_alone(counted, grad: bool) -> None:
    prods = _products(6)
    with torch.set_grad_enabled(grad):
        out = LocalAttention(5)(*_lists(prods))
    assert counted == [6]  # one product of batch 6
    assert isinstance(out, list) and len(out) == 6
    for (q, k, v), o in zip(prods, out):
        torch.testing.assert_close(o, reference_local_attention(q, k, v, 5), rtol=1e-5, atol=1e-5)


def test_stacking_never_mixes_products(counted) -> None:
    prods = _products(3)
    before = LocalAttention(3)(*_lists(prods))
    q, k, v = prods[1]
    prods[1] = (q, k, v + 100.0)  # another product's values change ...
    after = LocalAttention(3)(*_lists(prods))
    assert counted == [3, 3]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])  # ... these do not
    torch.testing.assert_close(after[1], before[1] + 100.0)  # convex weights: a shift passes through


def test_products_of_different_shapes_run_apart_and_stay_exact(counted) -> None:
    a, b = _products(1, c=16)[0], _products(1, c=8, h=7, w=11, seed=1)[0]
    out = LocalAttention(5)([a[0], b[0]], [a[1], b[1]], [a[2], b[2]])
    assert counted == [1, 1]
    torch.testing.assert_close(out[0], reference_local_attention(*a, 5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], reference_local_attention(*b, 5), rtol=1e-5, atol=1e-5)


def _qv(ck: int, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, ck, h, w), torch.zeros(1, c, h, w)


def test_when_products_stack(monkeypatch) -> None:
    """The measured rule: graph export up to 1 MB of stacked values; eager CPU inference only
    where the in-place loop runs (gathered halos > 2 MB per product), up to 8 MB stacked;
    never with autograd."""
    default = _qv(4, 64, 12, 24)  # 6 x 64 x 288 x 4 B = 0.44 MB stacked; halos 0.22 MB each
    small = _qv(8, 128, 33, 65)  # 6.6 MB stacked; halos 4.6 MB each (3x5 tiles)
    d101 = _qv(32, 512, 33, 65)  # 26 MB stacked
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert stack_products(*default, 6, 5)
    assert not stack_products(*small, 6, 5)
    assert stack_products(*_qv(4, 64, 32, 32), 4, 5)  # 4 x 64 x 1024 x 4 B = 1 MB: the limit
    assert not stack_products(*_qv(4, 64, 32, 32), 5, 5)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: False)
    with torch.no_grad():
        assert not stack_products(*default, 6, 5)  # eager tiled form: slower stacked
        assert stack_products(*small, 6, 5)
        assert not stack_products(*d101, 6, 5)
    with torch.enable_grad():
        assert not stack_products(*small, 6, 5)


def test_macs_of_a_call_are_the_sum_of_its_products() -> None:
    prods = _products(4, ck=2, c=10, h=3, w=5)
    # per product: H * W * L^2 * (Ck + C) = 15 * 9 * 12 = 1620
    assert count_macs(LocalAttention(3), *_lists(prods)) == 4 * 1620
    glob = build_global(8, 4).attend
    # global: (HW)^2 * (Ck + C) = 225 * 12 = 2700
    assert count_macs(glob, *_lists(prods[:2])) == 2 * 2700


def _model() -> MultiTaskVideoNet:
    cfg = ModelConfig.from_dict({"feature_channels": 32, "propagation": {"multi_frame": True}})
    torch.manual_seed(0)
    return MultiTaskVideoNet(cfg).eval()


def test_a_frame_hands_every_task_and_slot_to_one_call_with_the_same_outputs(monkeypatch) -> None:
    model = _model()
    calls: list[int] = []
    for p in model.propagation.values():
        p.attend.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    g = torch.Generator().manual_seed(3)
    frames = [torch.rand(1, 3, 64, 96, generator=g) for _ in range(3)]

    def run(stack: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(LocalAttention, "stacks", lambda *_: stack)
        calls.clear()
        state = None
        for t, img in enumerate(frames):
            with torch.no_grad():
                out, state = model.step(img, state, t == 0)
        n = len(model.propagation)
        # keyframe: no source; 1st non-keyframe: the keyframe slot; 2nd: keyframe and non-keyframe
        assert calls == [n, 2 * n]
        return out

    stacked, apart = run(True), run(False)
    for t in model.tasks:
        torch.testing.assert_close(stacked[t], apart[t], rtol=1e-4, atol=1e-5)
        assert not torch.equal(stacked[t], model.step(frames[2], None, True)[0][t])  # ILA mattered


def test_the_exported_non_keyframe_graph_has_one_attention_softmax(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from mtl_perception.backends.export import export_step

    path = tmp_path / "nonkey.onnx"
    export_step(_model(), path, False, input_size=(64, 96))
    g = onnx.load(str(path)).graph
    softmax = [n.name for n in g.node if n.op_type == "Softmax" and "/attend" in n.name]
    assert len(softmax) == 1, softmax  # 3 tasks x 2 slots stacked into one product
