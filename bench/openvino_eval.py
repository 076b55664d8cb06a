"""OpenVINO vs ONNX Runtime on the same exported step graphs (FP32, and INT8 QDQ when cached).

    python bench/openvino_eval.py --model-config bench/small.yaml --cache-dir /tmp/cache
    python bench/openvino_eval.py --checkpoint models/mila_tiny_synthetic.pt --threads 1 --cpu-time

For each graph (keyframe, non-keyframe) and runtime: median time of one run on real slot inputs
(``export.example_inputs``) and the largest output difference from ONNX Runtime FP32. OpenVINO's
CPU plugin defaults to BF16 inference on CPUs with AVX512-BF16/AMX, so FP32 is requested
explicitly and BF16 is a separate row. The INT8 rows need ``mtl-perception-quantize`` (or
``bench/latency.py --backends onnxruntime-int8``) to have left a gate-passing pair in the cache.
Evaluation only: OpenVINO is not a backend of the node (docs/cpu_inference.md says why).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.backends.export import (  # noqa: E402
    ensure_onnx,
    example_inputs,
    graph_spec,
    load_model_arg,
    model_hash,
)
from mtl_perception.backends.quantize import cached_int8  # noqa: E402


def ort_runner(path: Path, threads: int):  # noqa: ANN201 - a closure
    from mtl_perception.backends.ort_backend import session_for

    s = session_for(path, threads)
    names = {i.name for i in s.get_inputs()}
    outs = [o.name for o in s.get_outputs()]
    return lambda feed: dict(zip(outs, s.run(outs, {k: v for k, v in feed.items() if k in names})))


def ov_runner(path: Path, threads: int, precision: str):  # noqa: ANN201
    import openvino as ov

    core = ov.Core()
    cm = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                               "INFERENCE_PRECISION_HINT": precision,
                                               "PERFORMANCE_HINT": "LATENCY"})
    req = cm.create_infer_request()
    names = {i.get_any_name() for i in cm.inputs}
    outs = [o.get_any_name() for o in cm.outputs]

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = req.infer({k: v for k, v in feed.items() if k in names})
        return {n: np.asarray(res[o]) for n, o in zip(outs, cm.outputs)}

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint")
    g.add_argument("--model-config")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--cpu-time", action="store_true", help="process CPU seconds instead of wall time")
    args = p.parse_args(argv)
    try:
        import openvino as ov
    except ImportError:
        print("openvino is not installed (pip install openvino)")
        return 1
    clock = time.process_time if args.cpu_time else time.perf_counter
    model = load_model_arg(args.checkpoint, args.model_config)
    mhash = model_hash(model)
    int8 = cached_int8(model, args.cache_dir)
    if int8 is None:  # timing only: a pair that missed the gates still shows what INT8 costs
        stems = {k: ensure_onnx(model, k, args.cache_dir, mhash=mhash).path.stem for k in (True, False)}
        found = {k: sorted(Path(args.cache_dir).glob(stem + "_int8_*.onnx"), key=lambda p: p.stat().st_mtime)
                 for k, stem in stems.items()}  # the newest pair
        if found[True] and found[False]:
            print("# INT8 rows: a pair that did NOT pass the accuracy gates (speed only)")
            int8 = {k: type("A", (), {"path": v[-1]})() for k, v in found.items()}
    print(f"# openvino {ov.__version__}, {args.threads} threads, {'CPU' if args.cpu_time else 'wall'} time, "
          f"{tuple(model.cfg.input_size)}")
    rows = [f"{'graph':<7} {'runtime':<22} {'ms p50':>8} {'max |diff| vs ORT FP32':>24}"]
    for key in (True, False):
        art = ensure_onnx(model, key, args.cache_dir, mhash=mhash)
        spec = graph_spec(model, key)
        feed = {n: t.numpy() for n, t in zip(spec.input_names, example_inputs(model, key))}
        runners = {"onnxruntime fp32": ort_runner(art.path, args.threads),
                   "openvino fp32": ov_runner(art.path, args.threads, "f32"),
                   "openvino bf16": ov_runner(art.path, args.threads, "bf16")}
        if int8 is not None:
            runners["onnxruntime int8"] = ort_runner(int8[key].path, args.threads)
            runners["openvino int8 (QDQ)"] = ov_runner(int8[key].path, args.threads, "f32")
        ref = runners["onnxruntime fp32"](feed)
        for name, run in runners.items():
            out = run(feed)
            diff = max(float(np.abs(out[t] - ref[t]).max()) for t in spec.tasks)
            run(feed)
            ts = []
            for _ in range(args.iters):
                t0 = clock()
                run(feed)
                ts.append(clock() - t0)
            rows.append(f"{'key' if key else 'nonkey':<7} {name:<22} {1e3 * np.median(ts):8.1f} {diff:24.2e}")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
