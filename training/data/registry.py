"""Dataset types that ``mtl-train``'s ``data:`` section names: how a spec is validated, which tasks and
classes the type labels, and how its clips are built from the adapters in this package.

A spec (``training.config.DatasetSpec``) is ``{type, root | paths, split, options}``. Each type
declares its options with defaults and allowed values, so a typo fails with its dotted name at
config time; the files themselves are only checked when the dataset is built (a config is
validated before ``bench/ablation.py`` generates its data). Samples of a built dataset hold label
keys only for the tasks the type labels, so the trainer computes no loss for a task the data
cannot supervise (Cityscapes has no normals) and validation reports no metric for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from mtl_perception.model.config import ConfigError, require
from mtl_perception.model.registry import Registry

from .cityscapes import CLASSES_7, PALETTE_7
from .classes import IGNORE_INDEX
from .clips import ClipAugment, ClipDataset, SyntheticClipDataset

ALL_TASKS = ("semantic", "depth", "normals")
ROLES = ("train", "val", "target")


class Spec(Protocol):  # training.config.DatasetSpec (not imported: config imports this module)
    type: str
    root: str
    split: str
    paths: tuple[str, ...]
    options: dict[str, Any]
    max_clips: int | None


@dataclass(frozen=True)
class ClipSettings:
    """What the trainer asks of every dataset: clip length, schedule, network input size."""

    clip_len: int
    keyframe_interval: int
    size: tuple[int, int] | None = None
    stride: int = 1
    augment: ClipAugment | None = None


@dataclass(frozen=True)
class Option:
    default: Any
    check: Callable[[Any], bool]
    allowed: str


def _one_of(*values: Any) -> Option:
    return Option(values[0], lambda v: v in values, f"one of {list(values)}")


def _int(default: int, lo: int) -> Option:
    return Option(default, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo,
                  f"an integer >= {lo}")


def _str_list() -> Option:
    return Option([], lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names")


_BOOL = Option(False, lambda v: isinstance(v, bool), "true or false")
_PATH = Option("", lambda v: isinstance(v, str), "a path ('' = none)")
_CROP = Option([0, 0, 0, 0], lambda v: isinstance(v, list) and len(v) == 4 and
               all(isinstance(x, int) and x >= 0 for x in v), "[top, bottom, left, right] pixels >= 0")


class DatasetType:
    """One registered type; subclasses set the class attributes and implement ``build``."""

    source = "root"  # "root": one folder; "paths": a list of files (video, bag)
    subset = False  # True: the type reads spec.max_clips (the first N clips in sorted order)
    splits: tuple[str, ...] = ("train", "val")  # () = the type has no split
    options: dict[str, Option] = {}

    def tasks(self, opts: dict[str, Any]) -> tuple[str, ...]:
        return ALL_TASKS

    def relabel(self, opts: dict[str, Any]) -> tuple[tuple[int, ...], tuple[str, ...], np.ndarray] | None:
        """(new id of each native id, new class names, palette) when an option maps the classes."""
        return None

    def build(self, spec: Spec, split: str, opts: dict[str, Any], clip: ClipSettings) -> ClipDataset:
        raise NotImplementedError


DATASETS = Registry("dataset type")


# Class maps into the 7 Cityscapes categories (flat, construction, object, nature, sky, human,
# vehicle), as cityscapesScripts assigns them, so a model trained on these validates on Cityscapes.
# Synthetic street (classes.CLASSES): road, sidewalk -> flat; pole -> object; person -> human.
STREET_TO_CITYSCAPES7 = (0, 0, 1, 2, 3, 6, 5, 4)
# Virtual KITTI 2 (vkitti2.CLASSES): Terrain, Tree, Vegetation -> nature; GuardRail -> construction
# (Cityscapes "guard rail"); TrafficSign, TrafficLight, Pole -> object; Misc -> ignore.
VKITTI2_TO_CITYSCAPES7 = (3, 4, 3, 3, 1, 0, 1, 2, 2, 2, IGNORE_INDEX, 6, 6, 6)


@DATASETS.register("synthetic")
class Synthetic(DatasetType):
    """``mtl-data generate`` output: ROOT/clip_*/ (split, if given, is a subfolder of root);
    ``classes: cityscapes7`` relabels street clips into the 7 Cityscapes categories."""

    splits = ()
    subset = True
    options = {"classes": _one_of("native", "cityscapes7")}

    def relabel(self, opts: dict[str, Any]) -> tuple[tuple[int, ...], tuple[str, ...], np.ndarray] | None:
        return (STREET_TO_CITYSCAPES7, CLASSES_7, PALETTE_7) if opts["classes"] == "cityscapes7" else None

    def build(self, spec: Spec, split: str, opts: dict[str, Any], clip: ClipSettings) -> ClipDataset:
        root = Path(spec.root) / spec.split if spec.split else Path(spec.root)
        ds = SyntheticClipDataset(root, clip_len=clip.clip_len, keyframe_interval=clip.keyframe_interval,
                                  keyframe_offset=0, size=clip.size, stride=clip.stride, augment=clip.augment,
                                  max_clips=spec.max_clips)
        if opts["classes"] == "cityscapes7" and any(m.get("scene", "street") != "street" for m in ds.meta):
            raise ValueError(f"{root}: classes 'cityscapes7' maps street clips; it holds other scenes")
        return ds


@DATASETS.register("cityscapes")
class Cityscapes(DatasetType):
    options = {"num_classes": _one_of(19, 7), "normals": _one_of("zeros", "from_depth")}

    def tasks(self, opts: dict[str, Any]) -> tuple[str, ...]:
        # No normal labels: only when derived from the disparity is there anything to learn from.
        return ALL_TASKS if opts["normals"] == "from_depth" else ("semantic", "depth")

    def build(self, spec: Spec, split: str, opts: dict[str, Any], clip: ClipSettings) -> ClipDataset:
        from .cityscapes import CityscapesDataset

        return CityscapesDataset(spec.root, split, num_classes=opts["num_classes"], normals=opts["normals"],
                                 clip_len=clip.clip_len, keyframe_interval=clip.keyframe_interval,
                                 keyframe_offset=0, size=clip.size, augment=clip.augment)


@DATASETS.register("nyuv2")
class NYUv2(DatasetType):
    options = {"flip_normals_yz": _BOOL, "raw": _PATH, "raw_index": _PATH, "raw_step": _int(1, 1),
               "raw_crop": _CROP}

    def build(self, spec: Spec, split: str, opts: dict[str, Any], clip: ClipSettings) -> ClipDataset:
        from .nyuv2 import NYUv2Dataset

        return NYUv2Dataset(spec.root, split, flip_normals_yz=opts["flip_normals_yz"],
                            raw=opts["raw"] or None, raw_index=opts["raw_index"] or None,
                            raw_step=opts["raw_step"], raw_crop=tuple(opts["raw_crop"]),
                            clip_len=clip.clip_len, keyframe_interval=clip.keyframe_interval,
                            keyframe_offset=0, size=clip.size, augment=clip.augment)


@DATASETS.register("vkitti2")
class VKITTI2(DatasetType):
    """No official split: choose sequences with ``options.scenes`` / ``options.variations``."""

    splits = ()
    options = {"scenes": _str_list(), "variations": _str_list(),
               "camera": Option("Camera_0", lambda v: v in ("Camera_0", "Camera_1"), "Camera_0 or Camera_1"),
               "normals": _one_of("from_depth", "zeros"), "classes": _one_of("native", "cityscapes7")}

    def tasks(self, opts: dict[str, Any]) -> tuple[str, ...]:
        return ALL_TASKS if opts["normals"] == "from_depth" else ("semantic", "depth")

    def relabel(self, opts: dict[str, Any]) -> tuple[tuple[int, ...], tuple[str, ...], np.ndarray] | None:
        return (VKITTI2_TO_CITYSCAPES7, CLASSES_7, PALETTE_7) if opts["classes"] == "cityscapes7" else None

    def build(self, spec: Spec, split: str, opts: dict[str, Any], clip: ClipSettings) -> ClipDataset:
        from .vkitti2 import VKITTI2Dataset

        return VKITTI2Dataset(spec.root, scenes=opts["scenes"] or None, variations=opts["variations"] or None,
                              camera=opts["camera"], normals=opts["normals"], stride=clip.stride,
                              clip_len=clip.clip_len, keyframe_interval=clip.keyframe_interval,
                              keyframe_offset=0, size=clip.size, augment=clip.augment)


class _Unlabelled(DatasetType):
    """Real video without labels: a source for adaptation, or alignment-only training."""

    source = "paths"
    splits = ()

    def tasks(self, opts: dict[str, Any]) -> tuple[str, ...]:
        return ()

    def build(self, spec: Spec, split: str, opts: dict[str, Any], clip: ClipSettings) -> ClipDataset:
        from .video import VideoClipDataset

        kw = {k: v for k, v in opts.items() if k != "max_frames"}
        return VideoClipDataset(list(spec.paths), max_frames=opts["max_frames"] or None, stride=clip.stride,
                                clip_len=clip.clip_len, keyframe_interval=clip.keyframe_interval,
                                keyframe_offset=0, size=clip.size, augment=clip.augment, **kw)


@DATASETS.register("video")
class Video(_Unlabelled):
    """Any file PyAV decodes (mp4, avi, mkv...)."""

    options = {"max_frames": _int(0, 0), "frame_step": _int(1, 1)}


@DATASETS.register("bag")
class Bag(_Unlabelled):
    """rosbag1/rosbag2 (folder with metadata.yaml, *.bag, *.mcap, *.db3): one image topic."""

    options = {"max_frames": _int(0, 0),
               "topic": Option("/camera/image_raw", lambda v: isinstance(v, str) and v.startswith("/"),
                               "a topic name starting with '/'")}


# -- validation and building ------------------------------------------------------------------------
def dataset_type(name: str) -> DatasetType:
    return DATASETS.get(name)()


def resolve_options(spec: Spec, prefix: str) -> dict[str, Any]:
    """The type's defaults updated with ``spec.options``; unknown or invalid options fail by name."""
    t = dataset_type(spec.type)
    require(isinstance(spec.options, dict), f"{prefix}.options", spec.options, "a mapping")
    out = {k: o.default for k, o in t.options.items()}
    for k, v in spec.options.items():
        require(k in t.options, f"{prefix}.options.{k}", v, f"an option of {spec.type}: {sorted(t.options)}")
        require(t.options[k].check(v), f"{prefix}.options.{k}", v, t.options[k].allowed)
        out[k] = v
    return out


def validate_spec(spec: Spec, prefix: str) -> None:
    """Config-time checks (no file access): known type, root or paths given, split and options."""
    require(spec.type in DATASETS, f"{prefix}.type", spec.type, str(DATASETS.names()))
    t = dataset_type(spec.type)
    if t.source == "root":
        if not spec.root:
            raise ConfigError(f"{prefix}.root: missing; {spec.type} needs the folder of its copy")
        require(not spec.paths, f"{prefix}.paths", list(spec.paths), f"empty ({spec.type} reads root)")
    else:
        if not spec.paths:
            raise ConfigError(f"{prefix}.paths: missing; {spec.type} needs a list of files")
        require(not spec.root, f"{prefix}.root", spec.root, f"empty ({spec.type} reads paths)")
    if t.splits:
        require(not spec.split or spec.split in t.splits, f"{prefix}.split", spec.split, str(list(t.splits)))
    elif spec.type != "synthetic":  # synthetic: split = a subfolder of root
        require(not spec.split, f"{prefix}.split", spec.split, f"empty ({spec.type} has no split)")
    resolve_options(spec, prefix)
    n = spec.max_clips
    if n is not None:
        require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, f"{prefix}.max_clips", n,
                "an integer >= 1 (null = all clips)")
        require(t.subset, f"{prefix}.max_clips", spec.max_clips,
                f"null ({spec.type} has no clip folders to take the first N of)")


def spec_tasks(spec: Spec) -> tuple[str, ...]:
    """The tasks a (validated) spec's data labels; () for unlabelled video."""
    return dataset_type(spec.type).tasks(resolve_options(spec, "data"))


def describe(spec: Spec) -> str:
    """One line for logs and checkpoint meta, e.g. ``cityscapes:/data/cityscapes[val]``."""
    where = spec.root or ",".join(spec.paths)
    first = f" (first {spec.max_clips} clips)" if spec.max_clips is not None else ""
    return f"{spec.type}:{where}" + (f"[{spec.split}]" if spec.split else "") + first


class TaskView(Dataset):
    """A built dataset whose samples keep only the label keys of ``tasks``, with class ids mapped
    by ``relabel`` (new id per native id) when given."""

    def __init__(self, dataset: ClipDataset, tasks: tuple[str, ...], spec_type: str,
                 relabel: tuple[tuple[int, ...], tuple[str, ...], np.ndarray] | None = None) -> None:
        self.dataset, self.tasks, self.type = dataset, tuple(tasks), spec_type
        self.CLASSES, self.PALETTE = dataset.CLASSES, dataset.PALETTE
        self.lut: torch.Tensor | None = None
        if relabel is not None:
            ids, self.CLASSES, self.PALETTE = relabel
            self.lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
            self.lut[: len(ids)] = torch.tensor(ids)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.dataset[index]
        if self.lut is not None:  # after augmentation: nearest resampling and flips keep ids
            for k in ("semantic", "semantic_all"):
                if k in s:
                    s[k] = self.lut[s[k]]
        for t in ALL_TASKS:
            if t not in self.tasks:
                s.pop(t, None)
                s.pop(f"{t}_all", None)
        return s


def build_dataset(spec: Spec, prefix: str, role: str, clip: ClipSettings,
                  model_tasks: tuple[str, ...] | None = None, num_classes: int | None = None) -> TaskView:
    """Build the clips of ``spec``; file/layout problems and a dataset that does not fit the model
    (no shared task, another class count) raise a one-line ConfigError naming ``prefix``."""
    validate_spec(spec, prefix)
    t = dataset_type(spec.type)
    opts = resolve_options(spec, prefix)
    if t.source == "root" and not Path(spec.root).is_dir():
        if Path(spec.root).exists():
            raise ConfigError(f"{prefix}.root: {spec.root!r} is a file, not a folder ({spec.type})")
        raise ConfigError(f"{prefix}.root: no such folder {spec.root!r} ({spec.type})")
    for i, p in enumerate(spec.paths):
        if not Path(p).exists():
            raise ConfigError(f"{prefix}.paths[{i}]: no such file {p!r} ({spec.type})")
    split = spec.split or ("val" if role == "val" else "train")
    try:
        ds = t.build(spec, split, opts, clip)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{prefix} ({spec.type}): {e}") from None
    if len(ds) == 0:
        raise ConfigError(f"{prefix} ({spec.type}): no clips of {clip.clip_len} frames in {describe(spec)}")
    view = TaskView(ds, t.tasks(opts), spec.type, t.relabel(opts))
    if model_tasks is not None and view.tasks:
        shared = [x for x in view.tasks if x in model_tasks]
        if not shared:
            raise ConfigError(f"{prefix} ({spec.type}): labels {list(view.tasks)}, none of the model's "
                              f"tasks {list(model_tasks)}")
        n = len(view.CLASSES)
        if "semantic" in shared and num_classes is not None and n != num_classes:
            raise ConfigError(f"{prefix} ({spec.type}): {n} classes, but the model has num_classes "
                              f"{num_classes}; set model_override.num_classes: {n} or another class set")
    return view


def build_from_text(text: str, prefix: str, role: str, clip: ClipSettings,
                    model_tasks: tuple[str, ...] | None = None, num_classes: int | None = None) -> TaskView:
    """:func:`build_dataset` from a spec written as a YAML mapping on a command line (``mtl-eval
    --data '{type: cityscapes, root: DIR}'``)."""
    import yaml

    from mtl_perception.model.config import from_dict

    from ..config import DatasetSpec  # here, not at the top: training.config imports this module

    try:
        spec = from_dict(DatasetSpec, yaml.safe_load(text), f"{prefix}.")
    except yaml.YAMLError as e:
        raise ConfigError(f"{prefix}: not a YAML mapping: {' '.join(str(e).split())}") from None
    return build_dataset(spec, prefix, role, clip, model_tasks, num_classes)
