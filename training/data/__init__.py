"""Training data: synthetic labelled video, real unlabelled video, adapters for local datasets.

The renderer (moderngl + EGL) is imported lazily so the readers work without OpenGL.
"""

from .classes import CLASSES, IGNORE_INDEX, PALETTE
from .clips import ClipAugment, ClipDataset, OnTheFlySyntheticDataset, SyntheticClipDataset, keyframe_flags

__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "ClipAugment",
    "ClipDataset",
    "OnTheFlySyntheticDataset",
    "SyntheticClipDataset",
    "keyframe_flags",
]
