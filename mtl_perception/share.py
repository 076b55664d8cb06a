"""Where the shipped files (configs, launch files, the trained model) live, installed or not.

Three layouts, tried in this order:

* a ROS install (colcon / ``ros2 launch``): the ament index on ``AMENT_PREFIX_PATH``;
* ``pip install .`` into a venv: setup.py's ``data_files`` land in ``<sys.prefix>/share/mtl_perception``
  (no ament environment is sourced there, so the index is not searched);
* the source checkout (``pip install -e .``, running from the repository).

No ROS import: the offline tools use it too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "mtl_perception"
# The model a user gets without parameters: EfficientNet-Lite slow-fast network trained on randomised
# synthetic streets, adapted to real street video (models/mila_street_lite.md is its card). The toy
# models/mila_tiny_synthetic.pt stays for the tests that need a 64x128 model.
DEFAULT_CHECKPOINT = "models/mila_street_lite.pt"


def share_dirs() -> list[Path]:
    """Existing candidate roots, most specific (installed) first; the checkout is always last."""
    roots: list[Path] = []
    if os.environ.get("AMENT_PREFIX_PATH"):
        try:
            from ament_index_python.packages import get_package_share_directory

            roots.append(Path(get_package_share_directory(PACKAGE)))
        except Exception:  # noqa: BLE001 - ament index present but without this package
            pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        roots.append(Path(prefix) / "share" / PACKAGE)
    roots.append(Path(__file__).resolve().parents[1])  # the checkout (mtl_perception/..)
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def find(relative: str | Path) -> Path | None:
    """``relative`` under the first share root that has it, else None."""
    for root in share_dirs():
        if (root / relative).exists():
            return root / relative
    return None


def default_checkpoint() -> str:
    """Absolute path of the shipped trained checkpoint ('' when this install has none)."""
    p = find(DEFAULT_CHECKPOINT)
    return str(p) if p else ""
