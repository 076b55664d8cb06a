"""Class lists and palettes shared by the synthetic generator, the on-disk reader and the figures.

Why a separate module: the label semantics are the contract between the two appearance domains
(`source`, `target`), the trainer and the evaluation; they must not depend on the renderer (which
needs EGL) being importable.
"""

from __future__ import annotations

import numpy as np

from mtl_perception.imaging import make_palette

IGNORE_INDEX = 255

# Outdoor street scene: ids are the index in this tuple.
CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "pole",
    "vegetation",
    "vehicle",
    "person",
    "sky",
)
# Cityscapes colours of the same classes (road, sidewalk, building, pole, vegetation, car, person,
# sky), so synthetic labels look like the node's output for a Cityscapes-style model.
PALETTE = make_palette(19)[[0, 1, 2, 5, 8, 13, 11, 10]]

# Small indoor variant (a room with furniture); its own id space.
INDOOR_CLASSES: tuple[str, ...] = ("floor", "wall", "ceiling", "table", "chair", "cabinet", "person")
INDOOR_PALETTE = np.array(
    [
        [152, 251, 152],
        [190, 153, 153],
        [200, 200, 120],
        [255, 170, 0],
        [255, 80, 80],
        [120, 90, 200],
        [220, 20, 60],
    ],
    dtype=np.uint8,
)

ROAD, SIDEWALK, BUILDING, POLE, VEGETATION, VEHICLE, PERSON, SKY = range(len(CLASSES))
