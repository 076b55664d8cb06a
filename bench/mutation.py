"""Targeted mutation testing: does the suite fail when a documented behaviour is broken?

Each mutation replaces one exact snippet of a source file by a broken variant (state reset
removed, depth x1000, softplus -> relu, fused features stored, ...). The runner extracts a
revision of the repository into a temporary folder (``git archive``; the shared working tree is
never touched), applies one mutation at a time there, runs the test files relevant to it with
``PYTHONPATH`` pointing at the copy (checked: the copy is what gets imported, not the editable
install), restores the file, and prints a kill-rate table per module. A mutation is *killed*
when the tests fail; *n/a* when its snippet is not in that revision.

    .venv/bin/python bench/mutation.py                       # source and tests at HEAD
    .venv/bin/python bench/mutation.py --only node.           # a subset (id prefix)
    # issue 11's before/after, both on the source before it (27d3ff5):
    .venv/bin/python bench/mutation.py --rev 27d3ff5 --json before.json
    .venv/bin/python bench/mutation.py --source-rev 27d3ff5 --tests-rev HEAD --baseline before.json

With ``--baseline`` only the mutations the baseline suite let survive are rerun (the old test
files are still in the new suite, so what they killed stays killed). A timed-out run is reported
apart and not counted. Each run of the relevant files takes seconds to minutes: the whole table
takes ~30 min on 2 idle cores, far longer on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Test files per area, the targeted ones first (``-x`` stops at the first failure); files missing
# in a revision are skipped, so the same table serves the suite before and after issue 11. The
# slow ONNX/TensorRT parity files are left out: they compare a graph of ``step`` with ``step``.
MODEL = ["test_memory_contents.py", "test_propagation_variants.py", "test_units.py",
         "test_checkpoint_match.py", "test_model.py", "test_ila.py"]
SCHED = ["test_propagation_variants.py", "test_stream_reset.py", "test_scheduler.py"]
PIPE = ["test_units.py", "test_stream_reset.py", "test_node_behaviour.py", "test_imaging.py", "test_node.py"]
NODE = ["test_node_behaviour.py", "test_stream_reset.py", "test_node.py", "test_node_multi.py"]
IMG = ["test_imaging_alignment.py", "test_units.py", "test_node_behaviour.py", "test_imaging.py",
       "test_node.py"]
TRAIN = ["test_stage_freezing.py", "test_resume_exact.py", "test_model.py", "test_losses.py", "test_train.py"]
DATA = ["test_units.py", "test_data_video.py", "test_data_synthetic.py", "test_tools.py"]
ENGINE = ["test_engine_cache.py", "test_backends_gpu.py", "test_export.py"]
SEED = ["test_seed_training.py"]  # issue 13: the seed decoders under mtl-train
KEYS = ["test_forward_clip_policy.py"]  # issue 15: forward_clip with a keyframe policy
FILT = ["test_output_filter.py"]  # issue 16: temporal output filters


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str
    find: str
    replace: str
    tests: tuple[str, ...]


def M(id: str, path: str, find: str, replace: str, tests: list[str]) -> Mutation:  # noqa: A002, N802
    return Mutation(id, path, find, replace, tuple(tests))


NET = "mtl_perception/model/network.py"
MUTATIONS = [
    M("model.store_fused", NET, "memory = FrameMemory(current, keys)", "memory = FrameMemory(fused, keys)",
      MODEL),
    M("model.depth_relu", NET, "return F.softplus(raw) + MIN_DEPTH", "return F.relu(raw) + MIN_DEPTH", MODEL),
    M("model.multi_frame_ignored", NET,
      "return [state.nonkey] if multi and state.nonkey is not None else []",
      "return [state.nonkey] if state.nonkey is not None else []", MODEL),
    # The average fusion moved to fusion.py (ba1dbb3, ``propagation.fusion`` registry).
    M("model.fusion_unnormalised", "mtl_perception/model/fusion.py",
      "return out / norm if any_source else current", "return out if any_source else current", MODEL),
    # The per-decoder path (no cross-task ``joint`` module): SE after the shared stream's fusion.
    M("model.shared_skips_se", NET, "f = fused[t] if t in fused else self.decoders[t].select(fused[SHARED])",
      "f = fused[t] if t in fused else fused[SHARED]", MODEL),
    M("model.decode_skips_se", NET, "self.decoders[t].predict(self.fusion(self.decoders[t].select(features),",
      "self.decoders[t].predict(self.fusion(features,", MODEL),
    # Same forward values, no gradient into the past frames: "grad is not None" cannot see it.
    M("model.propagation_grad_cut", NET,
      "[m.keys[s] for s, _, m in members], [m.features[s] for s, _, m in members])",
      "[m.keys[s].detach() + 0 * m.keys[s] for s, _, m in members],"
      " [m.features[s].detach() + 0 * m.features[s] for s, _, m in members])",
      MODEL),
    # Several ILA products in one call (every task's and slot's of a frame, 2026-12-03).
    M("model.propagated_to_wrong_stream", NET, "for (s, i, m), r in zip(members, results):",
      "for (s, i, m), r in zip(members, results[::-1]):", MODEL),
    M("model.nonkey_slot_weight_wrong_slot", NET, "scale[1] = self.cfg.propagation.nonkey_slot_weight",
      "scale[0] = self.cfg.propagation.nonkey_slot_weight", MODEL),
    M("model.nonkey_slot_weight_on_keyframes", NET, "if not is_keyframe and len(slots) > 1:",
      "if len(slots) > 1:", MODEL),
    M("model.global_softmax_axis", "mtl_perception/model/ila.py",
      "attn = torch.softmax(torch.bmm(q, k), dim=-1)", "attn = torch.softmax(torch.bmm(q, k), dim=1)",
      MODEL),
    M("model.ila_eager_mask_additive", "mtl_perception/model/ila.py",
      'return _tile_constants(h, w, window, tile, outside=float("-inf"))',
      "return _tile_constants(h, w, window, tile)", ["test_ila.py"]),
    M("model.ila_loop_fill_finite", "mtl_perception/model/ila.py",
      '(b, window * window, h, w), float("-inf"), dtype', "(b, window * window, h, w), _OUTSIDE, dtype",
      ["test_ila.py"]),
    M("model.ila_eager_tiles_never", "mtl_perception/model/ila.py", "EAGER_TILES_MAX_BYTES = 2 << 20",
      "EAGER_TILES_MAX_BYTES = 0", ["test_ila.py"]),
    M("model.ila_eager_low_precision_sums", "mtl_perception/model/ila.py",
      "    if value.dtype != torch.float32:  # BF16 / FP16", "    if False:  # BF16 / FP16", ["test_ila.py"]),
    M("model.ila_stack_split_order", "mtl_perception/model/ila.py",
      "return list(out.split(int(qs[0].shape[0])))", "return list(out.split(int(qs[0].shape[0])))[::-1]",
      ["test_ila_batched.py"]),
    M("model.ila_stack_never_in_graphs", "mtl_perception/model/ila.py", "return stacked <= STACK_MAX_BYTES",
      "return False", ["test_ila_batched.py"]),
    M("model.ila_stack_eager_tiles", "mtl_perception/model/ila.py",
      "return loop and stacked <= EAGER_STACK_MAX_BYTES", "return stacked <= EAGER_STACK_MAX_BYTES",
      ["test_ila_batched.py"]),
    # The loader's own key check (check_weights, 3b56a1c): missing and unexpected weights no longer
    # named; what is left is torch's strict load, a traceback instead of a CheckpointError.
    M("model.checkpoint_not_strict", "mtl_perception/model/checkpoint.py",
      '    bad += [(k, "missing") for k in expected if k not in state]\n'
      '    bad += [(k, "not part of the model") for k in state if k not in expected]\n', "", MODEL),
    M("model.checkpoint_not_strict2", "mtl_perception/model/checkpoint.py",
      "    check_weights(state, model.state_dict(), path)\n    model.load_state_dict(state)",
      "    model.load_state_dict(state, strict=False)", MODEL),
    M("scheduler.gap_boundary", "mtl_perception/scheduler.py",
      "stamp_s - last_stamp > self.max_gap_s", "stamp_s - last_stamp >= self.max_gap_s", SCHED),
    M("pipeline.no_reset_on_decision", "mtl_perception/pipeline.py",
      "if decision.reset is not None:\n            self._state = None",
      "if decision.reset is not None:\n            pass", PIPE),
    M("pipeline.state_kept_after_failure", "mtl_perception/pipeline.py",
      "            self._state = None\n            raise", "            raise", PIPE),
    M("pipeline.postprocess_all_tasks", "mtl_perception/pipeline.py",
      "wanted = res.outputs if tasks is None else", "wanted = res.outputs if True else", PIPE),
    M("filter.mode_tie_switches", "mtl_perception/output_filter.py",
      "best = np.where(_votes(h, self._out) == best_n, self._out, best)", "pass", FILT),
    M("filter.hysteresis_one_late", "mtl_perception/output_filter.py", "switch = run >= self.window",
      "switch = run > self.window", FILT),
    M("filter.ema_weight_swapped", "mtl_perception/output_filter.py", "y *= 1 - a", "y *= a", FILT),
    M("pipeline.filter_not_reset", "mtl_perception/pipeline.py", "            flt.reset()\n        is_key",
      "        is_key", FILT),
    M("pipeline.filter_output_dropped", "mtl_perception/pipeline.py", "outputs = flt(outputs)",
      "flt(outputs)", FILT),
    M("node.filter_not_validated", "mtl_perception/node.py",
      "_output_filter({**self._filter_params, **{q.name: q.value for q in params}})", "pass", FILT),
    M("node.shutdown_failure_counted", "mtl_perception/node.py",
      "if self._stopping or not self.context.ok():", "if not self.context.ok():", ["test_node_thread.py"]),
    M("node.reset_service_noop", "mtl_perception/node.py", "self.scheduler.request_reset()", "pass", NODE),
    M("node.depth_millimetres", "mtl_perception/outputs.py",
      'return self._timed("postprocess", valid_depth, d)',
      'return self._timed("postprocess", valid_depth, d * 1000)', ["test_node_outputs.py", *NODE]),
    # the latest-frame drop has its own mutation (node.latest_frame_not_counted); this one is the
    # frame left in the mailbox when the input pauses
    M("node.drops_not_counted", "mtl_perception/node.py",
      "counted like a replaced one\n                        self.dropped += 1",
      "counted like a replaced one\n                        pass", [*NODE, "test_node_thread.py"]),
    M("node.output_resolution_ignored", "mtl_perception/node.py",
      "self.pipeline.output_resolution = prm.value", "pass", NODE),
    M("node.overlay_alpha_ignored", "mtl_perception/node.py", "self.overlay_alpha = prm.value", "pass", NODE),
    M("node.mono8_always", "mtl_perception/node.py",
      '"mono16" if self.loaded.num_classes > 255 else "mono8"', '"mono8"', NODE),
    M("node.errors_not_error_level", "mtl_perception/node.py",
      "level, message = DiagnosticStatus.ERROR,", "level, message = DiagnosticStatus.WARN,", NODE),
    M("node.untrained_not_warn", "mtl_perception/node.py",
      "if not self.loaded.trained:\n            level = max(level, DiagnosticStatus.WARN)",
      "if not self.loaded.trained:\n            pass", NODE),
    M("postprocess.nearest_offset", "mtl_perception/postprocess.py",
      "((np.arange(dst) + 0.5) * src / dst)", "(np.arange(dst) * src / dst)", IMG),
    M("postprocess.depth_millimetres", "mtl_perception/postprocess.py",
      'valid_depth(resize_float(outputs["depth"].astype(np.float32, copy=False), size))',
      'valid_depth(resize_float(outputs["depth"].astype(np.float32, copy=False) * 1000, size))', IMG),
    # Normals normalised plane by plane into the interleaved array (2026-12-03).
    M("postprocess.normals_planes_swapped", "mtl_perception/postprocess.py",
      "np.divide(planes[c], safe, out=out[..., c])", "np.divide(planes[2 - c], safe, out=out[..., c])",
      ["test_imaging.py"] + IMG),
    M("backend.normals_host_axes", "mtl_perception/backends/base.py",
      'host["normals"] = out["normals"][0].transpose(1, 2, 0).astype(np.float32, copy=False)',
      'host["normals"] = np.ascontiguousarray(out["normals"][0].transpose(2, 1, 0)).swapaxes(0, 1)',
      ["test_ort_graph_opts.py"]),
    M("imaging.overlay_swapped", "mtl_perception/imaging.py",
      "colours.astype(np.float32) * a + overlay.astype(np.float32) * (1.0 - a)",
      "colours.astype(np.float32) * (1.0 - a) + overlay.astype(np.float32) * a", IMG),
    # Resume moved to training/checkpointing.py (c15f099).
    M("trainer.scheduler_not_restored", "training/checkpointing.py",
      'self.scheduler.load_state_dict(ckpt["scheduler"])', "pass", TRAIN),
    M("trainer.epoch_sums_not_restored", "training/checkpointing.py",
      'self.epoch_sums = {k: float(v) for k, v in ckpt.get("epoch_sums", {}).items()}',
      "self.epoch_sums = {}", TRAIN),
    M("trainer.best_score_not_restored", "training/checkpointing.py",
      'self.best_score = float(ckpt.get("best_score", -math.inf))', "self.best_score = -math.inf", TRAIN),
    M("trainer.frozen_in_train_mode", "training/trainer.py", "                part.eval()",
      "                pass", TRAIN),
    M("trainer.everything_trains", "training/trainer.py", "on = name in trainable", "on = True", TRAIN),
    M("data.bag_depth_millimetres", "training/data/bag.py", 'depth[t].astype("<f4")',
      '(depth[t] * 1000).astype("<f4")', DATA),
    M("engine.sidecar_ignores_precision", "mtl_perception/backends/export.py",
      "        if meta.get(k) != v:",
      # "builder" is builder_settings(precision): skipping "precision" alone changes nothing
      '        if k not in ("precision", "builder") and meta.get(k) != v:', ENGINE),
    M("seed.task_adv_not_reversed", "training/task_adversarial.py", "discriminator(grad_reverse(g, lam))",
      "discriminator(g)", SEED),
    M("seed.task_adv_not_optimised", "training/trainer.py", "params += list(self.task_adv.parameters())",
      "params += []", SEED),
    M("seed.joint_untrained", "training/parts.py", "    joint = model.joint\n", "    joint = None\n", SEED),
    M("seed.fast_adapters_with_decoders", "training/parts.py",
      'per_encoder = getattr(joint, "per_encoder", dict)()', "per_encoder = {}", SEED),
    M("seed.fast_only_slow_adapters", NET, "pyramid, is_keyframe=False), feats",
      "pyramid, is_keyframe=True), feats", SEED),
    M("seed.all_reduce_not_twice_differentiable", "training/distributed.py",
      "        return _AllReduceSum.apply(grad)",
      "        g = grad.clone()\n        dist.all_reduce(g)\n        return g",
      ["test_distributed_double_backward.py"]),
    M("keys.policy_drift_ignored", NET, "else decision is not None", 'else decision == "reset"', KEYS),
    M("keys.since_key_off_by_one", "mtl_perception/keyframe_policy.py",
      "        since += 1\n        yield reason", "        since += 2\n        yield reason", KEYS),
    # today's behaviours (issue 14/16 follow-ups)
    M("node.latest_frame_not_counted", "mtl_perception/node_input.py",  # the callbacks since b2b1c1a
      "            if self._slot is not None:\n                self.dropped += 1\n"
      "            self._slot = (msg",
      "            self._slot = (msg", ["test_node_thread.py"]),
    M("dds.old_name_on_kilted", "mtl_perception/dds_profile.py",
      'if env.get("ROS_DISTRO", "").strip().lower() in FASTDDS2_DISTROS:', "if True:",
      ["test_dds_profile.py"]),
    M("quant.relu_not_with_conv", "mtl_perception/backends/quantize.py",
      'op_types: tuple[str, ...] = ("Conv", "Clip", "Relu")', 'op_types: tuple[str, ...] = ("Conv",)',
      ["test_quantize_recipes.py"]),
    M("adapt.stillness_weight_linear", "training/adapt/temporal_consistency.py",
      "return torch.exp(-(d / sigma) ** 2)", "return torch.exp(-(d / sigma))",
      ["test_temporal_consistency.py"]),
    # 2 Dec evening: the node's resize, ~/latency, the data subset and damaged-data behaviours
    M("pipeline.resize_not_antialiased", "mtl_perception/preprocess.py",
      'mode="bilinear", antialias=True', 'mode="bilinear", antialias=False', ["test_pipeline_resize.py"]),
    M("pipeline.resize_other_kernel", "mtl_perception/preprocess.py",
      'mode="bilinear", antialias=True', 'mode="bicubic", antialias=True', ["test_pipeline_resize.py"]),
    M("node.latency_without_subscriber", "mtl_perception/node_publish.py",
      "if self.latency_pub.get_subscription_count() == 0:\n            return",
      "if False:\n            return", ["test_node_publish_rules.py"]),
    M("data.max_clips_last_n", "training/data/storage.py", "taken = clips[:max_clips]",
      "taken = clips[-(max_clips or 0):]", ["test_data_subset.py"]),
    M("data.max_clips_ignored", "training/data/storage.py", "taken = clips[:max_clips]", "taken = clips",
      ["test_data_subset.py"]),
    M("data.interrupted_past_subset_fails", "training/data/storage.py",
      "last = taken[-1] if len(taken) < len(clips) else None", "last = None", ["test_data_subset.py"]),
    M("data.worker_error_multiline", "training/data/storage.py",
      'if len(args) == 1 and isinstance(args[0], str) and "\\nOriginal Traceback" in args[0]:',
      "if False:", ["test_data_errors.py"]),
    M("data.decode_error_not_data_error", "training/data/storage.py",
      'raise DataFileError(f"malformed {what} file {path}: {exc}") from exc',
      "raise", ["test_data_errors.py"]),
    M("data.interrupted_clip_skipped", "training/data/storage.py",
      "        if not has_meta[p] and is_clip_folder(p):", "        if False:", ["test_data_errors.py"]),
    M("data.ensure_without_meta", "training/data/cli.py",
      'if all((f / "meta.json").is_file() for f in folders):', "if all(f.is_dir() for f in folders):",
      ["test_data_ensure.py"]),
    M("data.ensure_extra_clips_silent", "training/data/cli.py",
      "    if extra:\n        names", "    if False:\n        names", ["test_data_ensure.py"]),
    M("bench.receiver_child_flag_clash", "bench/node_latency.py",
      "sys.argv[1] == RECEIVER_CHILD:", 'sys.argv[1] == "--receiver":', ["test_bench_node_latency_args.py"]),
    M("quant.pads_folded", "mtl_perception/backends/quantize.py",
      '        if not quantized_conv:\n            node.input.append("")',
      '        if False:\n            node.input.append("")', ["test_quantize_recipes.py"]),
    M("quant.pads_apart_before_quantized_convs", "mtl_perception/backends/quantize.py",
      "and after[0].name not in float_nodes)", "and False)", ["test_quantize_recipes.py"]),
    # On an x86 CPU without VNNI the default u8 x s8 kernel saturates (cpu_features.py).
    M("ort.int8_precise_dropped", "mtl_perception/backends/ort_backend.py",
      'opts.add_session_config_entry("session.x64quantprecision", "1")', "pass",
      ["test_cpu_features.py"]),
    M("quant.verdict_any_kernel", "mtl_perception/backends/quantize.py",
      '"labelled": labels is not None, "ort_int8_kernel": int8_kernel()}',
      '"labelled": labels is not None}', ["test_cpu_inference.py"]),
    # A package update changes the graphs (stacked ILA products, 2026-12-03): timings are redone.
    M("auto.speed_any_exporter", "mtl_perception/backends/cpu_choice.py",
      '"ort_int8_kernel": int8_kernel(),\n            "exporter_sha256": exporter_code_hash()}',
      '"ort_int8_kernel": int8_kernel()}', ["test_cpu_timing.py"]),
    # WiSE-FT interpolation and ship_model.py --set (the default model's stage 5, 2026-12-03).
    M("interp.direction_swapped", "training/weight_interpolation.py", "torch.lerp(a, b, alpha)",
      "torch.lerp(b, a, alpha)", ["test_weight_interpolation.py"]),
    M("interp.counters_from_tuned", "training/weight_interpolation.py",
      "if a.is_floating_point() else a.clone()", "if a.is_floating_point() else b.clone()",
      ["test_weight_interpolation.py"]),
    M("ship.set_ignored", "bench/ship_model.py", "cfg = apply_overrides(cfg, a.overrides)",
      "apply_overrides(cfg, a.overrides)", ["test_ship_model.py"]),
    M("ship.weights_fit_unchecked", "bench/ship_model.py", "model.load_state_dict(state, strict=True)",
      "pass", ["test_ship_model.py"]),
    M("ship.real_video_override_dropped", "bench/real_video.py",
      "model.cfg.propagation.nonkey_slot_weight = a.nonkey_slot_weight", "pass",
      ["test_bench_real_video_args.py"]),
]


def extract(rev: str, dest: Path, subdir: str | None = None) -> None:
    """``git archive rev [subdir]`` into ``dest`` (read-only use of the repository)."""
    cmd = ["git", "-C", str(ROOT), "archive", rev] + ([subdir] if subdir else [])
    tar = subprocess.run(cmd, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)


def make_venv(copy: Path) -> Path:
    """A venv view for the copy: this venv's packages, and console scripts generated from the
    copy's own ``setup.py`` (the installed ones import whatever the working tree's entry points
    name, which an older revision may not have). Tests start the node and tools as scripts next
    to ``sys.executable``, so the copy's versions are what they run."""
    venv = copy / ".mutvenv"
    (venv / "bin").mkdir(parents=True)
    real = Path(sys.prefix)
    (venv / "lib").symlink_to(real / "lib")
    shutil.copy(real / "pyvenv.cfg", venv / "pyvenv.cfg")
    python = venv / "bin" / "python"
    python.symlink_to(Path(sys.executable))
    for name, module, func in re.findall(r'"([\w-]+)\s*=\s*([\w.]+):(\w+)"', (copy / "setup.py").read_text()):
        script = venv / "bin" / name
        script.write_text(f"#!{python}\nimport sys\nfrom {module} import {func}\n"
                          f"if __name__ == '__main__':\n    sys.exit({func}())\n")
        script.chmod(0o755)
    return python


def run_tests(copy: Path, tests: list[str], timeout: float) -> tuple[bool | None, float, str]:
    """(passed, seconds, last output line); passed is None on a timeout."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.monotonic()
    python = str(copy / ".mutvenv" / "bin" / "python")
    # Own process group: a timed-out run takes the node processes it started down with it.
    # A basetemp of its own: pytest's shared default prunes the folders of other users' runs.
    p = subprocess.Popen([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "--basetemp", str(copy / ".pytest_tmp"), *tests], cwd=copy,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, time.monotonic() - t0, "timeout"
    lines = out.strip().splitlines()
    failed = [ln.split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    last = (failed[0] if failed else lines[-1]) if lines else ""
    return rc == 0, time.monotonic() - t0, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", help="revision for both source and tests")
    ap.add_argument("--source-rev", default="HEAD")
    ap.add_argument("--tests-rev", default="HEAD")
    ap.add_argument("--only", default="", help="run mutations whose id starts with one of these "
                    "comma-separated prefixes")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per mutation")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--files", default="", help="only these comma-separated test files of each "
                    "mutation's list (e.g. to leave out one that times out on a loaded machine)")
    ap.add_argument("--json", help="write the verdicts to this file")
    ap.add_argument("--baseline", help="verdicts of a run with a subset of these tests (e.g. the old "
                    "suite): mutations it killed count as killed without a rerun")
    ap.add_argument("--list", action="store_true", help="print the mutation ids with their files and exit")
    args = ap.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.id:40s} {m.path:44s} {','.join(m.tests)}")
        return 0
    src_rev = args.rev or args.source_rev
    tests_rev = args.rev or args.tests_rev
    copy = Path(tempfile.mkdtemp(prefix="mtl_mut_"))
    try:
        extract(src_rev, copy)
        if tests_rev != src_rev:
            shutil.rmtree(copy / "test")
            extract(tests_rev, copy, "test")
        python = make_venv(copy)
        env = dict(os.environ, PYTHONPATH=str(copy))
        probe = ("import mtl_perception.node, mtl_perception.tools.harness as h, training; "
                 "print(mtl_perception.node.__file__); print(training.__file__); "
                 "print(h.console_script('mtl-perception-node'))")
        where = subprocess.run([str(python), "-c", probe],
                               cwd=copy, env=env, capture_output=True, text=True, check=True).stdout.split()
        if not all(w.startswith(str(copy)) for w in where):
            print(f"the copy is not what gets imported: {where}", file=sys.stderr)
            return 1
        print(f"source {src_rev}, tests {tests_rev}, copy {copy}", flush=True)
        ok, secs, last = run_tests(copy, ["test/test_scheduler.py"], args.timeout)
        if not ok:
            print(f"unmutated sanity run failed: {last}", file=sys.stderr)
            return 1
        rows: list[tuple[str, str, float, str]] = []
        baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else {}
        for m in MUTATIONS:
            if not any(m.id.startswith(o) for o in args.only.split(",")):
                continue
            target = copy / m.path
            original = target.read_text()
            if original.count(m.find) != 1:
                rows.append((m.id, "n/a", 0.0, f"snippet found {original.count(m.find)} times"))
                print(f"{m.id:38s} n/a", flush=True)
                continue
            if baseline.get(m.id) == "killed":
                rows.append((m.id, "killed", 0.0, "killed in the baseline run"))
                print(f"{m.id:38s} killed   (baseline)", flush=True)
                continue
            keep = set(args.files.split(",")) if args.files else None
            tests = [f"test/{t}" for t in dict.fromkeys(m.tests)
                     if (copy / "test" / t).exists() and (keep is None or t in keep)]
            try:
                target.write_text(original.replace(m.find, m.replace))
                passed, secs, last = run_tests(copy, tests, args.timeout)
            finally:
                target.write_text(original)
            verdict = "timeout" if passed is None else "SURVIVED" if passed else "killed"
            rows.append((m.id, verdict, secs, last))
            print(f"{m.id:38s} {verdict:8s} {secs:6.0f}s  {last[:90]}", flush=True)
        # A kill counts only if the failing test passes without the mutation (a test that times out
        # on a loaded machine would otherwise "kill" everything).
        killers = {r[3].split(" ", 1)[1] for r in rows
                   if r[1] == "killed" and r[3].startswith(("FAILED", "ERROR"))}
        broken = {t for t in sorted(killers) if not run_tests(copy, [t], args.timeout)[0]}
        if broken:
            print(f"fail without any mutation (their kills not counted): {sorted(broken)}")
            rows = [(i, "invalid", s, t) if v == "killed" and t.split(" ", 1)[-1] in broken else (i, v, s, t)
                    for i, v, s, t in rows]
        print("\n| module | killed | applicable | kill rate |\n|---|---|---|---|")
        modules = dict.fromkeys(r[0].split(".")[0] for r in rows)
        tot_k = tot_n = 0
        for mod in modules:
            rs = [r for r in rows if r[0].split(".")[0] == mod and r[1] in ("killed", "SURVIVED")]
            k = sum(r[1] == "killed" for r in rs)
            tot_k, tot_n = tot_k + k, tot_n + len(rs)
            print(f"| {mod} | {k} | {len(rs)} | {100 * k / max(1, len(rs)):.0f}% |")
        print(f"| all | {tot_k} | {tot_n} | {100 * tot_k / max(1, tot_n):.0f}% |")
        survivors = [r[0] for r in rows if r[1] == "SURVIVED"]
        print("survivors: " + (", ".join(survivors) if survivors else "none"))
        timeouts = [r[0] for r in rows if r[1] == "timeout"]
        if timeouts:
            print("timed out (not counted): " + ", ".join(timeouts))
        if args.json:
            Path(args.json).write_text(json.dumps({r[0]: r[1] for r in rows}, indent=1))
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
