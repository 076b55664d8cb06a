"""INT8 static post-training quantization of the two step graphs (ONNX Runtime QDQ), gated.

``ensure_int8`` takes the cached FP32 keyframe and non-keyframe graphs, records their real inputs
by streaming the FP32 graphs over the calibration clips (so the non-keyframe graph is calibrated on
genuine slot contents, not zeros), quantizes both with ``onnxruntime.quantization.quantize_static``
(QDQ, u8 activations, s8 per-channel weights) and checks the accuracy gates (:mod:`.gates`) on
held-out clips. The result is cached next to the FP32 graphs, keyed by the FP32 graph's SHA-256,
the calibration set's hash and the settings; a result that missed the gates is cached too (with
why), and then :class:`OrtInt8Backend` runs the FP32 graphs: the automatic fall back.

What stays float (decided by measurement, docs/int8.md): the convolutions (with the
Clip/Relu after them, whose range their outputs take) are quantized; ILA (its gathers, products
and softmax: quantized, it was slower) and the last conv of each task head (``head_out``: logits,
depth, normals) stay float. :data:`RECIPES` is the ladder ``ensure_best_int8`` climbs, fastest
first: everything, then more layer groups float, then only the keyframe graph quantized (the
non-keyframe graph runs FP32), then FP32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..model import MultiTaskVideoNet
from .base import BackendError
from .calibration import clips_hash
from .cpu_features import int8_kernel, needs_precise_int8
from .export import (
    OnnxArtifact,
    check_sidecar,
    default_cache_dir,
    ensure_onnx,
    file_sha256,
    model_hash,
    onnx_filename,
    write_sidecar,
)
from .gates import Gates, measure
from .ort_backend import OrtBackend

log = logging.getLogger(__name__)

# Bump when the quantization recipe changes: old files then miss (4: Clip/Relu; 5: Pads kept apart;
# 6: apart only in front of float convs).
QUANT_FORMAT = 6
# Node-name patterns of the exported graphs (torch.onnx scope names) per layer group.
FLOAT_GROUPS = {
    "ila_embed": r"^/h(_\d+)?/",  # ILA's key/query embedding conv
    "se": r"^/se(_\d+)?/",  # task squeeze-excitation
    "head_in": r"^/head/head\.0/",  # first (3x3) conv of each task head
    "head_out": r"^/head/head\.2",  # last conv of each task head (logits, depth, normals)
    "heads": r"^/head/",  # whole task heads
    # each encoder's first conv; EfficientNet's trunk runs through ``backbone.features`` (not its
    # forward), so torch.onnx leaves ``backbone`` out of those scope names
    "stem": r"^/(slow|fast)/(backbone/)?(conv1|_conv_stem)/",
    "project": r"^/(slow|fast)/project/",  # encoder -> shared feature channels
    "slow": r"^/slow/",  # the whole keyframe encoder
    "fast": r"^/fast/",  # the whole non-keyframe encoder
    # EfficientNet-Lite's depthwise convs (MBConv's ``_depthwise_conv``: group == channels)
    "depthwise": r"^/(slow|fast)/(backbone/)?_blocks\.\d+/_depthwise_conv/",
    "slow_depthwise": r"^/slow/(backbone/)?_blocks\.\d+/_depthwise_conv/",
    "fast_depthwise": r"^/fast/(backbone/)?_blocks\.\d+/_depthwise_conv/",
    # the fast encoder's first four MBConv blocks (Lite0: stride 2 to 8, the highest resolutions)
    "fast_early": r"^/fast/(backbone/)?_blocks\.[0-3]/",
}
GRAPHS = ("key", "nonkey")  # QuantSettings.graphs: the keyframe and the non-keyframe step graph


@dataclass(frozen=True)
class QuantSettings:
    """The quantization recipe; part of the cache key."""

    per_channel: bool = True
    activations: str = "QUInt8"
    weights: str = "QInt8"
    method: str = "MinMax"  # onnxruntime CalibrationMethod name
    # The convolutions and the activations right after them: ILA stays float. With the tiled
    # gather export form its quantized MatMul/Gather/Transpose were slower than float ones (the
    # slot values must be quantized on every read), measured docs/int8.md.
    # Clip/Relu must be listed: then ONNX Runtime drops the activation and quantizes the conv's
    # output on the activation's range ([0, 6] for ReLU6). With ("Conv",) alone the conv output
    # kept its pre-activation range (e.g. [-78, 107] after Lite0's stem: ~8 levels left for
    # [0, 6]), which cost the default model 88.6 % -> 98.5 % agreement (docs/int8.md).
    op_types: tuple[str, ...] = ("Conv", "Clip", "Relu")
    # FLOAT_GROUPS kept float. Measured on the shipped model (docs/int8.md): with ground
    # truth the gates pass with everything quantized; keeping the output convs float costs little.
    keep_float: tuple[str, ...] = ("head_out",)
    keyframe_interval: int = 5  # how the calibration and gate streams are run
    reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI; this one has it)
    # quantize_static ``extra_options`` as (name, value) pairs, e.g. (("ActivationSymmetric", True),)
    extra: tuple[tuple[str, Any], ...] = ()
    # which step graphs are quantized (GRAPHS); one left out runs its FP32 graph unchanged
    graphs: tuple[str, ...] = GRAPHS

    def __post_init__(self) -> None:
        if not self.graphs or set(self.graphs) - set(GRAPHS):
            raise ValueError(f"QuantSettings.graphs: {list(self.graphs)}; want a non-empty subset of "
                             f"{list(GRAPHS)}")

    def key(self) -> dict[str, Any]:
        return {**asdict(self), "op_types": list(self.op_types), "keep_float": list(self.keep_float),
                "extra": [list(e) for e in self.extra], "graphs": sorted(self.graphs)}

    def describe(self) -> str:
        """What the recipe keeps out of INT8, for reasons and logs."""
        fp32 = [g for g in GRAPHS if g not in self.graphs]
        return ",".join(self.keep_float) + "".join(f"; {g} graph FP32" for g in fp32)


# The ladder of ``ensure_best_int8``: fastest first; each rung quantizes a subset of what the one
# before quantized (test_quantize_recipes). 2 keeps the layers float whose quantization moved the
# tiny shipped model's rare classes most; 3-5 add the depthwise convs (cheap in float: each reads
# and writes one map) and the fast encoder's high-resolution blocks; 6 quantizes the keyframe
# graph only. Measured on the default model (EfficientNet-Lite slow-fast, labelled gates on three
# validation sets, docs/int8.md "Mixed precision on the default model"): 1 misses,
# 2-3 are borderline (98.6-99.2 % agreement), 4-6 pass on all three (>= 99.1 %); 4 runs at 1.4x
# ONNX Runtime FP32 on 1 thread.
_SAFE = ("stem", "project", "heads")
RECIPES = (
    QuantSettings(),
    QuantSettings(keep_float=_SAFE),
    QuantSettings(keep_float=(*_SAFE, "fast_depthwise")),
    QuantSettings(keep_float=(*_SAFE, "depthwise")),
    QuantSettings(keep_float=(*_SAFE, "depthwise", "fast_early")),
    QuantSettings(keep_float=(*_SAFE, "slow_depthwise"), graphs=("key",)),
)


@dataclass
class Int8Result:
    """Both graphs to run plus why: quantized when the gates passed, else the FP32 ones."""

    artifacts: dict[bool, OnnxArtifact]
    precision: str  # "int8" or "fp32"
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    # the quantized pair whatever the verdict (benchmarks time a gate-missing pair: speed only)
    quantized: dict[bool, OnnxArtifact] | None = None


class _Recorder:
    """Stands in for an InferenceSession and keeps a copy of every feed (calibration inputs)."""

    def __init__(self, session: Any, sink: list[dict[str, np.ndarray]]) -> None:
        self.session, self.sink = session, sink

    def run(self, names: Any, feed: dict[str, Any], options: Any = None) -> Any:
        self.sink.append({k: np.array(v, copy=True) for k, v in feed.items()})
        return self.session.run(names, feed, options)


def record_feeds(fp32: OrtBackend, clips: Sequence[np.ndarray], keyframe_interval: int
                 ) -> dict[bool, list[dict[str, np.ndarray]]]:
    """Inputs each graph saw while the FP32 stream ran over ``clips`` (keyframe every K frames)."""
    from .gates import stream_outputs

    feeds: dict[bool, list[dict[str, np.ndarray]]] = {True: [], False: []}
    real = dict(fp32.sessions)
    try:
        fp32.sessions = {k: _Recorder(s, feeds[k]) for k, s in real.items()}
        for clip in clips:
            stream_outputs(fp32, clip, keyframe_interval)
    finally:
        fp32.sessions = real
    return feeds


def _float_nodes(path: Path, groups: Sequence[str]) -> list[str]:
    import onnx

    return _float_names(onnx.load(str(path), load_external_data=False).graph, groups)


def _float_names(graph: Any, groups: Sequence[str]) -> list[str]:
    """Names of the nodes of ``graph`` (an ONNX GraphProto) that the FLOAT_GROUPS ``groups`` select."""
    unknown = set(groups) - set(FLOAT_GROUPS)
    if unknown:
        raise ValueError(f"keep_float: unknown group(s) {sorted(unknown)}; known: {sorted(FLOAT_GROUPS)}")
    pats = [re.compile(FLOAT_GROUPS[g]) for g in groups]
    return [n.name for n in graph.node if any(p.search(n.name) for p in pats)]


def quantize_graph(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], settings: QuantSettings) -> None:
    """:func:`preprocess` then ``quantize_static`` of one graph on recorded ``feeds``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess(src, pre, keep_float=settings.keep_float)
        quantize_preprocessed(pre, dst, feeds, settings)


def preprocess(src: Path, dst: Path, keep_float: Sequence[str] | None = None) -> None:
    """The FP32 graph ``src`` made ready for ``quantize_static`` in ``dst``: the Pads in front of
    convs that stay float kept apart (:func:`_keep_pads_apart`; ``keep_float``: the recipe's float
    groups, None: every Pad apart), then ``quant_pre_process`` (shape inference, ORT graph
    optimisation). The optimisation is what lets ONNX Runtime fuse every DequantizeLinear -> Conv
    -> QuantizeLinear into a QLinearConv: without it 23 of the 39 convolutions of the
    ``bench/small.yaml`` non-keyframe graph stayed float Convs behind runtime DequantizeLinear and
    the INT8 graph ran slower than FP32 (docs/cpu_measurements.md)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    m = onnx.load(str(src))  # once: the float groups and the Pad edit read the same graph in memory
    _keep_pads_apart(m, None if keep_float is None else set(_float_names(m.graph, keep_float)))
    quant_pre_process(m, str(dst), skip_symbolic_shape=True)


def _keep_pads_apart(m: Any, float_nodes: set[str] | None = None) -> int:
    """Put the empty third input back, in the ONNX ModelProto ``m``, on the two-input Pads whose
    conv stays float (in ``float_nodes``; None: on every two-input Pad), so that those are not
    folded; returns how many. Why: the FP32 export drops the empty input so that ONNX Runtime
    folds the EfficientNet "same" Pads into their convs (``export.drop_empty_trailing_inputs``),
    but in front of a conv kept float the folded form missed the gates on the default model (rung
    4, depthwise and stem float: agreement 97.7 % vs 99.5 % with the Pads apart in
    test_default_model, 95.35 % vs 99.33 % on runs/street/val). In front of a quantized conv the
    fold is exact (rung 1: the same outputs, max difference 0) and saves the Pad and its NCHWc
    reorders (docs/cpu_threads.md, Threads)."""
    consumers: dict[str, list[Any]] = {}
    for node in m.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    n = 0
    for node in m.graph.node:
        if node.op_type != "Pad" or len(node.input) != 2:
            continue
        after = consumers.get(node.output[0], [])
        quantized_conv = (float_nodes is not None and len(after) == 1 and after[0].op_type == "Conv"
                          and after[0].name not in float_nodes)
        if not quantized_conv:
            node.input.append("")
            n += 1
    return n


def quantize_preprocessed(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]],
                          settings: QuantSettings, exclude: Sequence[str] | None = None,
                          calibration_cache: Path | None = None) -> None:
    """``quantize_static`` of a ``quant_pre_process``-ed graph on recorded ``feeds`` with
    ``settings``. ``exclude``: node names kept float instead of ``settings.keep_float``'s groups;
    ``calibration_cache``: ONNX Runtime's activation-range cache (bench/int8_sweep.py reuses the
    ranges across candidates of one graph)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(feeds)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(settings.op_types), per_channel=settings.per_channel,
                    activation_type=getattr(QuantType, settings.activations),
                    weight_type=getattr(QuantType, settings.weights),
                    nodes_to_exclude=(list(exclude) if exclude is not None
                                      else _float_nodes(src, settings.keep_float)),
                    calibrate_method=getattr(CalibrationMethod, settings.method),
                    reduce_range=settings.reduce_range, extra_options=dict(settings.extra),
                    calibration_cache_path=str(calibration_cache) if calibration_cache else None)


def int8_filename(fp32_name: str, qkey: str) -> str:
    return fp32_name.replace(".onnx", f"_int8_{qkey[:12]}.onnx")


def _qkey(fp32_sha: dict[bool, str], calib: str, settings: QuantSettings) -> str:
    blob = {"format": QUANT_FORMAT, "fp32": [fp32_sha[True], fp32_sha[False]], "calibration": calib,
            "settings": settings.key()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


Labels = Sequence[Sequence[dict[str, np.ndarray]]]


def ensure_int8(model: MultiTaskVideoNet, calib_clips: Sequence[np.ndarray], held_out: Sequence[np.ndarray],
                cache_dir: str | Path | None = None, input_size: tuple[int, int] | None = None,
                settings: QuantSettings | None = None, gates: Gates | None = None, threads: int = 0,
                force: bool = False, labels: Labels | None = None) -> Int8Result:
    """The gated INT8 graphs for this model, calibration set and recipe (cached), or the FP32
    graphs with the reason when the gates were missed.

    ``held_out``: clips the gates are measured on (part of the calibration-set hash);
    ``labels``: their ground truth per clip and frame, if any (else FP32 serves as the labels).
    The graphs are keyed without the gates: other gates, or another ONNX Runtime INT8 kernel
    (:func:`.cpu_features.int8_kernel`: the same graph scores differently on a CPU whose u8 x s8
    sums saturate), re-measure, they do not re-quantize.
    """
    settings, gates = settings or QuantSettings(), gates or Gates()
    size = tuple(int(v) for v in (input_size or model.cfg.input_size))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    mhash = model_hash(model)
    fp32 = {k: ensure_onnx(model, k, folder, size, mhash=mhash) for k in (True, False)}  # type: ignore[arg-type]
    calib = clips_hash(list(calib_clips) + [np.zeros((0, 1, 1, 3), np.uint8)] + list(held_out))
    qkey = _qkey({k: a.sha256 for k, a in fp32.items()}, calib, settings)
    paths = {k: folder / int8_filename(a.path.name, qkey) for k, a in fp32.items()}
    expected = {"format": QUANT_FORMAT, "qkey": qkey, "model_sha256": mhash, "input_size": list(size),
                "calibration_sha256": calib}
    metas = {k: (None, "forced") if force else check_sidecar(p, {**expected, "fp32_sha256": fp32[k].sha256},
                                                               "onnx_sha256") for k, p in paths.items()}
    verdict = _verdict_key(gates, labels)
    ref = OrtBackend(model, cache_dir=folder, input_size=size, threads=threads)  # type: ignore[arg-type]
    if all(m is not None for m, _ in metas.values()):
        meta = metas[True][0]
        assert meta is not None
        log.info("INT8 graphs cached (%s)", paths[True].name)
        if any(meta.get(k) != v for k, v in verdict.items()):
            meta = _gate(model, ref, fp32, paths, meta, held_out, labels, size, settings, gates, threads)
    else:
        meta = _build(model, ref, fp32, paths, expected, calib_clips, size, settings, threads)
        meta = _gate(model, ref, fp32, paths, meta, held_out, labels, size, settings, gates, threads)
    arts = {k: OnnxArtifact(p, fp32[k].spec, file_sha256(p), mhash, size) for k, p in paths.items()}  # type: ignore[arg-type]
    if meta["passed"]:
        return Int8Result(arts, "int8", f"gates passed: {meta['summary']}", meta["metrics"], arts)
    return Int8Result(fp32, "fp32", "INT8 missed the gates (" + "; ".join(meta["failures"]) + ")",
                      meta["metrics"], arts)


def ensure_best_int8(model: MultiTaskVideoNet, calib_clips: Sequence[np.ndarray],
                     held_out: Sequence[np.ndarray], cache_dir: str | Path | None = None,
                     input_size: tuple[int, int] | None = None,
                     recipes: Sequence[QuantSettings] = RECIPES, **kw: Any) -> Int8Result:
    """:func:`ensure_int8` with each recipe in turn until one passes the gates (fastest first);
    when none does, the FP32 graphs with every recipe's reason. ``kw``: ensure_int8's others."""
    reasons = []
    for i, st in enumerate(recipes):
        res = ensure_int8(model, calib_clips, held_out, cache_dir, input_size, st, **kw)
        if res.precision == "int8":
            res.reason = f"recipe {i + 1}/{len(recipes)} (kept float: {st.describe() or '-'}): {res.reason}"
            return res
        reasons.append(f"recipe {i + 1}: {res.reason}")
    res.reason = "; ".join(reasons)
    return res


def _verdict_key(gates: Gates, labels: Labels | None) -> dict[str, Any]:
    """What a gate verdict holds for: the gates, labelled or strict form, and the INT8 kernel that
    ran (the same graph scores differently where u8 x s8 sums saturate). A cached verdict whose
    key differs is measured again."""
    return {"gates": gates.to_dict(), "labelled": labels is not None, "ort_int8_kernel": int8_kernel()}


def _build(model: MultiTaskVideoNet, ref: OrtBackend, fp32: dict[bool, OnnxArtifact], paths: dict[bool, Path],
           expected: dict[str, Any], calib_clips: Sequence[np.ndarray], size: tuple[int, ...],
           settings: QuantSettings, threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    feeds = record_feeds(ref, calib_clips, settings.keyframe_interval)
    for k, p in paths.items():
        if not feeds[k]:
            raise BackendError(f"calibration: no {'key' if k else 'non-key'}frames in the calibration clips")
        with atomic_path(p) as tmp:
            if ("key" if k else "nonkey") in settings.graphs:
                quantize_graph(fp32[k].path, Path(tmp), feeds[k], settings)
            else:  # this graph stays FP32: a copy, so the pair keeps one file name and sidecar scheme
                shutil.copyfile(fp32[k].path, tmp)
    log.info("quantized in %.0f s", time.perf_counter() - t0)
    return {**expected, "settings": settings.key(), "quantize_seconds": time.perf_counter() - t0,
            "calibration_frames": int(sum(len(c) for c in calib_clips))}


def _gate(model: MultiTaskVideoNet, ref: OrtBackend, fp32: dict[bool, OnnxArtifact], paths: dict[bool, Path],
          meta: dict[str, Any], held_out: Sequence[np.ndarray], labels: Labels | None, size: tuple[int, ...],
          settings: QuantSettings, gates: Gates, threads: int) -> dict[str, Any]:
    """Measure the gates on ``held_out`` and record the verdict in both sidecars."""
    arts = {k: OnnxArtifact(p, fp32[k].spec, file_sha256(p), fp32[k].model_sha256, fp32[k].input_size)
            for k, p in paths.items()}
    test = OrtBackend(model, input_size=size, threads=threads, artifacts=arts)  # type: ignore[arg-type]
    meter = measure(ref, test, held_out, settings.keyframe_interval, labels)
    failures = meter.failures(gates)
    meta = {**meta, **_verdict_key(gates, labels), "passed": not failures, "failures": failures,
            "metrics": meter.metrics(), "summary": meter.summary(),
            "held_out_frames": int(sum(len(c) for c in held_out))}
    for k, p in paths.items():
        write_sidecar(p, {**meta, "fp32_sha256": fp32[k].sha256, "onnx_sha256": arts[k].sha256,
                          "frame": "key" if k else "nonkey"})
    log.info("INT8 %s: %s", "FAILED" if failures else "passed", meta["summary"])
    return meta


def cached_int8(model: MultiTaskVideoNet, cache_dir: str | Path | None = None,
                input_size: tuple[int, int] | None = None) -> dict[bool, OnnxArtifact] | None:
    """The newest INT8 pair in the cache for this model and size (any calibration set) that passed
    the gates with this CPU's INT8 kernel (:func:`.cpu_features.int8_kernel`), or None: what the
    ``onnxruntime-int8`` backend runs without a calibration set at hand."""
    size = tuple(int(v) for v in (input_size or model.cfg.input_size))
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    mhash = model_hash(model)
    stem = onnx_filename(mhash, size, True).replace(".onnx", "_int8_")  # type: ignore[arg-type]
    best: tuple[float, dict[bool, OnnxArtifact]] | None = None
    for kp in folder.glob(stem + "*.onnx"):
        qkey12 = kp.stem.rsplit("_", 1)[-1]
        nk = folder / int8_filename(onnx_filename(mhash, size, False), qkey12)  # type: ignore[arg-type]
        arts = {}
        for k, p in ((True, kp), (False, nk)):
            meta, _ = check_sidecar(p, {"format": QUANT_FORMAT, "model_sha256": mhash, "passed": True,
                                        "ort_int8_kernel": int8_kernel()}, "onnx_sha256")
            if meta is None:
                break
            fp32 = ensure_onnx(model, k, folder, size, mhash=mhash)  # type: ignore[arg-type]
            if meta.get("fp32_sha256") != fp32.sha256:
                break  # quantized from another export of the graph
            arts[k] = OnnxArtifact(p, fp32.spec, meta["onnx_sha256"], mhash, size)  # type: ignore[arg-type]
        if len(arts) == 2 and (best is None or kp.stat().st_mtime > best[0]):
            best = (kp.stat().st_mtime, arts)
    return best[1] if best else None


class OrtInt8Backend(OrtBackend):
    """ONNX Runtime on the gated INT8 graphs from the cache (``mtl-perception-quantize`` makes
    them); raises BackendError when there are none, so ``auto`` moves on."""

    name = "onnxruntime-int8"

    def __init__(self, model: MultiTaskVideoNet, cache_dir: str | Path | None = None,
                 input_size: tuple[int, int] | None = None, threads: int = 0,
                 result: Int8Result | None = None) -> None:
        if result is None:
            arts = cached_int8(model, cache_dir, input_size)
            if arts is None:
                raise BackendError("no gate-passing INT8 graphs for this model and size in the cache "
                                   f"(gated with this CPU's INT8 kernel, {int8_kernel()}): run "
                                   "mtl-perception-quantize")
            result = Int8Result(arts, "int8", "cached INT8 graphs that passed the gates")
        super().__init__(model, cache_dir=cache_dir, input_size=input_size, threads=threads,
                         artifacts=result.artifacts)
        self.precision, self.reason = result.precision, result.reason
        if result.precision == "int8":  # /diagnostics: which INT8 kernel runs, and why
            self.reason += f"; INT8 kernel {int8_kernel()} ({needs_precise_int8()[1]})"
        self.name = "onnxruntime-int8" if result.precision == "int8" else "onnxruntime"
