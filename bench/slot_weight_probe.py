"""Probe (issue 16): scale what the memory slots propagate at test time, then run bench/real_video.py.

    python bench/slot_weight_probe.py --nonkey-weight 0.5 -- --modes slow-fast --max-frames 150 --threads 2
    python bench/slot_weight_probe.py --nonkey-weight 0.5 -- --modes slow-fast \
        --clips runs/street/val --filter none

``--nonkey-weight W``: at non-keyframes, the last non-keyframe's slot enters the average fusion
with weight W instead of 1 (the keyframe slot keeps 1); ``--keyframe-weight W``: the same slot at
keyframes. The model was trained with 1 everywhere; this only asks what another weight would do
to flicker and accuracy before anything is built or retrained (docs/keyframes.md). Everything
after ``--`` goes to bench/real_video.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_video  # noqa: E402

from mtl_perception.model.network import MultiTaskVideoNet  # noqa: E402


def patch(nonkey_weight: float, keyframe_weight: float) -> None:
    step = MultiTaskVideoNet.step

    def weighted(self: MultiTaskVideoNet, image: Any, state: Any, is_keyframe: bool,
                 return_features: bool = False) -> Any:
        w = keyframe_weight if is_keyframe else nonkey_weight
        if state is not None and state.nonkey is not None and w != 1.0:
            state = dataclasses.replace(state, nonkey=dataclasses.replace(state.nonkey, weight=w))
        return step(self, image, state, is_keyframe, return_features)

    MultiTaskVideoNet.step = weighted  # type: ignore[method-assign]


def main() -> int:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nonkey-weight", type=float, default=1.0)
    ap.add_argument("--keyframe-weight", type=float, default=1.0)
    a = ap.parse_args(own)
    patch(a.nonkey_weight, a.keyframe_weight)
    print(f"slot weights: last non-keyframe at non-keyframes {a.nonkey_weight}, at keyframes "
          f"{a.keyframe_weight}", flush=True)
    return real_video.main(rest)


if __name__ == "__main__":
    sys.exit(main())
