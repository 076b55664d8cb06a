"""The evaluation protocol of MILA Sec. 4.1 and ``mtl-eval``.

An annotated frame is the last frame of a clip. For keyframe interval K it is evaluated K times,
once per offset 0..K-1 (the annotated frame lies `offset` frames after the latest keyframe), by
streaming the whole clip through the model with that schedule; accuracy is pooled over all offsets
and MACs of the annotated frame's step are averaged over them. Every benchmark (training
validation, ``mtl-eval``, ``bench/ablation.py``) calls :func:`evaluate`.

Modes:
    slowfast  the model as configured, keyframe interval K (the paper's D101-18 rows)
    slow      every frame a keyframe (K = 1): slow encoder only ("D101-MultiTask")
    fast      every frame through the fast encoder and the shared decoders, no propagation
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from mtl_perception.model import MultiTaskVideoNet, keyframe_flags, load_model
from mtl_perception.model.flops import call_macs

from .metrics import MultiTaskMeter, delta_m

MODES = ("slowfast", "slow", "fast")


# -- running a stream ---------------------------------------------------------------------------
def fast_step(model: MultiTaskVideoNet, image: Tensor, return_features: bool = False) -> dict[str, Tensor]:
    """One frame through the fast encoder and the shared decoders ("fast only"; MTI-Net gets
    the fast trunk's pyramid)."""
    out, feats = model.fast_only(image)
    if return_features:
        out["features"] = feats
    return out


def run_clip(model: MultiTaskVideoNet, clip: Tensor, mode: str, keyframe_interval: int,
             offset: int) -> dict[str, Tensor]:
    """Outputs for the last frame of ``clip`` (B, T, 3, H, W) under ``mode``."""
    if mode == "fast":
        # No state is carried, so earlier frames cannot change the result: skip them.
        return fast_step(model, clip[:, -1])
    if mode == "slow":
        keyframe_interval, offset = 1, 0
    elif mode != "slowfast":
        raise ValueError(f"mode {mode!r}; allowed: {list(MODES)}")
    outs, _ = model.forward_clip(clip, keyframe_interval, offset)
    return outs[-1]


# -- MACs ---------------------------------------------------------------------------------------
@torch.no_grad()
def step_macs(model: MultiTaskVideoNet, mode: str, keyframe_interval: int, offset: int,
              clip_len: int, size: tuple[int, int] | None = None) -> float:
    """MACs of the annotated (last) frame's step in a ``clip_len``-frame stream, batch 1.

    Counted by :func:`mtl_perception.model.flops.count_macs` (thop plus the attention rule) on
    the real step with the real stream state, so a keyframe with a past non-keyframe source, or a
    non-keyframe with two sources, costs what it costs in the stream.
    """
    h, w = size or model.cfg.input_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    state, is_key = None, True
    if mode != "fast":
        K, off = (1, 0) if mode == "slow" else (keyframe_interval, offset)
        flags = keyframe_flags(clip_len, K, off)
        image = torch.zeros(1, 3, h, w, device=device)
        for f in flags[:-1]:
            state = model.step(image, state, f)[1]
        is_key = flags[-1]
    if mode == "fast":
        fn = lambda im: fast_step(model, im)  # noqa: E731
    else:
        fn = lambda im: model.step(im, state, is_key)[0]  # noqa: E731
    macs = call_macs(model, fn, torch.zeros(1, 3, h, w, device=device))
    model.train(was_training)
    return float(macs)


# -- the protocol -------------------------------------------------------------------------------
def _offsets(mode: str, keyframe_interval: int, offsets: str | Sequence[int]) -> list[int]:
    if mode != "slowfast":
        return [0]
    if offsets == "all":
        return list(range(keyframe_interval))
    if offsets == "last":
        return [keyframe_interval - 1]
    return [int(o) for o in offsets]


@torch.no_grad()
def evaluate(model: MultiTaskVideoNet, data: Dataset | DataLoader, mode: str = "slowfast",
             keyframe_interval: int = 5, offsets: str | Sequence[int] = "all", max_clips: int = 0,
             batch_size: int = 4, device: str | torch.device = "cpu", progress: bool = False,
             count_macs: bool = True) -> dict[str, float]:
    """Accuracy pooled over annotated frames x keyframe offsets, and average MACs per frame.

    Returns the metric dict of :class:`MultiTaskMeter` plus ``macs`` (per frame, averaged over
    the offsets), ``frames`` (annotated frames) and ``evaluations`` (frames x offsets).
    """
    if isinstance(data, DataLoader):
        loader = data
    else:
        if max_clips:
            data = Subset(data, range(min(max_clips, len(data))))  # type: ignore[arg-type]
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    offs = _offsets(mode, keyframe_interval, offsets)
    was_training = model.training
    model.eval()
    meter = MultiTaskMeter(model.tasks, model.cfg.num_classes)
    frames = evaluations = 0
    clip_len = 1
    for batch in tqdm(loader, desc=f"eval {mode}", disable=not progress, leave=False):
        clip = batch["images"].to(device)
        clip_len = clip.shape[1]
        targets = {t: batch[t].to(device) for t in model.tasks if t in batch}
        frames += clip.shape[0]
        for o in offs:
            out = run_clip(model, clip, mode, keyframe_interval, o)
            meter.update(out, targets)
            evaluations += clip.shape[0]
    result = meter.compute()
    if count_macs:
        result["macs"] = sum(step_macs(model, mode, keyframe_interval, o, clip_len) for o in offs) / len(offs)
    result["frames"] = float(frames)
    result["evaluations"] = float(evaluations)
    model.train(was_training)
    return result


# -- tables -------------------------------------------------------------------------------------
COLUMNS: list[tuple[str, str, str]] = [  # (metric key, header, format)
    ("miou", "mIoU↑", "{:.1f}"), ("pixel_acc", "Acc↑", "{:.1f}"),
    ("abs_err", "Abs↓", "{:.3f}"), ("abs_rel", "Rel%↓", "{:.1f}"), ("rmse", "RMSE↓", "{:.3f}"),
    ("delta1", "δ<1.25↑", "{:.1f}"),
    ("mean_angle", "Mean°↓", "{:.1f}"), ("median_angle", "Med°↓", "{:.1f}"),
    ("within_11_25", "11.25↑", "{:.1f}"), ("within_22_5", "22.5↑", "{:.1f}"), ("within_30", "30↑", "{:.1f}"),
    ("delta_m", "Δm%↑", "{:+.2f}"), ("macs", "MACs", "{}"),
]


def _fmt_macs(values: Iterable[float]) -> tuple[str, float]:
    vals = [v for v in values if v == v]
    if vals and max(vals) >= 1e9:
        return "GMACs", 1e9
    return "MMACs", 1e6


def format_table(rows: Sequence[tuple[str, Mapping[str, float]]], baseline: str | None = None) -> str:
    """Markdown table, one row per (name, metrics); ``delta_m`` (if present) is printed as is."""
    present = [c for c in COLUMNS if any(c[0] in m for _, m in rows)]
    unit, scale = _fmt_macs(m.get("macs", math.nan) for _, m in rows)
    headers = ["Model"] + [unit + "/frame" if k == "macs" else h for k, h, _ in present]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for name, m in rows:
        cells = [name]
        for k, _, fmt in present:
            v = m.get(k, math.nan)
            if k == "abs_rel":
                v = 100.0 * v
            if k == "macs":
                cells.append(f"{v / scale:.2f}" if v == v else "-")
            else:
                cells.append(fmt.format(v) if v == v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if baseline:
        lines.append(f"\nΔm: MTI-Net Eq. 2 over mIoU, depth abs. error and mean normal angle, "
                     f"vs. '{baseline}'.")
    return "\n".join(lines)


def add_delta_m(rows: list[tuple[str, dict[str, float]]], baseline_index: int = 0) -> None:
    base = rows[baseline_index][1]
    for _, m in rows:
        try:
            m["delta_m"] = delta_m(m, base)
        except ValueError:
            m["delta_m"] = math.nan


# -- CLI ----------------------------------------------------------------------------------------
def build_dataset(root: str, clip_len: int, keyframe_interval: int, size: tuple[int, int], stride: int,
                  model_tasks: tuple[str, ...] | None = None, num_classes: int | None = None) -> Dataset:
    """``root``: a synthetic folder, or a dataset spec as a YAML mapping (docs/data.md), e.g.
    ``{type: cityscapes, root: /data/cityscapes, options: {num_classes: 7}}`` (split val)."""
    from .data import SyntheticClipDataset

    if root.lstrip().startswith("{"):  # a dataset spec: any registered type
        from .data.registry import ClipSettings, build_from_text

        clip = ClipSettings(clip_len, keyframe_interval, size, stride)
        return build_from_text(root, "--data", "val", clip, model_tasks, num_classes)
    # Offsets are driven by the protocol here, not by the dataset: ask for offset 0.
    return SyntheticClipDataset(root, clip_len=clip_len, keyframe_interval=keyframe_interval,
                                keyframe_offset=0, size=size, stride=stride)


def protocol_rows(checkpoints: Sequence[str], data: Dataset, keyframe_interval: int,
                  baselines: bool = True, max_clips: int = 0, batch_size: int = 4,
                  device: str = "cpu", progress: bool = True) -> list[tuple[str, dict[str, float]]]:
    """The table rows: for the first checkpoint slow-only (K=1) and fast-only baselines, then
    every checkpoint under the slow-fast protocol, named by its ``meta['variant']``."""
    rows: list[tuple[str, dict[str, float]]] = []
    for i, path in enumerate(checkpoints):
        model, meta = load_model(path, map_location=device)
        name = str(meta.get("variant") or Path(path).stem)
        kw = dict(data=data, keyframe_interval=keyframe_interval, max_clips=max_clips,
                  batch_size=batch_size, device=device, progress=progress)
        if i == 0 and baselines:
            rows.append(("slow only (K=1)", evaluate(model, mode="slow", **kw)))
            if model.fast is not None:
                rows.append(("fast only", evaluate(model, mode="fast", **kw)))
        rows.append((name, evaluate(model, mode="slowfast", **kw)))
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="one or more training checkpoints")
    p.add_argument("--data", required=True, help="a folder of clips written by `mtl-data generate`, or a "
                   "dataset spec: '{type: cityscapes, root: DIR, options: {num_classes: 7}}' (docs/data.md)")
    p.add_argument("--keyframe-interval", "-K", type=int, default=5)
    p.add_argument("--clip-len", type=int, default=0, help="frames per clip (default: K + 1)")
    p.add_argument("--stride", type=int, default=4, help="every n-th annotated frame of a clip")
    p.add_argument("--max-clips", type=int, default=0, help="evaluate at most this many clips (0 = all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-baselines", action="store_true", help="skip the slow-only / fast-only rows")
    p.add_argument("--json", help="also write the rows to this JSON file")
    # Temporal consistency (training/stream_eval.py): whole clips streamed under a keyframe policy.
    p.add_argument("--temporal", metavar="DIR", help="also stream every clip whole and write the temporal-"
                   "consistency report (DIR/<model>/temporal.json, temporal.png)")
    p.add_argument("--keyframe-policy", choices=("fixed", "adaptive"), default="fixed",
                   help="keyframes of the --temporal run (fixed: every K-th)")
    p.add_argument("--keyframe-min-interval", type=int, default=2)
    p.add_argument("--keyframe-max-interval", type=int, default=15)
    p.add_argument("--keyframe-target-rate", type=float, default=0.2)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit 0, 1 on a bad checkpoint or data (one line naming the file), 2 on a usage error."""
    from mtl_perception.model import CheckpointError, ConfigError

    from .data.storage import DataFileError

    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (CheckpointError, ConfigError, FileNotFoundError, DataFileError) as e:
        print(f"mtl-eval: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    for path in args.checkpoint[1:]:  # all of them before the first long evaluation
        load_model(path)
    first, _ = load_model(args.checkpoint[0])
    clip_len = args.clip_len or args.keyframe_interval + 1
    data = build_dataset(args.data, clip_len, args.keyframe_interval, tuple(first.cfg.input_size),
                         args.stride, first.cfg.tasks, first.cfg.num_classes)
    if len(data) == 0:
        print(f"mtl-eval: no clips of {clip_len} frames under {args.data}", file=sys.stderr)
        return 2
    rows = protocol_rows(args.checkpoint, data, args.keyframe_interval, not args.no_baselines,
                         args.max_clips, args.batch_size, args.device)
    add_delta_m(rows, 0)
    print(format_table(rows, baseline=rows[0][0]))
    if args.json:
        Path(args.json).write_text(json.dumps([{"name": n, **m} for n, m in rows], indent=1))
    if args.temporal:
        return _temporal(args)
    return 0


def _temporal(args: argparse.Namespace) -> int:
    """``--temporal``: per checkpoint, every clip streamed whole under the chosen keyframe policy."""
    from mtl_perception.keyframe_policy import make_policy
    from mtl_perception.temporal import format_summary

    from .stream_eval import load_synthetic, stream_evaluate

    def policy():  # a fresh one per clip (each clip is a new stream)
        return make_policy(args.keyframe_policy, interval=args.keyframe_interval,
                           min_interval=args.keyframe_min_interval, max_interval=args.keyframe_max_interval,
                           target_rate=args.keyframe_target_rate)

    try:
        policy()
    except ValueError as e:
        print(f"mtl-eval: {e}", file=sys.stderr)
        return 2
    for path in args.checkpoint:
        model, meta = load_model(path, map_location=args.device)
        name = str(meta.get("variant") or Path(path).stem)
        seqs = load_synthetic(args.data, tuple(model.cfg.input_size), args.max_clips)
        result, temporal = stream_evaluate(model, seqs, policy, args.device)
        folder = Path(args.temporal) / Path(path).stem  # the variant name may hold spaces
        temporal.write(folder)
        miou = result.get("miou", float("nan"))
        print(f"\n{name}, {args.keyframe_policy} keyframes, whole clips: mIoU {miou:.1f}, "
              f"{result['macs'] / 1e6:.1f} MMACs/frame")
        print(format_summary(temporal.summary()))
        print(f"-> {folder}/temporal.json, temporal.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
