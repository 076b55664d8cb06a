"""Inter-frame local attention (ILA), Eq. 1-2 of the MILA paper, and its global variant.

``f_{t->k}(i,j) = sum_{x,y in LxL} W_ij(x,y) f_t(i+x, j+y)`` with
``W_ij = softmax_{x,y}(h(f_k)(i,j) . h(f_t)(i+x, j+y))``: a single 3x3 conv ``h`` shared by both
frames projects C channels to C/16, the current frame's embedding is the query, the previous
frame's embedding the key and its (SE-selected) features the value.

The fast path is a loop over the L^2 offsets that shifts the padded key/value and accumulates:
it needs O(L^2 HW + C HW) memory instead of the O(L^2 C HW) of an ``F.unfold`` of the value
(~3.4 GB at 1024x2048 input), is written functionally so ``torch.compile`` fuses it and the ONNX
exporter traces it, and works on channels_last tensors. :func:`reference_local_attention` is the
obvious unfold version, kept for the equality test.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import PROPAGATION

# Logit added where the window leaves the frame: large enough to zero the weight in fp32 and
# fp16 softmax, small enough to stay finite in fp16 (max 65504).
_OUTSIDE = -1.0e4


def local_attention(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Memory-lean ILA: softmax over an LxL window of ``key`` around each query pixel.

    query, key: (B, Ck, H, W) embeddings of the current and the previous frame.
    value: (B, C, H, W) previous-frame features. Returns (B, C, H, W).
    Window positions outside the frame get no weight.
    """
    if not torch.is_grad_enabled() and not _tracing():
        if value.device.type == "cpu" and _gathered_bytes(query, value, window) <= EAGER_TILES_MAX_BYTES:
            return _local_attention_tiles_eager(query, key, value, window)
        return _local_attention_inplace(query, key, value, window)
    if torch.onnx.is_in_onnx_export() and _gathered_bytes(query, value, window) <= TILES_MAX_BYTES:
        return _local_attention_tiles(query, key, value, window)
    return _local_attention_functional(query, key, value, window)


# Output tile of the export form (rows, columns), chosen per feature map by measurement
# (bench/ila.py --onnx, docs/ila_runtimes.md): larger tiles gather less but multiply more (the
# weights are dense over the tile's halo), smaller ones the other way round, and a tile that does
# not divide the map computes the padding too (4x8 on the ResNet encoders' 33x65 map at 256x512
# input: 21 % more pixels). :func:`tile_for` prefers a divisor near 4 x 8.
TILE = (4, 8)
_TILE_ROWS = (4, 3, 5, 6)  # preference order: closest to the measured best first
_TILE_COLS = (8, 7, 9, 6, 10, 5, 11, 12, 13, 14, 15, 16)
# The gathered halos of the values up to which the ONNX export uses the tiled form: ~3-4x the
# value map (256x512 input with 512 channels: ~15 MB).
TILES_MAX_BYTES = 256 << 20
# Eager CPU inference uses the tiled form too when its gathered halos are this small: on small
# maps one gather and two batched MatMuls beat the loop's 2 x L^2 tiny ops (the default model's
# 12x24 map, 64 channels: 0.34 vs 0.90 ms per call, 1 thread), on large ones the loop wins
# (33x65, 512 channels: 3.8 vs 6.3 ms). Measured by hand, docs/ila_runtimes.md.
EAGER_TILES_MAX_BYTES = 2 << 20


def tile_for(h: int, w: int) -> tuple[int, int]:
    """The export tile for an ``h`` x ``w`` map: per axis the preferred size that divides it
    (33x65 -> 3x5, 32x64 -> 4x8), else :data:`TILE`'s (the remainder is padding work)."""
    th = next((t for t in _TILE_ROWS if h % t == 0), TILE[0])
    tw = next((t for t in _TILE_COLS if w % t == 0), TILE[1])
    return th, tw


def _gathered_bytes(query: Tensor, value: Tensor, window: int, tile: tuple[int, int] | None = None) -> int:
    b, _, h, w = (int(v) for v in query.shape)
    th, tw = tile or tile_for(h, w)
    tiles = ((h + th - 1) // th) * ((w + tw - 1) // tw)
    return int(b * tiles * (th + window - 1) * (tw + window - 1) * value.shape[1] * 4)


class TileConstants(NamedTuple):
    """Index and bias constants of the tiled form for one map size (graph constants at export)."""

    idx: Tensor  # halo pixels of every tile, flat row index (clamped into the frame)
    bias: Tensor  # (tiles, th*tw, n_in): 0 inside a pixel's window and the frame, else `outside`
    q_idx: Tensor  # frame row of each tile slot (clamped: its output is dropped)
    out_idx: Tensor  # tile slot of each frame pixel, raster order


def _tile_constants(h: int, w: int, window: int, tile: tuple[int, int],
                    outside: float = _OUTSIDE) -> TileConstants:
    r = window // 2
    th, tw = tile
    ny, nx = (h + th - 1) // th, (w + tw - 1) // tw
    hh, hw_ = th + 2 * r, tw + 2 * r  # halo rows, columns
    n_in = hh * hw_
    # Halo pixel coordinates per tile, in the frame (out-of-frame ones clamped, masked below).
    ys = (torch.arange(ny) * th).view(ny, 1, 1, 1) + torch.arange(hh).view(1, 1, hh, 1) - r
    xs = (torch.arange(nx) * tw).view(1, nx, 1, 1) + torch.arange(hw_).view(1, 1, 1, hw_) - r
    inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).reshape(ny * nx, 1, n_in)
    idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(-1)
    # Output pixel (oy, ox) of a tile sees halo pixel (iy, ix) iff it is in its LxL window.
    oy, ox = torch.arange(th).view(th, 1, 1, 1), torch.arange(tw).view(1, tw, 1, 1)
    iy, ix = torch.arange(hh).view(1, 1, hh, 1), torch.arange(hw_).view(1, 1, 1, hw_)
    in_win = (((iy - oy - r).abs() <= r) & ((ix - ox - r).abs() <= r)).reshape(1, th * tw, n_in)
    bias = torch.where(in_win & inside, 0.0, outside)
    py = (torch.arange(ny) * th).view(ny, 1, 1, 1) + torch.arange(th).view(1, 1, th, 1)
    px = (torch.arange(nx) * tw).view(1, nx, 1, 1) + torch.arange(tw).view(1, 1, 1, tw)
    q_idx = (py.clamp(max=h - 1) * w + px.clamp(max=w - 1)).reshape(-1)
    slot = torch.arange(ny * nx * th * tw).view(ny, nx, th, tw).permute(0, 2, 1, 3)
    out_idx = slot.reshape(ny * th, nx * tw)[:h, :w].reshape(-1)
    return TileConstants(idx, bias, q_idx, out_idx)


@functools.lru_cache(maxsize=32)
def _cached_tile_constants(h: int, w: int, window: int, tile: tuple[int, int]) -> TileConstants:
    """Eager only (read, never written). The bias becomes -inf where masked: an additive -1e4
    (what graph runtimes get) is not enough once in-window logits differ by more than that."""
    return _tile_constants(h, w, window, tile, outside=float("-inf"))


def _local_attention_tiles_eager(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """The tiled form for eager CPU inference on small maps: constants built once per map size,
    reduced-precision values accumulated in FP32 and cast back once (as the in-place loop does
    for BF16)."""
    h, w = int(query.shape[2]), int(query.shape[3])
    consts = _cached_tile_constants(h, w, window, tile_for(h, w))
    if value.dtype != torch.float32:  # BF16 / FP16 values: FP32 products, one rounding at the end
        return _local_attention_tiles(query, key, value.float(), window, consts=consts).to(value.dtype)
    return _local_attention_tiles(query, key, value, window, consts=consts)


def _local_attention_tiles(query: Tensor, key: Tensor, value: Tensor, window: int,
                           tile: tuple[int, int] | None = None,
                           consts: TileConstants | None = None) -> Tensor:
    """Export form for graph runtimes: blocked local attention over output tiles.

    Each ``tile`` of output pixels (default :func:`tile_for`) attends to its halo (the tile grown
    by L//2 on every side), gathered once from a channels-last map: logits = one batched MatMul
    (tile x halo), a constant bias of -1e4 where a halo pixel is outside the pixel's LxL window or
    outside the frame (its softmax weight is then exactly 0, so clamped out-of-frame indices need
    no padded copy), softmax over the halo, and the weighted sum = a second batched MatMul. The
    query goes into tile order and the result back into raster order by one row gather each
    (clamped / cropped at a map edge the tile does not divide): no padded copy, no 6-D permute, no
    slices (docs/ila_runtimes.md). In ONNX Runtime 2-3x faster than one gathered LxL window per
    pixel (that gathers L^2 copies of the values and runs B*H*W tiny MatMuls).
    """
    b, ck, h, w = (int(v) for v in query.shape)  # static shapes: constants in the graph
    c = value.shape[1]
    th, tw = tile or tile_for(h, w)
    t = consts or _tile_constants(h, w, window, (th, tw))
    tiles, n_in = t.bias.shape[0], t.bias.shape[2]

    def rows(x: Tensor) -> Tensor:  # (B, C', H, W) -> (B, H*W, C')
        return x.flatten(2).transpose(1, 2)

    def halo(x: Tensor) -> Tensor:  # (B, C', H, W) -> (B, tiles, n_in, C')
        return rows(x).index_select(1, t.idx).view(b, tiles, n_in, x.shape[1])

    if query.dtype != torch.float32:
        query, key = query.float(), key.float()
    if torch.onnx.is_in_onnx_export():
        # Graph form: 2-D index gathers give the (B, tiles, n, C) blocks and the (B, H, W, C) output
        # directly, so no Reshape follows a gather (8 fewer nodes per frame pair of calls; ONNX
        # Runtime, default model, 6 calls: 0.80 -> 0.66 ms at 2 threads, 0.42 -> 0.40 at 1;
        # bench/ila.py "tiles auto"). Same values. Eager PyTorch keeps index_select: its
        # advanced indexing was slower (0.44 vs 0.37 ms per call at 12x24).
        idx = t.idx.view(tiles, n_in)
        q = rows(query)[:, t.q_idx.view(tiles, th * tw)]
        attn = torch.softmax(torch.matmul(q, rows(key)[:, idx].transpose(2, 3)) + t.bias, dim=-1)
        attn = attn if attn.dtype == value.dtype else attn.to(value.dtype)
        out = torch.matmul(attn, rows(value)[:, idx]).reshape(b, tiles * th * tw, c)
        return out[:, t.out_idx.view(h, w)].permute(0, 3, 1, 2)
    q = rows(query).index_select(1, t.q_idx).view(b, tiles, th * tw, ck)
    attn = torch.softmax(torch.matmul(q, halo(key).transpose(2, 3)) + t.bias, dim=-1)
    attn = attn if attn.dtype == value.dtype else attn.to(value.dtype)
    out = torch.matmul(attn, halo(value)).view(b, tiles * th * tw, c)  # tile-major rows
    return out.index_select(1, t.out_idx).transpose(1, 2).reshape(b, c, h, w)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _windows(window: int, h: int, w: int):  # noqa: ANN202 - yields slices
    """Per offset: the current-frame region whose shifted position stays inside the frame, and
    that shifted region in the previous frame."""
    r = window // 2
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            cur = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
            prev = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
            yield cur, prev


def _local_attention_inplace(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Inference path: no padded copies of the values, accumulation in place (eager only).

    The logits are FP32 whatever the input dtype: under FP16 autocast the dot products exceed
    65504 (inf, then a NaN softmax), and in-place writes do not go through autocast. BF16 values
    on the CPU are accumulated in FP32 and cast back once: PyTorch's CPU BF16 elementwise kernels
    ran the 2 x L^2 passes 2x slower than FP32 (docs/ila_runtimes.md), and FP32 sums round once."""
    b, _, h, w = query.shape
    if query.dtype != torch.float32:  # the C/16-channel embeddings: a small copy
        query, key = query.float(), key.float()
    if value.dtype == torch.bfloat16 and value.device.type == "cpu":
        return _local_attention_inplace(query, key, value.float(), window).to(torch.bfloat16)
    # -inf, not -1e4: when every in-frame logit is below -1e4 the out-of-frame ones would win
    # (zero weight left for the values at the border); the centre offset keeps a row finite.
    logits = query.new_full((b, window * window, h, w), float("-inf"), dtype=torch.float32)
    wins = list(_windows(window, h, w))
    for i, ((cy, cx), (py, px)) in enumerate(wins):
        logits[:, i, cy, cx] = (query[:, :, cy, cx] * key[:, :, py, px]).sum(1)
    attn = torch.softmax(logits, dim=1)
    attn = attn if attn.dtype == value.dtype else attn.to(value.dtype)
    out = torch.zeros_like(value)
    for i, ((cy, cx), (py, px)) in enumerate(wins):
        out[:, :, cy, cx].addcmul_(attn[:, i:i + 1, cy, cx], value[:, :, py, px])
    return out


def _local_attention_functional(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Differentiable, traceable form (training, torch.compile, ONNX export). Logits in FP32
    as in the in-place path (an FP32 input, e.g. the exported graph, gets no casts)."""
    r = window // 2
    _, _, h, w = query.shape
    if query.dtype != torch.float32:
        query, key = query.float(), key.float()
    key_p = F.pad(key, (r, r, r, r))
    value_p = F.pad(value, (r, r, r, r))
    inside = F.pad(torch.ones_like(query[:1, :1]), (r, r, r, r))
    logits = []
    for dy in range(window):
        for dx in range(window):
            k = key_p[:, :, dy:dy + h, dx:dx + w]
            outside = (1.0 - inside[:, :, dy:dy + h, dx:dx + w]) * _OUTSIDE
            logits.append((query * k).sum(dim=1, keepdim=True) + outside)
    attn = torch.softmax(torch.cat(logits, dim=1), dim=1)
    attn = attn if attn.dtype == value.dtype else attn.to(value.dtype)
    out = None
    for i in range(window * window):
        dy, dx = divmod(i, window)
        term = attn[:, i:i + 1] * value_p[:, :, dy:dy + h, dx:dx + w]
        out = term if out is None else out + term
    assert out is not None
    return out


def reference_local_attention(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Straightforward ``F.unfold`` ILA (memory-hungry); the fast path must equal it."""
    b, ck, h, w = query.shape
    c = value.shape[1]
    pad = window // 2
    keys = F.unfold(key, window, padding=pad).view(b, ck, window * window, h, w)
    values = F.unfold(value, window, padding=pad).view(b, c, window * window, h, w)
    inside = F.unfold(torch.ones_like(query[:, :1]), window, padding=pad).view(b, 1, window * window, h, w)
    logits = (query.unsqueeze(2) * keys).sum(1, keepdim=True)
    logits = logits.masked_fill(inside == 0, float("-inf"))
    attn = torch.softmax(logits, dim=2)
    return (attn * values).sum(2)


def global_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Every query pixel attends to every pixel of the previous frame (Table 4, "Global")."""
    b, ck, h, w = query.shape
    q = query.flatten(2).transpose(1, 2)  # B, HW, Ck
    k = key.flatten(2)  # B, Ck, HW
    attn = torch.softmax(torch.bmm(q, k), dim=-1)  # B, HW(query), HW(key)
    v = value.flatten(2)  # B, C, HW
    return torch.bmm(v, attn.transpose(1, 2)).view(b, value.shape[1], h, w)


Products = Tensor | Sequence[Tensor]  # one attention product's input, or several (batched)


class _AttentionProduct(nn.Module):
    """A parameter-free attention product: ``forward(query, key, value)`` on tensors, or on
    equal-length sequences of them (several products: every task's and slot's of a frame).

    Several products with equal shapes run as one, stacked along the batch, where
    :meth:`stacks` says that is faster (one set of ops instead of one per product; see
    :func:`stack_products`). Being parameter-free, any stream's module can compute every stream's
    products. The stack and the split happen inside the module, so profilers and precision rules
    that match its scope (``/attend``) see them."""

    def stacks(self, queries: list[Tensor], values: list[Tensor]) -> bool:
        return False  # no measurement says stacking pays

    def product(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, query: Products, key: Products, value: Products) -> Tensor | list[Tensor]:
        if isinstance(query, Tensor):
            assert isinstance(key, Tensor) and isinstance(value, Tensor)
            return self.product(query, key, value)
        qs, ks, vs = list(query), list(key), list(value)
        if not len(qs) == len(ks) == len(vs):
            raise ValueError(f"attention: {len(qs)} queries, {len(ks)} keys, {len(vs)} values")
        if len(qs) == 1 or not _stackable(qs, ks, vs) or not self.stacks(qs, vs):
            return [self.product(q, k, v) for q, k, v in zip(qs, ks, vs)]
        out = self.product(torch.cat(qs), torch.cat(ks), torch.cat(vs))
        return list(out.split(int(qs[0].shape[0])))

    def macs(self, query: Products, value: Products) -> int:
        if isinstance(query, Tensor):
            assert isinstance(value, Tensor)
            return self.product_macs(query, value)
        return sum(self.product_macs(q, v) for q, v in zip(query, value))

    def product_macs(self, query: Tensor, value: Tensor) -> int:
        raise NotImplementedError


# Stacked values up to which several ILA products run as one (6 products, both forms per round,
# bench/ila_stack.py, docs/ila_runtimes.md). Graph export: the default model's 12x24 map with 64
# channels (0.44 MB) in ONNX Runtime 0.75 -> 0.56 ms at 2 threads, equal at 1; 33x65 with 128
# channels (6.6 MB) 5.2 -> 7.3 ms, the stacked blocks no longer stay in cache.
STACK_MAX_BYTES = 1 << 20
# Eager CPU, in-place loop only (its 2 x L^2 ops per product dominate): 33x65, 128 channels,
# 10.3 -> 5.4 ms at 2 threads, 14 -> 11 at 1; 33x65, 512 channels (26 MB) 19 -> 31 ms. The eager
# tiled form (small maps) never stacks: stacked it swung between 0.8 and 2.6 ms from run to run
# (12x24, 6 products; one by one 1.0-1.2). bench/ila_stack.py.
EAGER_STACK_MAX_BYTES = 8 << 20


def stack_products(query: Tensor, value: Tensor, n: int, window: int) -> bool:
    """Whether ``n`` local-attention products shaped like (``query``, ``value``) run faster as
    one batched product: graph export and CPU inference by the measured limits above; training
    (autograd) and CUDA keep one call per product (not measured)."""
    stacked = n * value.numel() * value.element_size()
    if torch.onnx.is_in_onnx_export():
        return stacked <= STACK_MAX_BYTES
    if torch.is_grad_enabled() or _tracing() or value.device.type != "cpu":
        return False
    loop = _gathered_bytes(query, value, window) > EAGER_TILES_MAX_BYTES
    return loop and stacked <= EAGER_STACK_MAX_BYTES


def _stackable(*groups: list[Tensor]) -> bool:
    """Whether each group's tensors can be concatenated along the batch: same shape (so one
    product's windows never see another's pixels), dtype and device."""
    # int(): under the ONNX tracer sizes are tensors (compared by identity)
    return all(len({(tuple(int(d) for d in t.shape), t.dtype, t.device) for t in g}) == 1 for g in groups)


class LocalAttention(_AttentionProduct):
    """ILA's local-window product; a leaf module so FLOP counters can hook it."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def product(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return local_attention(query, key, value, self.window)

    def stacks(self, queries: list[Tensor], values: list[Tensor]) -> bool:
        return stack_products(queries[0], values[0], len(values), self.window)

    def product_macs(self, query: Tensor, value: Tensor) -> int:
        b, ck, h, w = query.shape
        return b * h * w * self.window ** 2 * (ck + value.shape[1])


class GlobalAttention(_AttentionProduct):
    def product(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        return global_attention(query, key, value)

    def product_macs(self, query: Tensor, value: Tensor) -> int:
        b, ck, h, w = query.shape
        return b * (h * w) ** 2 * (ck + value.shape[1])


class InterFrameAttention(nn.Module):
    """The embedding conv ``h`` plus an attention product; one per task (or one shared).

    ``embed`` is run once per frame and its result cached in the stream state, so propagating
    from a past frame costs no second convolution.
    """

    def __init__(self, channels: int, key_reduction: int, attention: nn.Module) -> None:
        super().__init__()
        self.h = nn.Conv2d(channels, max(1, channels // key_reduction), 3, padding=1)
        self.attend = attention

    def embed(self, features: Tensor) -> Tensor:
        return self.h(features)

    def forward(self, query_emb: Tensor, key_emb: Tensor, value: Tensor) -> Tensor:
        return self.attend(query_emb, key_emb, value)

    def batches_with(self, other: InterFrameAttention) -> bool:
        """Whether ``other``'s products can run in one call of this stream's ``attend``."""
        a, b = self.attend, other.attend
        return type(a) is type(b) and getattr(a, "window", None) == getattr(b, "window", None)


@PROPAGATION.register("ila")
def build_ila(channels: int, key_reduction: int = 16, window: int = 5) -> InterFrameAttention:
    return InterFrameAttention(channels, key_reduction, LocalAttention(window))


@PROPAGATION.register("global")
def build_global(channels: int, key_reduction: int = 16, window: int = 5) -> InterFrameAttention:
    del window
    return InterFrameAttention(channels, key_reduction, GlobalAttention())


@PROPAGATION.register("none")
def build_none(channels: int, key_reduction: int = 16, window: int = 5) -> None:
    """No propagation: each frame is decoded from its own features only."""
    return None


@PROPAGATION.register("reuse")
def build_reuse(channels: int, key_reduction: int = 16, window: int = 5) -> None:
    """Non-keyframes reuse the last keyframe's features (no fast encoder, no attention)."""
    return None
