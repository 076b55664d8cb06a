"""INT8 post-training gates of one or more checkpoints, in the two forms docs/cpu_inference.md
reports (the QAT table): strict on a real video (FP32 outputs as labels, what
``mtl-perception-quantize --video`` does) and against ground truth on labelled synthetic clips
(``mtl-data generate`` output). Each recipe of ``quantize.RECIPES`` is quantized and gated
separately (not the ladder's first pass), so both rows are always printed.

    python bench/qat_gates.py --checkpoint models/mila_street_lite.pt runs/qat/qat_final.pt \
        --video bikes.mp4 --synthetic /tmp/h5_val --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mtl_perception.backends.calibration import clips_from_video, labelled_clips_from_images, split_clips
from mtl_perception.backends.quantize import RECIPES, ensure_int8
from mtl_perception.model import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True)
    p.add_argument("--video", help="real video: strict gates (FP32 as labels)")
    p.add_argument("--synthetic", help="mtl-data generate folder: gates against ground truth")
    p.add_argument("--clip-len", type=int, default=10)
    p.add_argument("--max-frames", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=None, help="default: a temporary folder")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache_dir or tmp
        for ck in a.checkpoint:
            model = load_model(ck)[0]
            size = tuple(model.cfg.input_size)
            sources = []
            if a.video:
                clips = clips_from_video(a.video, size, a.clip_len, a.max_frames)
                calib, held = split_clips(clips)
                sources.append(("video strict", calib, held, None))
            if a.synthetic:
                clips, labels, _ = labelled_clips_from_images(a.synthetic, size, a.clip_len, None)
                if labels is None:  # the third value is the class names, not a reason
                    print(f"error: --synthetic: {a.synthetic} is not mtl-data generate output with every "
                          "frame labelled", file=sys.stderr)
                    return 2
                # labels split like their clips (as mtl-perception-quantize does)
                sources.append(("synthetic labels", *split_clips(clips), split_clips(labels)[1]))
            for name, calib, held, labels in sources:
                for r, st in enumerate(RECIPES):
                    res = ensure_int8(model, calib, held, cache, size, st, threads=a.threads, labels=labels)
                    m = res.metrics
                    row = {"checkpoint": ck, "source": name, "recipe": r + 1,
                           "keep_float": list(st.keep_float), "passed": res.precision == "int8",
                           "held_out_frames": int(sum(len(c) for c in held)), **m}
                    rows.append(row)
                    print(f"{ck} | {name} | recipe {r + 1} ({st.describe()}) | "
                          f"{'PASS' if row['passed'] else 'miss'} | agree {100 * m['agreement']:.2f}% | "
                          f"mIoU {100 * m['miou_test']:.2f} (FP32 {100 * m['miou_ref']:.2f}) | "
                          f"abs-rel {100 * m['absrel_test']:.2f}% (FP32 {100 * m['absrel_ref']:.2f}%) | "
                          f"normals {m['deg_test']:.2f} (FP32 {m['deg_ref']:.2f}) deg", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
