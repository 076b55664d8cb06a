"""Where the INT8 error of a model is: quantize chosen parts of the two step graphs, gate each.

Each candidate names what is quantized in the keyframe graph and in the non-keyframe graph
(``KEY@NONKEY``; one part alone means both graphs):

- ``fp32``: the graph stays FP32 (e.g. ``int8@fp32``: only the keyframe graph quantized);
- ``int8``: ``quantize.QuantSettings()``'s default (head_out float);
- ``float:G1,G2``: the default plus these ``quantize.FLOAT_GROUPS`` kept float (an item that
  starts with ``^`` is a node-name regex instead of a group name);
- ``only:REGEX``: only the Conv nodes whose name matches REGEX are quantized (one group's
  sensitivity: the rest of the graph is exact).

The calibration inputs are recorded once (the FP32 stream over the calibration clips, as
``mtl-perception-quantize`` does), the activation ranges computed once per graph and method
(ONNX Runtime's ``calibration_cache_path``) and FP32 streamed once over the held-out clips, so a
candidate costs one ``QDQQuantizer`` pass per quantized graph plus one gated stream.

    python bench/int8_sweep.py --checkpoint models/mila_street_lite.pt --images /tmp/q_val \
        --clip-len 8 --max-frames 64 int8 int8@fp32 fp32@int8 float:fast "only:^/fast/"

``--time 1 2`` also times each candidate (``bench/latency.py``'s stream: keyframes each followed by
``--nonkey`` non-keyframes, medians per frame type; ``--cpu-time`` for process CPU time) with
that many ORT threads; ``--no-gates`` times only (run it under the team's measurement lock).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/latency.py's timing loop

from mtl_perception.backends.calibration import labelled_clips_from_images, split_clips  # noqa: E402
from mtl_perception.backends.export import OnnxArtifact, file_sha256, load_model_arg  # noqa: E402
from mtl_perception.backends.gates import Gates, measure_against, stream_outputs  # noqa: E402
from mtl_perception.backends.ort_backend import OrtBackend  # noqa: E402
from mtl_perception.backends.quantize import (  # noqa: E402
    QuantSettings,
    _float_nodes,
    preprocess,
    quantize_preprocessed,
    record_feeds,
)


def conv_names(path: Path) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]


def excluded(pre: Path, part: str) -> list[str] | None:
    """Node names kept float for one graph's part of a candidate; None: the graph stays FP32."""
    if part == "fp32":
        return None
    if part.startswith("only:"):
        pat = re.compile(part[5:])
        return [n for n in conv_names(pre) if not pat.search(n)]
    groups = list(QuantSettings().keep_float)
    if part.startswith("float:"):
        groups += [g for g in part[6:].split(",") if g]
    elif part != "int8":
        raise SystemExit(f"error: candidate part {part!r}: fp32, int8, float:GROUPS or only:REGEX")
    regexes = [re.compile(g) for g in groups if g.startswith("^")]
    try:  # group names: the same selection mtl-perception-quantize makes (quantize._float_nodes)
        named = _float_nodes(pre, [g for g in groups if not g.startswith("^")])
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    import onnx

    by_regex = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node
                if any(p.search(n.name) for p in regexes)]
    return sorted(set(named) | set(by_regex))


def timed(model: Any, arts: dict[bool, OnnxArtifact], size: tuple[int, ...], threads: int,
          a: argparse.Namespace) -> tuple[float, float]:
    """Median key and non-key ms of one candidate's pair (bench/latency.py's stream)."""
    import latency  # type: ignore[import-not-found]  # bench/latency.py

    if a.cpu_time:
        latency.CLOCK[0] = time.process_time
    latency.STAT[0] = a.stat
    b = OrtBackend(model, input_size=size, threads=threads, artifacts=arts)  # type: ignore[arg-type]
    tk, tn = latency.time_stream(b, size, a.keys, a.nonkey)  # type: ignore[arg-type]
    return latency.ms(tk), latency.ms(tn)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidates", nargs="+")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="mtl-data generate folder (labels: the issue's gate form)")
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=64)
    p.add_argument("--method", default="MinMax", choices=("MinMax", "Percentile", "Entropy"))
    p.add_argument("--op-types", default=",".join(QuantSettings().op_types),
                   help="op types quantized (Clip,Relu: the activation after a conv sets its range)")
    p.add_argument("--keyframe-interval", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/int8_sweep", help="graphs and calibration caches")
    p.add_argument("--json", help="append the rows here (JSON lines)")
    p.add_argument("--time", type=int, nargs="*", default=[],
                   help="ORT thread counts to time each candidate at")
    p.add_argument("--keys", type=int, default=4, help="keyframes timed (each + --nonkey non-keyframes)")
    p.add_argument("--nonkey", type=int, default=4)
    p.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    p.add_argument("--stat", choices=("median", "min"), default="median", help="per frame type")
    p.add_argument("--no-gates", action="store_true", help="time only")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model_arg(a.checkpoint, None)
    size = tuple(model.cfg.input_size)
    clips, labels, _ = labelled_clips_from_images(a.images, size, a.clip_len, a.max_frames)
    if labels is None:
        print(f"error: --images {a.images}: no labels (mtl-data generate output expected)", file=sys.stderr)
        return 2
    calib, held = split_clips(clips)
    held_labels = split_clips(labels)[1]
    k = a.keyframe_interval
    ref = OrtBackend(model, cache_dir=work, input_size=size, threads=a.threads)  # type: ignore[arg-type]
    fp32 = ref.artifacts
    ref_outs = [stream_outputs(ref, c, k) for c in held]
    feeds = record_feeds(ref, calib, k)
    tag = hashlib.sha256(json.dumps([fp32[True].sha256, fp32[False].sha256, a.images, a.clip_len,
                                     a.max_frames, k]).encode()).hexdigest()[:10]
    pre = {}
    for key, art in fp32.items():
        pre[key] = work / f"pre_{tag}_{'key' if key else 'nonkey'}.onnx"
        if not pre[key].exists():
            preprocess(art.path, pre[key])
    print(f"# {a.checkpoint} {size[0]}x{size[1]}, {sum(len(c) for c in calib)} calibration / "
          f"{sum(len(c) for c in held)} held-out frames of {a.images}, {a.method}, {a.op_types}, K = {k}",
          flush=True)
    print("candidate | agree % | mIoU drop | abs-rel +% | normals +deg | int8 convs key/nonkey | gates"
          + "".join(f" | {t} thr key / non-key / K=5 ms" for t in a.time))
    for cand in a.candidates:
        parts = cand.split("@") if "@" in cand else [cand, cand]
        arts: dict[bool, OnnxArtifact] = {}
        nq = []
        t0 = time.perf_counter()
        for key, part in zip((True, False), parts):
            ex = excluded(pre[key], part)
            if ex is None:
                arts[key] = fp32[key]
                nq.append("fp32")
                continue
            ops = a.op_types.split(",")
            blob = [tag, key, sorted(ex), a.method] + ([ops] if ops != ["Conv"] else [])
            h = hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:12]
            dst = work / f"q_{h}.onnx"
            if not dst.exists():
                cache = work / f"calib_{tag}_{'key' if key else 'nonkey'}_{a.method}_{'_'.join(ops)}.json"
                st = QuantSettings(method=a.method, op_types=tuple(ops))
                quantize_preprocessed(pre[key], dst, feeds[key], st, exclude=ex, calibration_cache=cache)
            arts[key] = OnnxArtifact(dst, fp32[key].spec, file_sha256(dst), fp32[key].model_sha256, size)  # type: ignore[arg-type]
            nq.append(str(len([n for n in conv_names(pre[key]) if n not in set(ex)])))
        row: dict[str, Any] = {"candidate": cand, "method": a.method, "op_types": a.op_types,
                               "int8_convs": nq}
        if not a.no_gates:
            test = OrtBackend(model, input_size=size, threads=a.threads, artifacts=arts)  # type: ignore[arg-type]
            meter = measure_against(ref_outs, test, held, k, held_labels)
            m, fails = meter.metrics(), meter.failures(Gates())
            row.update(agreement=100 * m["agreement"], miou_drop=100 * (m["miou_ref"] - m["miou_test"]),
                       absrel_up=100 * (m["absrel_test"] - m["absrel_ref"]),
                       deg_up=m["deg_test"] - m["deg_ref"],
                       passed=not fails, seconds=time.perf_counter() - t0)
            line = (f"{cand} | {row['agreement']:.2f} | {row['miou_drop']:+.2f} | {row['absrel_up']:+.2f} | "
                    f"{row['deg_up']:+.2f} | {'/'.join(nq)} | {'PASS' if not fails else 'miss'}")
        else:
            line = f"{cand} | - | - | - | - | {'/'.join(nq)} | -"
        for t in a.time:
            key_ms, nk_ms = timed(model, arts, size, t, a)
            row[f"ms_{t}t"] = [key_ms, nk_ms, (key_ms + (k - 1) * nk_ms) / k]
            line += " | {:.1f} / {:.1f} / {:.1f}".format(*row[f"ms_{t}t"])
        print(line, flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
