"""``mtl-train``: train a MILA slow-fast multi-task network (stages, AMP, torchrun + DDP).

    mtl-train --config config/train/tiny.yaml [--amp bf16] [--resume]
    torchrun --nproc_per_node=2 -m training.train --config config/train/tiny.yaml

Exit codes: 0 done; 1 runtime error (no readable checkpoint to resume, no space left on the
device); 2 usage or config error. See docs/training.md.
"""

from __future__ import annotations

import argparse
import errno
import sys

from mtl_perception.model.checkpoint import CheckpointError
from mtl_perception.model.config import ConfigError

from . import distributed as dist_utils
from .amp import AMP_MODES
from .config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtl-train", description=__doc__.split("\n\n")[0],
                                epilog="Multi-process: launch this module with torchrun (docs/training.md).")
    p.add_argument("--config", required=True, help="config/train/NAME.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set optim.lr=3e-4")
    p.add_argument("--out", help="run folder (overrides `out`)")
    p.add_argument("--amp", choices=AMP_MODES, help="mixed precision (overrides `amp`)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from the newest readable checkpoint of OUT (or CKPT) where the run stopped")
    p.add_argument("--halt-at-step", type=int, help="stop after this global step as if killed (tests)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = dist_utils.context_from_env()
    overrides = list(args.overrides) + ([f"out={args.out}"] if args.out else []) + \
        ([f"amp={args.amp}"] if args.amp else [])

    def fail(msg: str, code: int) -> int:
        if ctx.main:  # one line, not one per rank
            print(f"mtl-train: {msg}", file=sys.stderr)
        dist_utils.teardown()
        return code

    from .trainer import Trainer

    try:
        cfg = TrainConfig.from_yaml(args.config, overrides)
        trainer = Trainer(cfg, resume=args.resume, halt_at_step=args.halt_at_step,
                          progress=not args.no_progress, dist=ctx)
    except (ConfigError, FileNotFoundError) as e:
        return fail(str(e), 2)
    except CheckpointError as e:
        return fail(str(e), 1)
    except OSError as e:
        return fail(_os_error(e), 1)
    try:
        trainer.run()
    except OSError as e:
        return fail(_os_error(e), 1)
    if ctx.main:
        print(f"mtl-train: done at step {trainer.step}; checkpoints in {trainer.out}")
    dist_utils.teardown()
    return 0


def _os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return e.strerror if e.strerror and "no space" in e.strerror else f"no space left on device ({e})"
    return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)


if __name__ == "__main__":
    sys.exit(main())
