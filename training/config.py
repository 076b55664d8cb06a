"""Training configuration: dataclasses loaded from YAML, validated field by field, overridable
from the command line (``--set optim.lr=3e-4``).

The schedule is a list of stages (supplementary A): ``slow`` multi-task pretraining of the slow
encoder on single frames, ``fast`` pretraining of the fast encoder (decoders shared and frozen, so
the fast encoder learns to feed the same decoders), ``joint`` slow-fast training on clips with
keyframe interval K, random keyframe offsets and ILA in the loop.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtl_perception.model.config import ConfigError, ModelConfig, from_dict, require, to_plain

from .adapt.config import AdaptConfig
from .amp import AMP_MODES
from .losses import DEPTH_LOSSES
from .qat import QatConfig
from .task_adversarial import TaskAdversarialConfig
from .weighting import WEIGHTINGS

STAGES = ("slow", "fast", "joint")
PARTS = ("slow", "fast", "decoders", "propagation")
SCHEDULES = ("constant", "step", "cosine")


@dataclass
class DatasetSpec:
    """One dataset of a registered type (:mod:`training.data.registry`, docs/data.md): ``root`` for
    folder layouts, ``paths`` for video/bag files, ``split`` ('' = the role's: train or val),
    the type's ``options`` (e.g. cityscapes ``num_classes: 7``) and ``max_clips``."""

    type: str = "synthetic"
    root: str = ""
    split: str = ""
    paths: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    # Only the first N clips in sorted order (synthetic; None = all): a subset without symlinks.
    max_clips: int | None = None

    def validate(self, prefix: str) -> None:
        from .data.registry import validate_spec

        validate_spec(self, prefix)


@dataclass
class DataConfig:
    # A bare path is short for {type: synthetic, root: PATH} (the format before dataset types).
    train: DatasetSpec = field(default_factory=lambda: DatasetSpec(root="data/synthetic/train"))
    val: DatasetSpec = field(default_factory=lambda: DatasetSpec(root="data/synthetic/val"))
    # Unlabelled target-domain source for adaptation (e.g. {type: video, paths: [...]}); not
    # used by the supervised stages.
    target: DatasetSpec | None = None
    # Frames per clip; >= the largest keyframe interval so every offset 0..K-1 fits.
    clip_len: int = 6
    # Use every `stride`-th annotated frame of a clip as a target (val_stride for validation).
    stride: int = 1
    val_stride: int = 6
    augment: bool = True
    num_workers: int = 0
    # Validate on at most this many clips (0 = all): keeps per-epoch validation cheap on CPU.
    val_max_clips: int = 0

    def validate(self, prefix: str) -> None:
        from .data.registry import spec_tasks

        self.train.validate(f"{prefix}.train")
        self.val.validate(f"{prefix}.val")
        require(bool(spec_tasks(self.val)), f"{prefix}.val.type", self.val.type,
                "a labelled dataset type (validation needs labels)")
        if self.target is not None:
            self.target.validate(f"{prefix}.target")
        require(self.clip_len >= 1, f"{prefix}.clip_len", self.clip_len, "an integer >= 1")
        require(self.stride >= 1, f"{prefix}.stride", self.stride, "an integer >= 1")
        require(self.val_stride >= 1, f"{prefix}.val_stride", self.val_stride, "an integer >= 1")
        require(self.num_workers >= 0, f"{prefix}.num_workers", self.num_workers, "an integer >= 0")
        require(self.val_max_clips >= 0, f"{prefix}.val_max_clips", self.val_max_clips, "an integer >= 0")

    def check_stages(self, stages: tuple[StageConfig, ...], align: AlignConfig) -> None:
        """Unlabelled training data (video, bag) leaves only the slow/fast alignment as a loss."""
        from .data.registry import spec_tasks

        if spec_tasks(self.train):
            return
        for i, s in enumerate(stages):
            require(s.name != "slow" and s.align and (align.l1 or align.adversarial), f"stages[{i}]",
                    s.name, f"a fast or joint stage with alignment on: data.train ({self.train.type}) "
                    "has no labels, so nothing else gives a loss")


def migrate_data(data: dict[str, Any]) -> dict[str, Any]:
    """The ``data:`` section before dataset types: a bare ``train``/``val`` path is a synthetic
    folder; ``kind`` is gone (each dataset names its own type)."""
    d = data.get("data")
    if not isinstance(d, dict):
        return data
    if "kind" in d:
        raise ConfigError("data.kind: removed; each dataset names its type, e.g. "
                          "data.train: {type: synthetic, root: data/synthetic/train}")
    d = dict(d)
    for role in ("train", "val"):
        if isinstance(d.get(role), str):
            d[role] = {"type": "synthetic", "root": d[role]}
    return {**data, "data": d}


@dataclass
class ScheduleConfig:
    """Learning-rate schedule of a stage, restarted at each stage (:mod:`training.schedules`).
    Supplementary A: ``{name: step, every: 40, unit: epoch, gamma: 0.1}`` over 120 epochs."""

    name: str = "constant"  # constant | step | cosine
    every: int = 0  # step: decay every `every` units
    unit: str = "epoch"  # epoch | step (the unit of `every`)
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine: the final learning rate

    def validate(self, prefix: str) -> None:
        require(self.name in SCHEDULES, f"{prefix}.name", self.name, str(list(SCHEDULES)))
        require(self.unit in ("epoch", "step"), f"{prefix}.unit", self.unit, "'epoch' or 'step'")
        require(self.every >= 0, f"{prefix}.every", self.every, "an integer >= 0")
        require(self.name != "step" or self.every >= 1, f"{prefix}.every", self.every,
                "an integer >= 1 for a step schedule")
        require(0 < self.gamma <= 1, f"{prefix}.gamma", self.gamma, "in (0, 1]")
        require(self.min_lr >= 0, f"{prefix}.min_lr", self.min_lr, ">= 0")


@dataclass
class OptimConfig:
    """Adam as in Sec. 4.1; ``schedule`` is every stage's default (a stage may set its own)."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # Deprecated (kept so old configs load): x lr_gamma every lr_step steps *of each stage*, i.e.
    # schedule {name: step, unit: step, every: lr_step, gamma: lr_gamma}.
    lr_step: int = 0
    lr_gamma: float = 0.1
    grad_clip: float = 0.0  # 0 = off

    def stage_schedule(self, stage: StageConfig) -> ScheduleConfig:
        """The schedule stage ``stage`` runs: its own, else this default (or the legacy lr_step)."""
        if stage.schedule is not None:
            return stage.schedule
        if self.lr_step and self.schedule.name == "constant":
            return ScheduleConfig("step", self.lr_step, "step", self.lr_gamma)
        return self.schedule

    def validate(self, prefix: str) -> None:
        require(self.lr > 0, f"{prefix}.lr", self.lr, "a positive number")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{prefix}.betas",
               self.betas, "two numbers in [0, 1)")
        require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, ">= 0")
        require(self.lr_step >= 0, f"{prefix}.lr_step", self.lr_step, "an integer >= 0")
        require(0 < self.lr_gamma <= 1, f"{prefix}.lr_gamma", self.lr_gamma, "in (0, 1]")
        require(self.grad_clip >= 0, f"{prefix}.grad_clip", self.grad_clip, ">= 0")
        self.schedule.validate(f"{prefix}.schedule")


@dataclass
class LossConfig:
    depth: str = "l1"
    weighting: str = "equal"
    dwa_temperature: float = 2.0

    def validate(self, prefix: str) -> None:
        require(self.depth in DEPTH_LOSSES, f"{prefix}.depth", self.depth, str(list(DEPTH_LOSSES)))
        require(self.weighting in WEIGHTINGS, f"{prefix}.weighting", self.weighting, str(list(WEIGHTINGS)))
        require(self.dwa_temperature > 0, f"{prefix}.dwa_temperature", self.dwa_temperature, "> 0")


@dataclass
class AlignConfig:
    """Eq. 3: ``alpha * L1(slow, fast) + beta * adversarial`` (alpha = beta = 1 in Sec. 4.1)."""

    l1: bool = True
    adversarial: bool = True
    alpha: float = 1.0
    beta: float = 1.0
    disc_hidden: int = 64

    def validate(self, prefix: str) -> None:
        require(self.alpha >= 0, f"{prefix}.alpha", self.alpha, ">= 0")
        require(self.beta >= 0, f"{prefix}.beta", self.beta, ">= 0")
        require(self.disc_hidden >= 1, f"{prefix}.disc_hidden", self.disc_hidden, "an integer >= 1")


@dataclass
class StageConfig:
    name: str = "joint"
    epochs: int = 1
    steps_per_epoch: int = 0  # 0 = a full pass over the training clips
    keyframe_interval: int = 5
    # Random offsets 0..K-1 of the annotated frame after the last keyframe (Sec. 4.1).
    random_offset: bool = True
    # Parts the optimiser updates; empty = the stage's default (slow: slow+decoders+propagation,
    # fast: fast, joint: everything).
    trainable: tuple[str, ...] = ()
    align: bool = True  # apply AlignConfig's losses in this stage (fast and joint only)
    lr: float | None = None  # overrides optim.lr for this stage
    schedule: ScheduleConfig | None = None  # overrides optim.schedule for this stage
    # fast stage only: train the fast encoder with its own, freshly initialised decoders (the
    # paper's separate D18-MultiTask pretraining, supplementary A), dropped at the stage end; the
    # joint stage then feeds the fast features to the shared decoders. False: the fast encoder
    # learns to feed the frozen shared decoders directly.
    own_decoders: bool = False

    def validate(self, prefix: str) -> None:
        require(self.name in STAGES, f"{prefix}.name", self.name, str(list(STAGES)))
        require(self.epochs >= 0, f"{prefix}.epochs", self.epochs, "an integer >= 0")
        require(self.steps_per_epoch >= 0, f"{prefix}.steps_per_epoch", self.steps_per_epoch, ">= 0")
        require(self.keyframe_interval >= 1, f"{prefix}.keyframe_interval", self.keyframe_interval, ">= 1")
        require(all(p in PARTS for p in self.trainable), f"{prefix}.trainable", list(self.trainable),
               f"names from {list(PARTS)}")
        require(self.lr is None or self.lr > 0, f"{prefix}.lr", self.lr, "a positive number or null")
        require(not self.own_decoders or self.name == "fast", f"{prefix}.own_decoders", self.own_decoders,
                "false outside a fast stage")
        if self.schedule is not None:
            self.schedule.validate(f"{prefix}.schedule")

    def parts(self) -> tuple[str, ...]:
        if self.trainable:
            return self.trainable
        return {"slow": ("slow", "decoders"), "fast": ("fast",), "joint": PARTS}[self.name]


@dataclass
class DistributedConfig:
    """Multi-process training under torchrun (docs/training.md); ignored in a one-process run."""

    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    # Batch-norm statistics over the global batch (torch SyncBatchNorm on CUDA; an all-reduce
    # version on CPU). Off: each rank normalises over its own batch_size / world samples.
    sync_batchnorm: bool = False
    timeout_s: int = 1800  # collective timeout (rank 0 validating while the others wait)

    def validate(self, prefix: str) -> None:
        require(self.backend in ("auto", "nccl", "gloo"), f"{prefix}.backend", self.backend,
                "auto, nccl or gloo")
        require(self.timeout_s >= 1, f"{prefix}.timeout_s", self.timeout_s, "an integer >= 1")


@dataclass
class TrainConfig:
    # A model YAML (config/model/*.yaml) and field overrides merged into it (dotted mapping).
    model: str = "config/model/tiny.yaml"
    model_override: dict[str, Any] = field(default_factory=dict)
    # Start from a checkpoint's weights (e.g. the shared slow/fast pretraining); strict=False so
    # a variant with other propagation modules still takes the encoders and decoders.
    init: str | None = None
    out: str = "runs/tiny"
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch.set_num_threads; 0 = leave torch's default
    batch_size: int = 4  # the global batch: split evenly over the torchrun processes
    amp: str = "off"  # off | bf16 (CPU, CUDA) | fp16 (CUDA, with a gradient scaler)
    ckpt_every: int = 50  # steps between `last.pt` writes (also at every epoch end)
    variant: str = "full"  # label stored in the checkpoint meta; mtl-eval prints it as the row name
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    # ASTMT's adversarial task-gradient disentanglement (training/task_adversarial.py); on for astmt
    task_adversarial: TaskAdversarialConfig = field(default_factory=TaskAdversarialConfig)
    stages: tuple[StageConfig, ...] = (StageConfig("slow", 1), StageConfig("fast", 1),
                                       StageConfig("joint", 1))
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # Unsupervised domain adaptation toward data.target (training/adapt, docs/adaptation.md); None = off.
    adapt: AdaptConfig | None = None
    # Quantization-aware fine-tuning for INT8 (training/qat.py, docs/int8.md); None = off.
    qat: QatConfig | None = None
    # Validation at each epoch end, under the evaluation protocol (offsets 0..K-1).
    val_offsets: str = "all"  # "all" or "last" (only offset K-1: cheapest, hardest frame)

    def validate(self) -> TrainConfig:
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.ckpt_every >= 1, "ckpt_every", self.ckpt_every, "an integer >= 1")
        require(self.threads >= 0, "threads", self.threads, "an integer >= 0")
        require(len(self.stages) > 0, "stages", list(self.stages), "a non-empty list")
        require(self.val_offsets in ("all", "last"), "val_offsets", self.val_offsets, "'all' or 'last'")
        require(self.device == "cpu" or self.device.startswith("cuda"), "device", self.device,
               "cpu, cuda or cuda:N")
        require(self.amp in AMP_MODES, "amp", self.amp, str(list(AMP_MODES)))
        require(self.amp != "fp16" or self.device.startswith("cuda"), "amp", self.amp,
                "bf16 or off on CPU (fp16 autocast with loss scaling is for CUDA)")
        self.distributed.validate("distributed")
        self.data.validate("data")
        self.data.check_stages(self.stages, self.align)
        self.optim.validate("optim")
        self.loss.validate("loss")
        self.align.validate("align")
        self.task_adversarial.validate("task_adversarial")
        for i, s in enumerate(self.stages):
            s.validate(f"stages[{i}]")
            require(s.name != "joint" or s.keyframe_interval <= self.data.clip_len,
                   f"stages[{i}].keyframe_interval",
                   s.keyframe_interval, f"<= data.clip_len ({self.data.clip_len}) so every offset fits")
        if self.qat is not None:
            self.qat.validate("qat", [s.name for s in self.stages])
            require(self.amp == "off", "amp", self.amp, "off with qat: (fake quantization runs in FP32)")
        model = self.model_config()
        if self.adapt is not None:
            self.adapt.validate("adapt", tuple(model.tasks), [s.name for s in self.stages], self.data.target)
        return self

    def model_config(self) -> ModelConfig:
        """The model YAML with ``model_override`` merged in, validated."""
        base = ModelConfig.from_yaml(self.model).to_dict()
        try:
            return ModelConfig.from_dict(_merge(base, self.model_override))
        except ConfigError as e:
            raise ConfigError(f"model_override: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if data.get("amp") is False:  # YAML 1.1 reads a bare `off` as false
            data = {**data, "amp": "off"}
        return from_dict(cls, migrate_data(data)).validate()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"train config: no such file {str(path)!r}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = apply_overrides(migrate_data(data), overrides)  # old bare paths take --set x.root
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``a.b.c=value`` strings (value parsed as YAML) set nested keys; ``stages.2.epochs=3`` indexes
    lists. Unknown keys are caught later by validation, with their dotted name."""
    data = to_plain(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string; users mean a number
            try:
                value = float(value)
            except ValueError:
                pass
        parts = key.strip().split(".")
        node: Any = data
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                try:
                    idx = int(p)
                    node[idx]  # noqa: B018 - bounds check
                except (ValueError, IndexError):
                    raise ConfigError(
                        f"override {key}: {p!r} is not an index of a {len(node)}-item list") from None
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                if last:
                    node[p] = value
                else:
                    if p == "stages" and p not in node:
                        node[p] = [dataclasses.asdict(s) for s in TrainConfig().stages]
                    node = node.setdefault(p, {})
                    if not isinstance(node, dict | list):
                        raise ConfigError(f"override {key}: {p!r} is not a mapping")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


