"""Turn a training checkpoint into a shipped model file (models/<name>.pt): the network input size it
runs at, no encoder-init paths (the weights are in the state dict), and a meta block with the card's
figures. Loads with ``torch.load(weights_only=True)`` like every checkpoint here.

    python bench/ship_model.py --checkpoint runs/street_lite_adapt/stage_joint.pt \
        --out models/mila_street_lite.pt --input-size 192x384 --meta meta.json \
        --set propagation.nonkey_slot_weight=0.25

``--set KEY=VALUE`` changes a model-config field that carries no weights (an inference-time option
such as the slot weight); the checkpoint's weights must load strictly into the changed model.
``--tuned CKPT --alpha A`` ships ``(1 - A) * checkpoint + A * tuned`` (WiSE-FT weight interpolation
between a model and a fine-tune of it: ``training/weight_interpolation.py``). One line each and
nothing written for: exit 1, a checkpoint that is missing or unreadable; exit 2, a bad ``--set``
(also one whose weights no longer fit), ``--alpha`` or a ``--tuned`` checkpoint of another network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtl_perception.model import MultiTaskVideoNet  # noqa: E402
from mtl_perception.model.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from mtl_perception.model.config import ModelConfig  # noqa: E402
from training.config import ConfigError, apply_overrides  # noqa: E402
from training.weight_interpolation import InterpolationError, interpolate_state_dicts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--input-size", required=True, help="HxW the shipped network runs at")
    ap.add_argument("--meta", default=None, help="JSON merged into the file's meta (card figures)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="model-config field to change, e.g. propagation.nonkey_slot_weight=0.25")
    ap.add_argument("--tuned", default=None, help="a fine-tune of --checkpoint to interpolate toward")
    ap.add_argument("--alpha", type=float, default=None,
                    help="with --tuned: weight of the fine-tune, 0 (checkpoint) to 1 (fine-tune)")
    a = ap.parse_args(argv)
    if (a.tuned is None) != (a.alpha is None):
        print("error: --tuned and --alpha go together", file=sys.stderr)
        return 2
    try:
        ckpt = read_checkpoint(a.checkpoint)
        tuned = read_checkpoint(a.tuned) if a.tuned is not None else None
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cfg = dict(ckpt["model_config"])
    cfg["input_size"] = [int(v) for v in a.input_size.lower().split("x")]
    cfg["slow"] = {**cfg["slow"], "weights": None}
    cfg["fast"] = {**cfg["fast"], "weights": None}
    try:
        cfg = apply_overrides(cfg, a.overrides)
        model = MultiTaskVideoNet(ModelConfig.from_dict(cfg))
    except (ConfigError, ValueError, TypeError) as e:
        print(f"error: --set: {e}", file=sys.stderr)
        return 2
    src = ckpt.get("meta", {})
    meta = {"trained": True, "source_checkpoint": str(a.checkpoint), "stage": src.get("stage"),
            "step": src.get("step")}
    state = ckpt["state_dict"]
    if tuned is not None:
        try:
            state = interpolate_state_dicts(state, tuned["state_dict"], a.alpha)
        except InterpolationError as e:
            print(f"error: --tuned {a.tuned}: {e}", file=sys.stderr)
            return 2
        meta.update({"interpolated_with": str(a.tuned), "alpha": a.alpha})
    try:  # a --set that changes a weight's shape (channels, classes) cannot ship these weights
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = str(e).splitlines()
        detail = (lines[1] if len(lines) > 1 else lines[0]).strip()
        print(f"error: --set: the weights do not fit the changed model config ({detail})", file=sys.stderr)
        return 2
    if a.meta:
        meta.update(json.loads(Path(a.meta).read_text()))
    state = {k: v.contiguous() for k, v in state.items()}
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    # The model was built from ``cfg`` and loaded ``state`` strictly above; temp file + rename: never
    # a half-written model file under the shipped name.
    torch.save({"model_config": cfg, "state_dict": state, "meta": meta}, tmp)
    os.replace(tmp, out)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MB, input {cfg['input_size']}, meta {sorted(meta)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
