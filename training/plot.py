"""``mtl-plot RUN_DIR``: PNG curves of a training run (per-step losses, per-epoch validation)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

LOSS_KEYS = ("total", "semantic", "depth", "normals", "align_l1", "align_adv")
VAL_PANELS = (
    ("Semantic", ("val_miou", "val_pixel_acc"), "%"),
    ("Depth", ("val_abs_err", "val_rmse"), "m"),
    ("Normals", ("val_mean_angle", "val_median_angle"), "degrees"),
    ("Score", ("val_score",), "Δm % vs. stage start"),
)


def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_run(run: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write ``losses.png`` and ``validation.png`` into ``out`` (default: the run folder)."""
    run = Path(run)
    out = Path(out) if out else run
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    steps_file = run / "steps.jsonl"
    if steps_file.exists():
        recs = [json.loads(ln) for ln in steps_file.read_text().splitlines() if ln.strip()]
        keys = [k for k in LOSS_KEYS if any(k in r for r in recs)]
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(r["step"], r[k]) for r in recs if k in r]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, alpha=0.3, lw=0.8)
            ax.plot(xs, _smooth(ys, 10), lw=1.5)
            ax.set_title(k)
            ax.set_xlabel("step")
            # Stage boundaries: where the loss changes meaning.
            for a, b in zip(recs, recs[1:]):
                if a["stage"] != b["stage"]:
                    ax.axvline(b["step"], color="gray", ls=":", lw=0.8)
        fig.tight_layout()
        path = out / "losses.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    metrics_file = run / "metrics.json"
    if metrics_file.exists():
        rows = json.loads(metrics_file.read_text())
        fig, axes = plt.subplots(1, len(VAL_PANELS), figsize=(3.6 * len(VAL_PANELS), 3), squeeze=False)
        for ax, (title, keys, unit) in zip(axes[0], VAL_PANELS):
            for k in keys:
                pts = [(r["step"], r[k]) for r in rows if k in r]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k[4:])
            for r in rows:
                ax.annotate(r["stage"], (r["step"], ax.get_ylim()[0]), fontsize=6, rotation=90, alpha=0.5)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.set_ylabel(unit)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "validation.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mtl-plot", description=__doc__)
    p.add_argument("run", help="a run folder written by mtl-train")
    p.add_argument("--out", help="where to write the PNGs (default: the run folder)")
    args = p.parse_args(argv)
    written = plot_run(args.run, args.out)
    if not written:
        print(f"mtl-plot: no steps.jsonl or metrics.json in {args.run}", file=sys.stderr)
        return 2
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
