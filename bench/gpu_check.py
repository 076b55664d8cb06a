"""One command for the first GPU: install, run every GPU test and measurement, write one table.

    python bench/gpu_check.py            # or: make gpu-check
    python bench/gpu_check.py --dry-run  # on any machine: the steps it would run

Self-contained on a bare GPU machine with only this repository: the driver process needs only
the Python standard library. It creates ``--venv`` (default ``.venv-gpu``), installs the CUDA
torch wheel of the pinned version (torch==2.13.0 from PyPI, CUDA 13) and the ``gpu`` and
``test`` extras (TensorRT 10.x for CUDA 13, see setup.py), then runs each measurement step in that
venv as ``gpu_check.py --inner STEP`` under one overall deadline (``--budget``, default 570 s,
so the whole run stays under 10 minutes; a step that would overrun is cut and reported). The
table goes to ``<out>/gpu_check.md`` (default ``gpu_check_out/``), raw results to JSON beside it.
On a machine that cannot reach PyPI, ``--python PATH`` runs the steps with an interpreter that
already has the CUDA torch wheel and TensorRT 10 (no install).

Steps: the GPU tests (pass/skip/fail each), TensorRT FP16/FP32 engine build time, engine cache hit
on a second start and rebuild after a key change, parity of every GPU backend against PyTorch FP32
(CUDA) over a multi-frame stream of real frames, the node's frame path (``Pipeline``) publishing
through an injected TensorRT execution failure, and latency (keyframe, non-keyframe, average at
K = 5) of TensorRT FP16/FP32 and PyTorch CUDA FP16/FP32 at 256x512 and 512x1024 (last: the most
expensive, its rows appear as they finish).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"
MODEL = "config/model/d101_18_cityscapes.yaml"
TESTS = ("test/test_backends_gpu.py", "test/test_gpu_logic.py")
SIZES = ("256x512", "512x1024")
LAT_BACKENDS = ("tensorrt-fp16", "tensorrt-fp32", "torch-cuda-fp16", "torch-cuda")
K = 5
STEPS = {
    "venv": "create {venv} and pip install '" + TORCH_PIN + "' (CUDA wheel) and -e '.[gpu,test]'",
    "env": "torch/CUDA/TensorRT versions and the GPU; stop if CUDA is missing",
    "tests": "pytest " + " ".join(TESTS) + " (pass/skip/fail per test)",
    "build": "TensorRT FP16 and FP32 engine builds of " + MODEL + " at 256x512 (fresh cache), timed",
    "cache": "second start: engine cache hit; then a key change (workspace) must rebuild",
    "parity": f"TensorRT FP16/FP32 and PyTorch CUDA FP16 vs PyTorch CUDA FP32, 20 real frames, K={K}",
    "fallback": "node frame path (Pipeline) with an injected TensorRT execution failure keeps publishing",
    "latency": f"bench/latency.py: key/non-key/avg K={K}, {', '.join(LAT_BACKENDS)} at {', '.join(SIZES)}",
}


# -- driver (standard library only) ----------------------------------------------------------------
def sh(cmd: list[str], timeout: float, log: Path) -> tuple[int, str]:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout))
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = 124
    with open(log, "a") as f:
        f.write(out + f"\n[exit {rc}]\n")
    return rc, out


def install(venv: Path, deadline: float, log: Path) -> str:
    py = venv / "bin" / "python"
    marker = venv / ".gpu-check-installed"
    if marker.is_file():
        return "reused " + str(venv)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"],
             [str(py), "-m", "pip", "install", "-q", TORCH_PIN],
             [str(py), "-m", "pip", "install", "-q", "-e", ".[gpu,test]"]]
    for cmd in steps:
        rc, out = sh(cmd, deadline - time.monotonic(), log)
        if rc:
            raise RuntimeError(f"{' '.join(cmd[-3:])} failed ({rc}): {out.strip().splitlines()[-1:]}")
    marker.write_text(TORCH_PIN + "\n")
    return "installed " + str(venv)


def table(results: dict[str, dict]) -> str:
    lines = ["# gpu_check", ""]
    for step, r in results.items():
        lines += [f"## {step}: {r.get('status', '?')}  ({r.get('seconds', 0):.0f} s)", ""]
        if r.get("note"):
            lines += [r["note"], ""]
        rows = r.get("rows") or []
        if rows:
            lines += ["| " + " | ".join(map(str, rows[0])) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows[1:]]
            lines.append("")
    return "\n".join(lines)


def drive(args: argparse.Namespace) -> int:
    steps = [s for s in STEPS if s in args.steps]
    if args.dry_run:
        print(f"gpu_check would run, within {args.budget:.0f} s, writing {args.out}/gpu_check.md:")
        for i, s in enumerate(steps, 1):
            what = STEPS[s].format(venv=args.venv)
            what = f"use {args.python} as it is" if s == "venv" and args.python else what
            print(f"  {i}. {s:<8} {what}")
        return 0
    t_start = time.monotonic()
    deadline = t_start + args.budget
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    venv = Path(args.venv).resolve()
    python = args.python or str(venv / "bin" / "python")
    results: dict[str, dict] = {}
    for step in steps:
        t0 = time.monotonic()
        left = deadline - t0
        if left < 5:
            results[step] = {"status": "not run (time budget spent)"}
            continue
        try:
            if step == "venv":
                note = f"not installing: using {args.python}" if args.python else install(venv, deadline, log)
                results[step] = {"status": "ok", "note": note}
            else:
                rc, text = sh([python, __file__, "--inner", step, "--out", str(out)],
                              left, log)
                res_file = out / f"{step}.json"
                results[step] = json.loads(res_file.read_text()) if res_file.is_file() else {}
                if rc == 124:
                    results[step]["status"] = "cut at the time budget"
                elif rc and results[step].get("status") in (None, "ok"):
                    last = " ".join(text.strip().splitlines()[-1:])
                    results[step]["status"] = f"failed (exit {rc}): {last}"
        except Exception as e:  # noqa: BLE001 - report the step, go on
            results[step] = {"status": f"failed: {type(e).__name__}: {e}"}
        results[step]["seconds"] = time.monotonic() - t0
        if step in ("venv", "env") and not results[step]["status"].startswith("ok"):
            break  # nothing else can run
    results["total"] = {"status": "done", "seconds": time.monotonic() - t_start}
    report = table(results)
    (out / "gpu_check.md").write_text(report + "\n")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(report)
    print(f"\nwritten: {out / 'gpu_check.md'} (log: {log})")
    return 0 if all(r.get("status", "").startswith(("ok", "done")) for r in results.values()) else 1


# -- inner steps (run inside the GPU venv) -----------------------------------------------------------
def _frames(size: tuple[int, int], n: int):  # noqa: ANN202
    from mtl_perception.backends.cuda_util import check_frames

    return check_frames(size, n)


def _model(size: tuple[int, int]):  # noqa: ANN202
    from mtl_perception.backends.export import load_model_arg

    m = load_model_arg(None, str(ROOT / MODEL))
    m.cfg.input_size = size
    return m


def inner_env(out: Path) -> dict:
    import torch

    rows = [["item", "value"], ["torch", torch.__version__], ["torch CUDA", torch.version.cuda],
            ["CUDA available", torch.cuda.is_available()]]
    if not torch.cuda.is_available():
        return {"status": "failed: CUDA is not available to torch", "rows": rows}
    rows += [[f"cuda:{i}", torch.cuda.get_device_name(i)] for i in range(torch.cuda.device_count())]
    try:
        from mtl_perception.backends.trt_backend import import_tensorrt

        rows.append(["tensorrt", import_tensorrt().__version__])
    except Exception as e:  # noqa: BLE001
        rows.append(["tensorrt", f"unusable: {e}"])
    return {"status": "ok", "rows": rows}


def inner_tests(out: Path) -> dict:
    import xml.etree.ElementTree as ET

    xml = out / "junit.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                        *TESTS], cwd=ROOT, capture_output=True, text=True)
    (out / "pytest.log").write_text(p.stdout + p.stderr)
    rows = [["test", "result", "detail"]]
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"  # test.test_x -> test_x
        res, detail = "pass", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                res = "skip" if tag == "skipped" else "FAIL"
                detail = (el.get("message") or "").replace("|", "/").replace("\n", " ")[:120]
        rows.append([name, res, detail])
    return {"status": "ok" if p.returncode == 0 else f"failed (pytest exit {p.returncode})", "rows": rows}


def inner_build(out: Path) -> dict:
    from mtl_perception.backends.export import ensure_onnx
    from mtl_perception.backends.trt_backend import ensure_engine

    cache = out / "cache"
    model = _model((256, 512))
    arts = {k: ensure_onnx(model, k, cache) for k in (True, False)}
    rows = [["precision", "graph", "build s", "engine file"]]
    for prec in ("fp16", "fp32"):
        for k, art in arts.items():
            t0 = time.perf_counter()
            ef = ensure_engine(art, prec, "cuda:0", cache, rebuild=True)
            rows.append([prec, "key" if k else "non-key", f"{time.perf_counter() - t0:.1f}", ef.path.name])
    return {"status": "ok", "rows": rows}


def inner_cache(out: Path) -> dict:
    from mtl_perception.backends.trt_backend import TrtBackend

    cache, model = out / "cache", _model((256, 512))
    rows = [["start", "seconds", "engines rebuilt", "reason"]]
    status = "ok"
    for label, kw, want_rebuilt in (("second start", {}, False), ("workspace 2 GiB (key change)",
                                                                   {"workspace": 2 << 30}, True)):
        t0 = time.perf_counter()
        b = TrtBackend(model, "cuda:0", fp16=True, cache_dir=cache, verify=False, **kw)
        efs = list(b.engine_files.values())
        rebuilt = [ef.rebuilt for ef in efs]
        rows.append([label, f"{time.perf_counter() - t0:.1f}", f"{sum(rebuilt)}/{len(efs)}",
                     "; ".join(ef.reason for ef in efs)[:150]])
        if any(rebuilt) != want_rebuilt:
            status = f"failed: {label}: rebuilt={rebuilt}"
        del b
    return {"status": status, "rows": rows}


def inner_parity(out: Path) -> dict:
    from mtl_perception.backends.cuda_util import stream_parity
    from mtl_perception.backends.torch_backend import TorchBackend
    from mtl_perception.backends.trt_backend import TrtBackend

    model = _model((256, 512))
    imgs, source = _frames((256, 512), 20)
    ref = TorchBackend(model, "cuda:0")
    makers = {"tensorrt-fp16": lambda: TrtBackend(model, "cuda:0", True, out / "cache", verify=False),
              "tensorrt-fp32": lambda: TrtBackend(model, "cuda:0", False, out / "cache", verify=False),
              "torch-cuda-fp16": lambda: TorchBackend(model, "cuda:0", fp16=True, verify=False)}
    rows = [["backend", "argmax agree %", "depth rel mean %", "normals mean deg", "within thresholds"]]
    for name, make in makers.items():
        try:
            m = stream_parity(ref.step, make().step, imgs, keyframe_interval=K).metrics()
            ok = (m["semantic_agreement"] >= 0.99 and m["depth_rel_mean"] <= 0.01
                  and m["normals_deg_mean"] <= 1)
            rows.append([name, f"{100 * m['semantic_agreement']:.2f}", f"{100 * m['depth_rel_mean']:.3f}",
                         f"{m['normals_deg_mean']:.3f}", ok])
        except Exception as e:  # noqa: BLE001
            rows.append([name, f"error: {type(e).__name__}: {e}"[:120], "", "", False])
    return {"status": "ok", "rows": rows, "note": f"frames: {source}; reference: torch-cuda FP32 eager"}


def inner_fallback(out: Path) -> dict:
    from types import SimpleNamespace

    from mtl_perception.backends.select import create_backend
    from mtl_perception.pipeline import Pipeline
    from mtl_perception.scheduler import Decision

    model = _model((256, 512))
    fb, _ = create_backend(model, "tensorrt", device="cuda:0", cache_dir=out / "cache", fp16=False)
    pipe = Pipeline(fb)
    imgs, _ = _frames((256, 512), 20)
    rows = [["frame", "keyframe asked", "keyframe run", "backend", "outputs"]]
    published = 0
    for i, img in enumerate(imgs):
        if i == 7:  # the TensorRT context starts failing, as after an execution error
            for eng in fb.active.engines.values():
                eng.context = SimpleNamespace(set_tensor_address=lambda *a: True,
                                              execute_async_v3=lambda *a: False)
        r = pipe.process(img, Decision(is_keyframe=i % K == 0))
        published += bool(r.outputs)
        if i in (0, 6, 7, 8, 19):
            rows.append([i, i % K == 0, r.is_keyframe, fb.name, ",".join(sorted(r.outputs))])
    ok = published == len(imgs) and fb.failures == 1 and fb.active_label == "torch-cuda"
    return {"status": "ok" if ok else "failed", "rows": rows,
            "note": f"{published}/{len(imgs)} frames published; failures={fb.failures}; "
                    f"switches={fb.switches}"}


def inner_latency(out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "latency.py"), "--model-config", str(ROOT / MODEL),
           "--sizes", *SIZES, "--backends", *LAT_BACKENDS, "--keys", "3", "--nonkey", str(K - 1),
           "--ila-iters", "5", "--cache-dir", str(out / "cache")]
    rows = [["size", "backend", "key p50 ms", "non-key p50 ms", f"avg K={K} ms"]]
    res = {"status": "ok", "rows": rows}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # rows as they come: a cut run still reports the finished ones
        t = line.split()
        seen = {r[0] + r[1] for r in rows}
        if t and re.fullmatch(r"\d+x\d+", t[0]) and len(t) > 2 and t[0] + t[1] not in seen:
            rows.append([t[0], t[1], *(["skipped", "", ""] if t[2] == "skipped:" else [t[2], t[4], t[-3]])])
            (out / "latency.json").write_text(json.dumps(res))
    if proc.wait():
        res["status"] = f"failed (latency.py exit {proc.returncode})"
    return res


INNER = {"env": inner_env, "tests": inner_tests, "build": inner_build, "cache": inner_cache,
         "parity": inner_parity, "fallback": inner_fallback, "latency": inner_latency}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    p.add_argument("--out", default="gpu_check_out", help="folder for the table, JSON and logs")
    p.add_argument("--venv", default=".venv-gpu", help="virtual environment to create/reuse")
    p.add_argument("--python", default=None, help="run the steps with this interpreter (CUDA torch and "
                   "TensorRT 10 already installed) instead of creating --venv")
    p.add_argument("--budget", type=float, default=570.0, help="seconds for the whole run")
    p.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    p.add_argument("--inner", choices=list(INNER), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inner is None:
        return drive(args)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    out = Path(args.out)
    try:
        res = INNER[args.inner](out)
    except Exception as e:  # noqa: BLE001 - one line in the table, the traceback in the log
        import traceback

        traceback.print_exc()
        res = {"status": f"failed: {type(e).__name__}: {e}"[:300]}
    (out / f"{args.inner}.json").write_text(json.dumps(res, default=str))
    return 0 if str(res.get("status", "")).startswith("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
