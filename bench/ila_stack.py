"""Several ILA products one by one vs stacked along the batch, in ONNX Runtime and eager PyTorch.

    python bench/ila_stack.py --threads 1 2                       # the three maps of the table
    python bench/ila_stack.py --maps 12x24:4/64 --products 6 --rounds 8

A non-keyframe of a task-specific multi-frame model runs tasks x slots products of one shape
(the default model: 3 x 2 on a 12x24 map, 4 key / 64 value channels). Each round times both forms
back to back (median of ``--repeats`` runs) so they see the same load; the table lists every
round's median in ms. ``ila.stack_products`` encodes the outcome (docs/ila_runtimes.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ila import timed  # noqa: E402  (bench/ila.py)

from mtl_perception.model.ila import LocalAttention  # noqa: E402


class _Forms(torch.nn.Module):
    """``n`` products from 3n inputs (q, k, v, q, k, v, ...), one by one or as one stacked call."""

    def __init__(self, n: int, stacked: bool, window: int) -> None:
        super().__init__()
        self.n, self.stacked, self.attend = n, stacked, LocalAttention(window)
        self.attend.stacks = lambda *_: stacked  # type: ignore[method-assign]

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.attend(list(xs[0::3]), list(xs[1::3]), list(xs[2::3])))


def run(spec: str, n: int, threads: int, rounds: int, repeats: int, window: int) -> dict[str, list[float]]:
    size, chans = spec.split(":")
    h, w = (int(v) for v in size.split("x"))
    ck, c = (int(v) for v in chans.split("/"))
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, ch, h, w, generator=g) for _ in range(n) for ch in (ck, ck, c)]
    torch.set_num_threads(threads)
    fns: dict[str, Callable[[], object]] = {}
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        for stacked in (False, True):
            tag = "stacked" if stacked else "one by one"
            model = _Forms(n, stacked, window).eval()
            path = str(Path(tmp) / f"{stacked}.onnx")
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, tuple(xs), path, opset_version=17, dynamo=False,
                                  input_names=[f"x{i}" for i in range(len(xs))])
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            feed = {f"x{i}": x.numpy() for i, x in enumerate(xs)}
            fns[f"ORT {tag}"] = lambda s=sess, f=feed: s.run(None, f)
            cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
            fns[f"eager {tag}"] = lambda m=model, a=cl: m(*a)
    out: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(rounds):
            for k, fn in fns.items():
                out[k].append(1000 * timed(fn, repeats))  # bench/ila.py's: median of the runs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", nargs="+", default=["12x24:4/64", "33x65:8/128", "33x65:32/512"],
                    help="HxW:key/value channels")
    ap.add_argument("--products", type=int, default=6)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--window", type=int, default=5)
    a = ap.parse_args()
    print(f"{a.products} products, window {a.window}; ms, median per round", flush=True)
    for spec in a.maps:
        for t in a.threads:
            res = run(spec, a.products, t, a.rounds, a.repeats, a.window)
            cells = "  ".join(f"{k}: {' '.join(f'{v:.2f}' for v in vs)}" for k, vs in res.items())
            print(f"{spec:<14} {t} thr  {cells}", flush=True)


if __name__ == "__main__":
    main()
