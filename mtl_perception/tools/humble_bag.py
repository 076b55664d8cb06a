"""rosbag2 bags that ROS 2 Humble's rosbag2 reads.

rosbags writes metadata version 9 by default (Jazzy+), where ``offered_qos_profiles`` is a YAML
list; Humble's yaml-cpp parser decodes that field as a *string* and refuses the bag ("bad
conversion"), and knows nothing of ``type_description_hash``, ``custom_data`` or ``ros_distro``.
A Humble bag is therefore written at version 8 (QoS as a YAML string, which Humble parses) with one
offered QoS profile, and those newer keys are removed from metadata.yaml afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HUMBLE_VERSION = 8
# Keys Humble's metadata parser does not know (added in Iron and later).
_NEWER_TOP = ("custom_data", "ros_distro")
_NEWER_TOPIC = ("type_description_hash",)


def offered_qos() -> list[Any]:
    """What a camera driver offers: reliable keep-last, volatile (matches reliable and best-effort
    subscribers on replay). Zero durations mean 'unspecified' to rmw."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return [Qos(history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE,
                durability=QosDurability.VOLATILE, deadline=zero, lifespan=zero,
                liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
                avoid_ros_namespace_conventions=False)]


def make_humble_compatible(bag: str | Path) -> dict:
    """Strip metadata.yaml of ``bag`` down to the keys Humble parses; returns the new metadata."""
    meta_path = Path(bag) / "metadata.yaml"
    data = yaml.safe_load(meta_path.read_text())
    info = data["rosbag2_bagfile_information"]
    if info.get("version") != HUMBLE_VERSION:
        raise ValueError(f"{meta_path}: version {info.get('version')}, expected {HUMBLE_VERSION}")
    for key in _NEWER_TOP:
        info.pop(key, None)
    for entry in info.get("topics_with_message_count", []):
        for key in _NEWER_TOPIC:
            entry["topic_metadata"].pop(key, None)
        if not isinstance(entry["topic_metadata"].get("offered_qos_profiles", ""), str):
            raise ValueError(f"{meta_path}: offered_qos_profiles is not a string")
    meta_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return data
