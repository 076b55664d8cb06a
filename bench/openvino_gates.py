"""OpenVINO executing the INT8 QDQ graphs of each rung, beside ONNX Runtime: the labelled gates
and the time per frame. Evaluation only (OpenVINO is not a backend of the node).

    pip install openvino   # not a dependency of the package
    python bench/openvino_gates.py --checkpoint models/mila_street_lite.pt --images runs/street/val

The clips are cut as ``mtl-perception-quantize --images DIR --clip-len 8 --max-frames 128`` does
(a quarter held out for the gates, the rest calibrates; the INT8 graphs come from the same cache).
Times: ``bench/latency.py``'s stream timing (``time_stream``), ``--repeats`` streams of one keyframe and 4
non-keyframes, medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import ms, on_openvino, time_stream  # noqa: E402

from mtl_perception.backends.base import Backend  # noqa: E402
from mtl_perception.backends.calibration import labelled_clips_from_images, split_clips  # noqa: E402
from mtl_perception.backends.cpu_choice import average_ms  # noqa: E402
from mtl_perception.backends.export import default_cache_dir, load_model_arg  # noqa: E402
from mtl_perception.backends.gates import measure_against, stream_outputs  # noqa: E402
from mtl_perception.backends.ort_backend import OrtBackend  # noqa: E402
from mtl_perception.backends.quantize import RECIPES, ensure_int8  # noqa: E402


def stream_times(b: Backend, size: tuple[int, int], repeats: int) -> str:
    """``latency.time_stream``'s medians: ``repeats`` streams of a keyframe and 4 non-keyframes."""
    k, nk = (ms(t) for t in time_stream(b, size, repeats, 4))  # ms per frame
    avg = average_ms({"key_ms": k, "nonkey_ms": nk}, 5)
    return f"key {k:.1f} / non-key {nk:.1f} / average K=5 {avg:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="models/mila_street_lite.pt")
    ap.add_argument("--images", required=True, help="an mtl-data generate folder (labelled clips)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rungs", type=int, default=len(RECIPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args()
    model = load_model_arg(a.checkpoint, None)
    size = tuple(model.cfg.input_size)
    clips, lab, _ = labelled_clips_from_images(a.images, size, 8, 128)  # type: ignore[arg-type]
    cal, held = split_clips(clips)
    labels = split_clips(lab)[1] if lab is not None else None
    cache = Path(a.cache_dir) if a.cache_dir else default_cache_dir()
    ref = OrtBackend(model, cache_dir=cache, threads=a.threads)
    ref_outs = [stream_outputs(ref, c, 5) for c in held]
    print(f"ONNX Runtime FP32: {stream_times(ref, size, a.repeats)}", flush=True)
    ov32 = on_openvino(OrtBackend(model, cache_dir=cache, threads=a.threads), a.threads)
    print(f"OpenVINO FP32:     {stream_times(ov32, size, a.repeats)}", flush=True)
    for i, st in enumerate(RECIPES[:a.rungs]):
        res = ensure_int8(model, cal, held, cache, settings=st, threads=a.threads, labels=labels)
        assert res.quantized is not None
        q = res.quantized
        pair = [OrtBackend(model, input_size=size, threads=a.threads, artifacts=q) for _ in range(2)]
        for name, b in (("ONNX Runtime", pair[0]), ("OpenVINO", on_openvino(pair[1], a.threads))):
            m = measure_against(ref_outs, b, held, 5, labels)
            print(f"rung {i + 1} INT8, {name}: {m.summary()}; {stream_times(b, size, a.repeats)}", flush=True)


if __name__ == "__main__":
    main()
