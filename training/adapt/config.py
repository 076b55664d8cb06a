"""The ``adapt:`` section of a training config (docs/adaptation.md): which registered adaptation
method, its weight and discriminator width, the stages it runs in, and whether the intermediate
(auxiliary) outputs of a cross-task decoder are aligned too. ``data.target`` names the unlabelled
target-domain source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtl_perception.model.config import ConfigError, require

from .keyframe_arrival import ArrivalConfig
from .keyframe_consistency import ConsistencyConfig
from .output_adversary import ADAPTATION, LAMBDA_ADV
from .temporal_consistency import TemporalConfig

BN_STATS = ("train", "frozen")


@dataclass
class AdaptConfig:
    # a name of training.adapt.ADAPTATION (mtl_uda | stl_uda | keyframe_consistency
    # | temporal_consistency | keyframe_arrival)
    method: str = "mtl_uda"
    lambda_adv: float = LAMBDA_ADV  # DenseMTL App. B.3: 5e-3
    disc_hidden: int = 32
    # Stage names whose steps mix a target batch into every source batch.
    stages: tuple[str, ...] = ("joint",)
    intermediate: bool = True  # also align aux.<task> outputs (DenseMTL, MTI-Net); no-op for se_conv
    # keyframe_consistency's weights, shift and jitter (training/adapt/keyframe_consistency.py)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    # temporal_consistency's consecutive-frame term, teacher temperature and entropy
    # (training/adapt/temporal_consistency.py); also reads ``consistency``
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    # keyframe_arrival's term (training/adapt/keyframe_arrival.py); also reads the two above
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    # BN running statistics while the stage adapts: "train" (source and target batches update
    # them, as before) | "frozen" (kept at the init model's; every batch still normalises with its
    # own statistics in train mode). Frozen keeps the target video out of the statistics the
    # synthetic evaluation uses (docs/adaptation.md, "Keyframe arrival").
    bn_stats: str = "train"

    def validate(self, prefix: str, tasks: tuple[str, ...], stage_names: list[str], target: Any) -> None:
        """``tasks``: the model's; ``stage_names``: the config's stages; ``target``: data.target."""
        # The trainer's stage names; imported here because training.config imports this module.
        from ..config import STAGES

        require(self.method in ADAPTATION, f"{prefix}.method", self.method, str(ADAPTATION.names()))
        lo, hi = ADAPTATION.get(self.method).task_counts
        if len(tasks) < lo or (hi is not None and len(tasks) > hi):
            want = f"exactly {lo}" if lo == hi else f"at least {lo}"
            raise ConfigError(f"{prefix}.method: {self.method!r} is for models with {want} task(s); the "
                              f"model has {list(tasks)}" + (" (stl_uda: one run per task with "
                              "model_override.tasks: [TASK])" if lo == hi == 1 else " (use stl_uda)"))
        require(self.lambda_adv >= 0, f"{prefix}.lambda_adv", self.lambda_adv, ">= 0")
        self.consistency.validate(f"{prefix}.consistency")
        self.temporal.validate(f"{prefix}.temporal")
        self.arrival.validate(f"{prefix}.arrival")
        require(self.bn_stats in BN_STATS, f"{prefix}.bn_stats", self.bn_stats, str(list(BN_STATS)))
        require(self.disc_hidden >= 1, f"{prefix}.disc_hidden", self.disc_hidden, "an integer >= 1")
        require(len(self.stages) > 0 and all(s in STAGES for s in self.stages), f"{prefix}.stages",
                list(self.stages), f"a non-empty list of names from {list(STAGES)}")
        require(any(s in stage_names for s in self.stages), f"{prefix}.stages", list(self.stages),
                f"at least one stage the schedule runs ({stage_names})")
        if target is None:
            raise ConfigError("data.target: missing; adaptation needs an unlabelled target-domain source, "
                              "e.g. data.target: {type: video, paths: [drive.mp4]}")
