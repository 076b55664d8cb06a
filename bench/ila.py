"""ILA implementations: time and peak memory in PyTorch, and the export forms in ONNX Runtime.

    python bench/ila.py [--size 1024x2048] [--window 5] [--repeats 3]      # PyTorch, memory
    python bench/ila.py --onnx [--threads 1] [--cpu-time]                 # export forms, ORT

Default mode compares the F.unfold reference and the shift-and-accumulate loop (eager, and
channels_last under torch.compile): feature map = input / 8 with 512 channels and 32-channel keys.

``--onnx`` exports each candidate form of one attention call and runs it in ONNX Runtime at the
two shapes of the latency benchmark (256x512 input, output stride 8: a 33x65 map, ``--map``):
``bench/small.yaml`` (8-channel keys, 128-channel values) and D101-18 (32 and 512), next to
PyTorch's in-place loop. The adopted form is ``model/ila.py::_local_attention_tiles`` (tile
``auto`` = ``tile_for``); the others live here only.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.model.ila import (  # noqa: E402
    _OUTSIDE,
    _local_attention_functional,
    _local_attention_inplace,
    _local_attention_tiles,
    _tile_constants,
    local_attention,
    reference_local_attention,
    tile_for,
)

CLOCK = [time.perf_counter]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


STAT = ["median"]  # --stat min: on a loaded machine the run that waited least


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    fn()  # warm-up (and compile)
    ts = []
    for _ in range(repeats):
        t = CLOCK[0]()
        fn()
        ts.append(CLOCK[0]() - t)
    return min(ts) if STAT[0] == "min" else statistics.median(ts)


# -- candidate export forms (not adopted; kept to re-measure) -------------------------------------
def _window_index(h: int, w: int, window: int) -> tuple[Tensor, Tensor]:
    """Flat index of every pixel's LxL window in the padded map, and whether it is in the frame."""
    r, n, wp = window // 2, window * window, w + window - 1
    off = torch.arange(window)
    idx = ((torch.arange(h).view(h, 1, 1) + off.repeat_interleave(window).view(1, 1, n)) * wp
           + torch.arange(w).view(1, w, 1) + off.repeat(window).view(1, 1, n)).reshape(-1)
    inside = F.pad(torch.ones(1, 1, h, w), (r, r, r, r)).reshape(-1).index_select(0, idx).view(h * w, n, 1)
    return idx, inside


def _windows(x: Tensor, idx: Tensor, window: int) -> Tensor:
    """(B, C, H, W) -> (B, H*W, L^2, C): each pixel's LxL window, zeros outside the frame."""
    r = window // 2
    b, ch, h, w = x.shape
    rows = F.pad(x, (r, r, r, r)).flatten(2).transpose(1, 2)
    return rows.index_select(1, idx).view(b, h * w, window * window, ch)


def rows_form(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """The previous export form: each pixel's LxL window gathered as rows (L^2 copies of the
    values), logits and weighted sum as B*H*W batched (1 x L^2) MatMuls."""
    b, ck, h, w = query.shape
    c, n, hw = value.shape[1], window * window, h * w
    idx, inside = _window_index(h, w, window)
    q = query.flatten(2).transpose(1, 2).reshape(b * hw, ck, 1)
    keys = _windows(key, idx, window).reshape(b * hw, n, ck)
    logits = torch.matmul(keys, q).view(b, hw, n, 1) + (1.0 - inside) * _OUTSIDE
    attn = torch.softmax(logits, dim=2).view(b * hw, 1, n)
    values = _windows(value, idx, window).reshape(b * hw, n, c)
    return torch.matmul(attn, values).view(b, hw, c).transpose(1, 2).reshape(b, c, h, w)


def einsum_form(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Same windows as ``rows_form``, products as ONNX Einsum."""
    b, _, h, w = query.shape
    c, n, hw = value.shape[1], window * window, h * w
    idx, inside = _window_index(h, w, window)
    q = query.flatten(2).transpose(1, 2)
    logits = (torch.einsum("bpc,bpnc->bpn", q, _windows(key, idx, window))
              + (1.0 - inside.view(1, hw, n)) * _OUTSIDE)
    attn = torch.softmax(logits, dim=2)
    return torch.einsum("bpn,bpnc->bcp", attn, _windows(value, idx, window)).reshape(b, c, h, w)


def grouped_conv_form(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Windows unfolded by a depthwise (groups = C) conv with one-hot LxL kernels, Mul, ReduceSum."""
    b, _, h, w = query.shape
    n = window * window
    eye = torch.eye(n).view(n, 1, window, window)

    def unfold(x: Tensor) -> Tensor:  # (B, C', H, W) -> (B, C', L^2, H, W), zeros outside
        ch = x.shape[1]
        return F.conv2d(x, eye.repeat(ch, 1, 1, 1), padding=window // 2, groups=ch).view(b, ch, n, h, w)

    inside = unfold(torch.ones(1, 1, h, w))
    logits = (query.unsqueeze(2) * unfold(key)).sum(1, keepdim=True) + (1.0 - inside) * _OUTSIDE
    attn = torch.softmax(logits, dim=2)
    return (attn * unfold(value)).sum(2)


def padded_tiles_form(query: Tensor, key: Tensor, value: Tensor, window: int,
                      tile: tuple[int, int] = (4, 8)) -> Tensor:
    """The previous tiled export form: the same halo gather and MatMuls, but the query padded to
    whole tiles and put into tile order by a 6-D permute, the result back by two transposes, and
    cropped by slices when the tile does not divide the map."""
    b, ck, h, w = (int(v) for v in query.shape)
    c = value.shape[1]
    th, tw = tile
    ny, nx = (h + th - 1) // th, (w + tw - 1) // tw
    t = _tile_constants(h, w, window, tile)
    n_in = t.bias.shape[2]

    def halo(x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2).index_select(1, t.idx).view(b, ny * nx, n_in, x.shape[1])

    if h % th or w % tw:
        query = F.pad(query, (0, nx * tw - w, 0, ny * th - h))
    q = query.reshape(b, ck, ny, th, nx, tw).permute(0, 2, 4, 3, 5, 1).reshape(b, ny * nx, th * tw, ck)
    attn = torch.softmax(torch.matmul(q, halo(key).transpose(2, 3)) + t.bias, dim=-1)
    out = torch.matmul(attn, halo(value))
    out = out.view(b, ny, nx, th, tw * c).transpose(2, 3).reshape(b, ny * th * nx * tw, c)
    out = out.transpose(1, 2).reshape(b, c, ny * th, nx * tw)
    return out[:, :, :h, :w] if h % th or w % tw else out


def dense_masked_form(query: Tensor, key: Tensor, value: Tensor, window: int) -> Tensor:
    """Every pixel against every pixel (HW x HW logits) with a constant -1e4 outside its LxL
    window: no gathers or transposes at all (8 nodes), but HW / L^2 times the multiply-adds."""
    b, _, h, w = (int(v) for v in query.shape)
    r = window // 2
    y, x = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    inside = ((y[:, None] - y[None]).abs() <= r) & ((x[:, None] - x[None]).abs() <= r)
    bias = torch.where(inside, 0.0, _OUTSIDE)
    attn = torch.softmax(torch.matmul(query.flatten(2).transpose(1, 2), key.flatten(2)) + bias, dim=-1)
    return torch.matmul(value.flatten(2), attn.transpose(1, 2)).view(b, value.shape[1], h, w)


def mha_graph(path: Path, ck: int, c: int, h: int, w: int, window: int) -> None:
    """The tiled form written by hand with ONNX Runtime's fused ``com.microsoft.MultiHeadAttention``
    (one head, scale 1, the window mask as its attention bias) for logits + bias + softmax +
    weighted sum; batch 1. CPU ONNX Runtime only (TensorRT has no such op)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t = _tile_constants(h, w, window, tile_for(h, w))
    tiles, tt, n_in = t.bias.shape
    consts = {"idx": t.idx.view(tiles, n_in), "qidx": t.q_idx.view(tiles, tt), "oidx": t.out_idx.view(h, w),
              "flat": torch.tensor([1, -1, h * w]), "outs": torch.tensor([tiles * tt, c]),
              "ax0": torch.tensor([0])}
    inits = [numpy_helper.from_array(v.numpy().astype(np.int64), k) for k, v in consts.items()]
    inits.append(numpy_helper.from_array(t.bias.view(tiles, 1, tt, n_in).numpy().astype(np.float32), "bias"))
    nodes = []
    for x in "qkv":  # (1, C', H, W) -> (HW, C')
        nodes += [helper.make_node("Reshape", [x, "flat"], [x + "1"]),
                  helper.make_node("Transpose", [x + "1"], [x + "2"], perm=[0, 2, 1]),
                  helper.make_node("Squeeze", [x + "2", "ax0"], [x + "3"])]
    nodes += [helper.make_node("Gather", ["q3", "qidx"], ["qt"]),
              helper.make_node("Gather", ["k3", "idx"], ["kt"]),
              helper.make_node("Gather", ["v3", "idx"], ["vt"]),
              helper.make_node("MultiHeadAttention", ["qt", "kt", "vt", "", "", "bias"], ["o"],
                               domain="com.microsoft", num_heads=1, scale=1.0),
              helper.make_node("Reshape", ["o", "outs"], ["o1"]),
              helper.make_node("Gather", ["o1", "oidx"], ["o2"]),
              helper.make_node("Transpose", ["o2"], ["o3"], perm=[2, 0, 1]),
              helper.make_node("Unsqueeze", ["o3", "ax0"], ["out"])]

    def io(name: str, ch: int) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, ch, h, w])

    g = helper.make_graph(nodes, "ila", [io("q", ck), io("k", ck), io("v", c)], [io("out", c)], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(g, opset_imports=opsets), str(path))


def _export_session(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], threads: int):  # noqa: ANN202
    import onnx

    from mtl_perception.backends.ort_backend import session_for

    class Wrap(torch.nn.Module):
        def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            return fn(q, k, v)

    from mtl_perception.backends.export import drop_empty_trailing_inputs

    d = tempfile.mkdtemp()
    path = Path(d) / "ila.onnx"
    builder = getattr(fn, "onnx_builder", None)
    if builder is not None:  # a hand-written graph (mha_graph)
        q, v = inputs[0], inputs[2]
        builder(path, q.shape[1], v.shape[1], q.shape[2], q.shape[3])
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Wrap(), inputs, str(path), opset_version=17, dynamo=False,
                              input_names=["q", "k", "v"])
        drop_empty_trailing_inputs(path)  # as export_step does
    return session_for(path, threads), len(onnx.load(str(path)).graph.node)


def onnx_table(window: int, repeats: int, threads: int, tiles: list[tuple[int, int] | None],
               fmap: tuple[int, int] = (33, 65), only: list[str] | None = None,
               shapes: list[tuple[int, int]] | None = None, calls: int = 1) -> None:
    """``calls``: ONNX Runtime runs per timed sample (6 = the default model's attention products
    per non-keyframe: 3 tasks x 2 sources), so a cell is the ILA time of one frame."""
    mha = functools.partial(lambda *a, **k: None)
    mha.onnx_builder = functools.partial(  # type: ignore[attr-defined]
        lambda p, ck, c, h, w: mha_graph(p, ck, c, h, w, window))
    forms: dict[str, Callable[..., Tensor]] = {
        "dense masked": functools.partial(dense_masked_form, window=window),
        "MultiHeadAttention (contrib)": mha,
        "shift loop (functional)": functools.partial(_local_attention_functional, window=window),
        "rows: window gather + MatMul": functools.partial(rows_form, window=window),
        "rows + Einsum": functools.partial(einsum_form, window=window),
        "grouped conv unfold": functools.partial(grouped_conv_form, window=window),
    }
    for t in tiles:
        if t is not None:
            forms[f"padded tiles {t[0]}x{t[1]} (previous)"] = functools.partial(
                padded_tiles_form, window=window, tile=t)
        forms[f"tiles {'auto' if t is None else f'{t[0]}x{t[1]}'}"] = functools.partial(
            _local_attention_tiles, window=window, tile=t)
    print(f"{calls} ILA call(s) per sample, L = {window}, features {fmap[0]}x{fmap[1]}, {threads} thread(s), "
          f"{'CPU' if CLOCK[0] is time.process_time else 'wall'} ms, {STAT[0]} of {repeats}")
    shapes = shapes or [(8, 128), (32, 512)]
    cols = " ".join(f"{f'{ck}/{c} ch':>12}" for ck, c in shapes)
    print(f"{'form':<32} {'nodes':>6} {cols} {'max err':>9}")
    g = torch.Generator().manual_seed(0)
    data = [tuple(torch.randn(1, ch, *fmap, generator=g) for ch in (ck, ck, c)) for ck, c in shapes]
    ref = [reference_local_attention(*d, window) for d in data]
    with torch.inference_mode():
        cells = [timed(lambda d=d: _local_attention_inplace(*d, window), repeats) * 1e3 for d in data]
    print(f"{'PyTorch eager in-place loop':<32} {'-':>6} " + " ".join(f"{x * calls:>12.2f}" for x in cells)
          + f" {'-':>9}")
    # Every session is built first and the forms are timed round-robin, one run each per round:
    # on a machine other jobs load, all forms then see the same load.
    runs: dict[tuple[str, int], tuple[Any, dict, list[float]]] = {}
    info: dict[str, tuple[int, float]] = {}
    for name, fn in forms.items():
        if only and not any(o in name for o in only):
            continue
        err, nodes = 0.0, 0
        for i, (d, r) in enumerate(zip(data, ref)):
            sess, nodes = _export_session(fn, d, threads)
            feed = {"q": d[0].numpy(), "k": d[1].numpy(), "v": d[2].numpy()}
            err = max(err, float((torch.from_numpy(sess.run(None, feed)[0]) - r).abs().max()))
            runs[name, i] = (sess, feed, [])
        info[name] = (nodes, err)
    for _ in range(repeats):
        for sess, feed, ts in runs.values():
            t = CLOCK[0]()
            for _ in range(calls):
                sess.run(None, feed)
            ts.append(CLOCK[0]() - t)
    pick = min if STAT[0] == "min" else statistics.median
    for name, (nodes, err) in info.items():
        cells = [pick(runs[name, i][2]) * 1e3 for i in range(len(data))]
        cols = " ".join(f"{x:>12.2f}" for x in cells)
        print(f"{name:<32} {nodes:>6} {cols} {err:>9.1e}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x2048")
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--onnx", action="store_true", help="export forms in ONNX Runtime (see above)")
    ap.add_argument("--threads", type=int, default=0, help="threads (0: torch default)")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    ap.add_argument("--tiles", nargs="+", default=["auto", "4x8", "3x13", "8x8"],
                    help="tile sizes (--onnx; auto: model/ila.py's tile_for)")
    ap.add_argument("--map", default="33x65", help="feature map HxW (--onnx; 256x512 input at stride 8)")
    ap.add_argument("--forms", nargs="+", default=None, help="only forms whose name contains one of these")
    ap.add_argument("--channels", nargs="+", default=["8/128", "32/512"],
                    help="--onnx: key/value channels per column (the default model: 4/64 at --map 12x24)")
    ap.add_argument("--calls", type=int, default=1, help="--onnx: attention calls per timed sample")
    ap.add_argument("--stat", choices=("median", "min"), default="median")
    ap.add_argument("--impl", choices=["unfold", "shift", "compiled"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cpu_time:
        CLOCK[0] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    STAT[0] = args.stat
    if args.onnx:
        tiles = [None if t == "auto" else tuple(int(v) for v in t.split("x")) for t in args.tiles]
        fmap = tuple(int(v) for v in args.map.split("x"))
        shapes = [tuple(int(v) for v in x.split("/")) for x in args.channels]
        onnx_table(args.window, max(args.repeats, 5), torch.get_num_threads(), tiles, fmap,  # type: ignore[arg-type]
                   args.forms, shapes, args.calls)  # type: ignore[arg-type]
        return
    h, w = (int(v) // 8 for v in args.size.lower().split("x"))
    if args.impl is None:
        # each implementation in its own process so peak memory is its own
        import subprocess

        print(f"ILA, input {args.size} (features 512x{h}x{w}, keys 32), L = {args.window}, "
              f"{torch.get_num_threads()} threads")
        print(f"{'implementation':<28} {'median ms':>10} {'peak RSS MB':>12}")
        for impl in ("unfold", "shift", "compiled"):
            out = subprocess.run([sys.executable, __file__, "--size", args.size, "--window", str(args.window),
                                  "--repeats", str(args.repeats), "--impl", impl],
                                 capture_output=True, text=True)
            print(out.stdout.strip() or f"{impl:<28} failed: {out.stderr.strip().splitlines()[-1:]}")
        return
    torch.manual_seed(0)
    q, k = torch.randn(1, 32, h, w), torch.randn(1, 32, h, w)
    v = torch.randn(1, 512, h, w)
    base = peak_rss_mb()
    with torch.no_grad():
        if args.impl == "unfold":
            ms = timed(lambda: reference_local_attention(q, k, v, args.window), args.repeats)
            label = "F.unfold reference"
        elif args.impl == "shift":
            ms = timed(lambda: local_attention(q, k, v, args.window), args.repeats)
            label = "shift loop, eager, in place"
        else:
            cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
            fn = torch.compile(lambda a, b, c: local_attention(a, b, c, args.window))
            ms = timed(lambda: fn(*cl), args.repeats)
            label = "shift loop, compiled, NHWC"
    print(f"{label:<28} {ms * 1e3:>10.1f} {peak_rss_mb() - base:>12.0f}")


if __name__ == "__main__":
    main()
