"""Model checkpoints: one format shared by the trainer (which adds optimiser state) and the node.

A checkpoint is a ``torch.save``'d dict with at least ``model_config`` (the ModelConfig as plain
data) and ``state_dict``; ``meta`` holds free-form provenance (``trained``: bool, dataset, step...).
Loading uses ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from .config import ConfigError, ModelConfig
from .network import MultiTaskVideoNet


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not match its model; names the field."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`mtl_perception.atomic.atomic_path`: a kill mid-write leaves
    the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_model(model: MultiTaskVideoNet, path: str | Path, meta: dict[str, Any] | None = None,
               **extra: Any) -> None:
    save_atomic({"model_config": model.cfg.to_dict(), "state_dict": model.state_dict(),
                 "meta": dict(meta or {}), **extra}, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint: no such file {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot be read ({e})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a dict, got {type(ckpt).__name__}")
    for key in ("model_config", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {str(path)!r}: missing field '{key}'")
    return ckpt


def load_model(path: str | Path, map_location: str | torch.device = "cpu"
               ) -> tuple[MultiTaskVideoNet, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights; returns (model, meta)."""
    ckpt = read_checkpoint(path)
    try:
        cfg = ModelConfig.from_dict(ckpt["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: model_config.{e}") from None
    # Encoder init weights were already baked into the state dict; don't require the file.
    cfg.slow.weights = cfg.fast.weights = None
    model = MultiTaskVideoNet(cfg)
    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: state_dict is a {type(state).__name__}, not a dict")
    check_weights(state, model.state_dict(), path)
    model.load_state_dict(state)
    model.eval()
    return model.to(map_location), dict(ckpt.get("meta") or {})


def check_weights(state: dict[str, Any], expected: dict[str, torch.Tensor], path: str | Path) -> None:
    """One-line :class:`CheckpointError` naming the first weight that does not fit the model its
    ``model_config`` builds (missing, unexpected, other shape) or that is not finite: torch's own
    ``size mismatch`` error is a 200-line traceback, and NaN weights would publish NaN depth."""
    def shape(t: Any) -> tuple[int, ...] | str:
        return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__

    bad = [(k, f"shape {shape(state[k])} in the file, {tuple(v.shape)} for its model_config")
           for k, v in expected.items() if k in state and shape(state[k]) != tuple(v.shape)]
    bad += [(k, "missing") for k in expected if k not in state]
    bad += [(k, "not part of the model") for k in state if k not in expected]
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not match its model_config: {len(bad)} "
                              f"mismatching key(s), first '{bad[0][0]}' ({bad[0][1]})")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise CheckpointError(f"checkpoint {str(path)!r}: {len(nonfinite)} weight tensor(s) hold NaN or inf, "
                              f"first '{nonfinite[0]}'")
