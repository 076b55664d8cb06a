"""The class table a downstream user needs to read ``~/semantic`` without this package.

Published by the node as JSON on the latched ``~/class_names`` topic (std_msgs/String) and as the
read-only ``class_names`` / ``class_palette`` parameters. Same idea as vision_msgs/LabelInfo
(id -> name), which is not installable from PyPI; JSON in a String is readable from any language
(``ros2 topic echo --once /mtl_perception/class_names``). No ROS import here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FORMAT = "mtl_perception/class_names/v1"


def label_info(class_names: Sequence[str], palette: np.ndarray, semantic_encoding: str) -> dict:
    """{"format", "semantic_encoding", "classes": [{"id", "name", "color": [r, g, b]}, ...]}.

    One entry per palette row (= per class id). Ids are the pixel values of ``~/semantic``;
    colours those of ``~/semantic/color``. Classes without a name get "class_<id>"."""
    n = len(palette)
    names = list(class_names)[:n] + [f"class_{i}" for i in range(len(class_names), n)]
    classes = [{"id": i, "name": str(name), "color": [int(c) for c in palette[i]]}
               for i, name in enumerate(names)]
    return {"format": FORMAT, "semantic_encoding": semantic_encoding, "classes": classes}
