"""``mtl-perception-quantize``: calibrate INT8, gate INT8 and BF16, record the fastest CPU backend.

    mtl-perception-quantize --checkpoint models/mila_tiny_synthetic.pt --video street.mp4
    mtl-perception-quantize --checkpoint model.pt --bag run1/ --topic /camera/image_raw
    mtl-perception-quantize --checkpoint model.pt --images clips/   # e.g. `mtl-data generate` output

A quarter of the clips is held out for the gates. Gate form: when ``--images`` is ``mtl-data
generate`` output with labels, the issue's form (mIoU, depth abs-rel and normals angle against the
ground truth, argmax agreement against FP32); otherwise (or with ``--strict``) the strict form,
FP32's outputs as the labels. The output and the record say which. BF16 climbs its recipe ladder
(``bf16_backend.RECIPES``) and the record names the recipe that passed, which ``auto`` then runs.
Exit codes: 0 done (also when INT8 or BF16 fell back to FP32 for missing a gate: that is reported,
not an error), 1 runtime error, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .base import BackendError
from .bf16_backend import BY_NAME as BF16_BY_NAME
from .bf16_backend import RECIPES as BF16_RECIPES
from .calibration import clips_from_bag, clips_from_video, labelled_clips_from_images, split_clips
from .export import add_model_args, load_model_arg, model_hash
from .gates import Gates, measure
from .quantize import FLOAT_GROUPS, GRAPHS, RECIPES, QuantSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl-perception-quantize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="calibration video file (PyAV)")
    src.add_argument("--bag", help="calibration rosbag (folder or file); see --topic")
    src.add_argument("--images", help="folder of images; each sub-folder is one sequence")
    p.add_argument("--topic", default="/camera/image_raw", help="image topic of --bag")
    p.add_argument("--clip-len", type=int, default=10, help="frames per calibration clip")
    p.add_argument("--max-frames", type=int, default=60, help="frames read from the source")
    p.add_argument("--keyframe-interval", type=int, default=5, help="K of the calibration/gate streams")
    p.add_argument("--keep-float", default=None,
                   help=f"layer groups kept float, comma-separated, from {sorted(FLOAT_GROUPS)} (default: "
                   "the recipe ladder, fastest first: " + " | ".join(r.describe() for r in RECIPES) + ")")
    p.add_argument("--graphs", default=None, choices=("key", "nonkey", "key,nonkey"),
                   help="with --keep-float: the step graphs quantized (the other runs FP32; default both)")
    p.add_argument("--method", default="MinMax", choices=("MinMax", "Percentile", "Entropy"))
    p.add_argument("--bf16-recipe", default=None, choices=sorted(BF16_BY_NAME),
                   help="gate this BF16 recipe only (default: the ladder, fastest first: "
                   + " | ".join(r.name for r in BF16_RECIPES) + ")")
    p.add_argument("--strict", action="store_true",
                   help="gate with FP32's outputs as the labels even when --images has ground truth")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--force", action="store_true", help="re-quantize even if cached")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    keep = None if a.keep_float is None else tuple(g for g in a.keep_float.split(",") if g)
    if keep is not None and set(keep) - set(FLOAT_GROUPS):
        p.error(f"--keep-float: unknown group(s) {sorted(set(keep) - set(FLOAT_GROUPS))}")
    if a.graphs is not None and keep is None:
        p.error("--graphs needs --keep-float (the ladder's rungs name their own graphs)")
    if a.clip_len < 2 or a.max_frames < 4 or a.keyframe_interval < 1:
        p.error("--clip-len must be >= 2, --max-frames >= 4, --keyframe-interval >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(a, keep, tuple(a.graphs.split(",")) if a.graphs else GRAPHS)
    except (OSError, ValueError, BackendError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


STRICT = "strict (FP32 outputs as labels)"


def _read(a: argparse.Namespace, size: tuple[int, int], class_names: tuple[str, ...]
          ) -> tuple[list, list | None, str]:
    """(clips, labels or None, gate form) of the calibration source."""
    kw = {"clip_len": a.clip_len, "max_frames": a.max_frames}
    if a.video:
        return clips_from_video(a.video, size, **kw), None, STRICT
    if a.bag:
        return clips_from_bag(a.bag, a.topic, size, **kw), None, STRICT
    clips, labels, classes = labelled_clips_from_images(a.images, size, **kw)
    if labels is None:
        return clips, None, STRICT + ": no labels next to the images"
    if a.strict:
        return clips, None, STRICT + ": --strict"
    if class_names and classes and tuple(classes) != tuple(class_names):
        return clips, None, STRICT + f": the labels' classes {list(classes)} are not the model's"
    return clips, labels, "labels (mIoU, abs-rel, angle vs ground truth; agreement vs FP32)"


def _run(a: argparse.Namespace, keep: tuple[str, ...] | None, graphs: tuple[str, ...]) -> int:
    import dataclasses

    from .cpu_choice import REDUCED, time_backend, write_choice
    from .quantize import OrtInt8Backend, ensure_best_int8
    from .torch_backend import TorchBackend

    model = load_model_arg(a.checkpoint, a.model_config)
    recipes = [dataclasses.replace(r, method=a.method, keyframe_interval=a.keyframe_interval)
               for r in (RECIPES if keep is None else [QuantSettings(keep_float=keep, graphs=graphs)])]
    for size in a.size or [tuple(model.cfg.input_size)]:
        clips, labels, form = _read(a, size, tuple(model.cfg.class_names or ()))
        calib, held = split_clips(clips)
        # the same partition of the labels (split_clips only indexes and slices)
        held_labels = split_clips(labels)[1] if labels is not None else None  # type: ignore[arg-type]
        n_held = sum(len(c) for c in held)
        print(f"{size[0]}x{size[1]} gates: {form}, on {n_held} held-out frames")
        res = ensure_best_int8(model, calib, held, a.cache_dir, size, recipes, threads=a.threads,
                               force=a.force, labels=held_labels)
        print(f"{size[0]}x{size[1]} INT8: {res.precision} - {res.reason}")
        ref = TorchBackend(model, "cpu")
        cands: dict[str, dict[str, Any]] = {"torch-cpu": {"passed": True, "why": "FP32 reference"}}
        cands["torch-cpu"]["ms"] = 1e3 * time_backend(ref, held, a.keyframe_interval)
        if res.precision == "int8":
            b = OrtInt8Backend(model, input_size=size, threads=a.threads, result=res)
            cands["onnxruntime-int8"] = {"passed": True, "why": res.reason,
                                         "ms": 1e3 * time_backend(b, held, a.keyframe_interval)}
        else:
            cands["onnxruntime-int8"] = {"passed": False, "why": res.reason}
        cands["onnxruntime"] = _ort_fp32(model, ref, held, a.keyframe_interval, size, a.cache_dir, a.threads,
                                         held_labels)
        cands["torch-cpu-bf16"] = _bf16(model, held, a.keyframe_interval, size, held_labels, a.bf16_recipe)
        for c in cands.values():
            c["gate_form"] = form
        rec = write_choice(model_hash(model), size, a.cache_dir, cands, a.keyframe_interval)
        for label, c in cands.items():
            ms = f"{c['ms']:7.1f} ms" if c.get("ms") is not None else "      - ms"
            print(f"  {label:<18} {'pass' if c['passed'] else 'FAIL'} {ms}  {c['why'][:150]}")
        passing = [k for k, c in cands.items() if c["passed"] and k in REDUCED]
        # auto times the exact backends and these at the node's first start and runs the fastest
        print(f"  fastest here: {rec['choice']} ({rec['why']}; gates: {form.split(' (')[0]}); auto will also "
              f"time: {', '.join(passing) or 'no reduced-precision backend (none passed)'}")
    return 0


def _ort_fp32(model: Any, ref: Any, held: list, k: int, size: tuple[int, int],
              cache_dir: Any, threads: int, labels: list | None) -> dict[str, Any]:
    """ONNX Runtime FP32: the same gates against PyTorch FP32 (a broken export fails them), timed."""
    from .cpu_choice import time_backend
    from .ort_backend import OrtBackend

    if tuple(model.cfg.input_size) != tuple(size):
        return {"passed": False, "why": "measured at the model's input size only"}
    b = OrtBackend(model, cache_dir=cache_dir, threads=threads)
    meter = measure(ref, b, held, k, labels)
    fails = meter.failures(Gates())
    return {"passed": not fails, "why": "; ".join(fails) if fails else "FP32 graphs, gates met",
            "metrics": meter.metrics(), "ms": 1e3 * time_backend(b, held, k)}


def _bf16(model: Any, held: list, k: int, size: tuple[int, int], labels: list | None,
          recipe: str | None) -> dict[str, Any]:
    """PyTorch BF16: the recipe ladder (or the one named), the passing recipe timed and recorded."""
    from .bf16_backend import BY_NAME, TorchBf16Backend, best_bf16, native_bf16
    from .cpu_choice import time_backend

    ok, why = native_bf16()
    if not ok or tuple(model.cfg.input_size) != tuple(size):
        return {"passed": False, "why": why if not ok else "measured at the model's input size only"}
    res = best_bf16(model, held, k, labels, BF16_RECIPES if recipe is None else [BY_NAME[recipe]])
    tried = [{key: t[key] for key in ("recipe", "passed", "summary", "metrics")} for t in res.tried]
    if res.recipe is None:
        return {"passed": False, "why": res.reason, "tried": tried}
    b = TorchBf16Backend(model, recipe=res.recipe)
    try:
        ms = 1e3 * time_backend(b, held, k)
    finally:
        b.close()
    return {"passed": True, "why": f"{why}; {res.reason}", "recipe": res.recipe.name, "metrics": res.metrics,
            "tried": tried, "ms": ms}


if __name__ == "__main__":
    sys.exit(main())
