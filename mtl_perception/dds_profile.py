"""The Fast DDS profile the node loads before it creates its DDS participant.

Why: with Fast DDS's built-in shared-memory transport (512 KB segments), an output image larger
than the segment (256x512 normals are 1.5 MB) is cut into 64 KB fragments, and publish -> receipt
by a subscriber on the same host took 25 ms; with a segment that holds the whole image, 4 ms
(docs/node_performance.md, "DDS transport"). The profile (``config/fastdds_large_images.xml``) only *adds* a
larger shared-memory transport to the built-in ones, so ``FASTDDS_BUILTIN_TRANSPORTS`` and other
hosts are unaffected, and only the publisher needs it.

Fast DDS 3 (Kilted and later) reads ``FASTDDS_DEFAULT_PROFILES_FILE``; Fast DDS 2.x (Humble,
Iron, Jazzy) only ``FASTRTPS_DEFAULT_PROFILES_FILE``, which Fast DDS 3 still honours but with a
deprecation warning on every start. So the old name is set only where ``ROS_DISTRO`` names a
Fast DDS 2.x distro (the distros' setup scripts export it; the PyPI wheels do not).
The user's own choice wins: nothing is set when either is already set, when the RMW is not Fast DDS, or when
``MTL_PERCEPTION_DDS_PROFILE=none``; ``MTL_PERCEPTION_DDS_PROFILE=/path.xml`` names another file.
No rclpy import: this runs before ``rclpy.init``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from . import share

PROFILE = "config/fastdds_large_images.xml"
FASTDDS_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS2_DISTROS = ("humble", "iron", "jazzy")  # ship Fast DDS 2.x: read only the FASTRTPS_ name
OPT = "MTL_PERCEPTION_DDS_PROFILE"


def apply(environ: MutableMapping[str, str] | None = None) -> str:
    """Point Fast DDS at the node's profile unless the user decided otherwise; returns one line
    saying what happened (for the start-up log). Raises ``ValueError`` naming
    ``MTL_PERCEPTION_DDS_PROFILE`` when it names a file that does not exist."""
    env = os.environ if environ is None else environ
    choice = env.get(OPT, "").strip()
    if choice.lower() == "none":
        return f"DDS profile: none ({OPT}=none)"
    rmw = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") or "rmw_fastrtps_cpp"
    if not rmw.startswith("rmw_fastrtps"):
        return f"DDS profile: none (RMW_IMPLEMENTATION={rmw} is not Fast DDS)"
    for var in FASTDDS_VARS:
        if env.get(var):
            return f"DDS profile: the user's {var}={env[var]}"
    if choice:
        path = Path(choice)
        if not path.is_file():
            raise ValueError(f"{OPT}={choice!r}: no such file (a Fast DDS XML profile, or 'none')")
    else:
        found = share.find(PROFILE)
        if found is None:
            return f"DDS profile: none ({PROFILE} not found in this install)"
        path = found
    env[FASTDDS_VARS[0]] = str(path)
    if env.get("ROS_DISTRO", "").strip().lower() in FASTDDS2_DISTROS:
        env[FASTDDS_VARS[1]] = str(path)
    return f"DDS profile: {path} (large-image shared memory; {OPT}=none to disable)"
