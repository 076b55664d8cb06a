"""Pure helpers behind launch/*.launch.py: launch arguments (strings) -> the node's remappings and
parameters. Kept out of the launch files so they are tested without launch_ros (not on PyPI)."""

from __future__ import annotations

from typing import Any


def camera_info_topic(image_topic: str) -> str:
    """The camera_info topic next to an image topic, as image_transport derives it: the last name
    token replaced by ``camera_info`` (``/cam/image_raw`` -> ``/cam/camera_info``, ``image`` ->
    ``camera_info``). A trailing ``/compressed`` transport suffix is not part of the base topic."""
    topic = image_topic.strip().rstrip("/")
    if not topic:
        raise ValueError("image topic is empty")
    if topic.endswith("/compressed"):
        topic = topic[: -len("/compressed")]
    head, sep, _last = topic.rpartition("/")
    return f"{head}{sep}camera_info" if sep else "camera_info"


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", ""):
        return False
    raise ValueError(f"launch argument {name}: expected true/false, got {value!r}")


def node_parameters(params_file: str, checkpoint: str = "", threads: str = "", use_sim_time: str = "false",
                    keyframe_interval: str = "") -> list[Any]:
    """``parameters=`` of the launch_ros Node: the parameter file, then only the arguments the user
    set (an empty argument leaves the file's value: e.g. checkpoint "" keeps the shipped model)."""
    overrides: dict[str, Any] = {"use_sim_time": _bool(use_sim_time, "use_sim_time")}
    if checkpoint.strip():
        overrides["checkpoint"] = checkpoint.strip()
    for name, value in (("threads", threads), ("keyframe_interval", keyframe_interval)):
        if value.strip():
            try:
                overrides[name] = int(value)
            except ValueError:
                raise ValueError(f"launch argument {name}: expected an integer, got {value!r}") from None
    return [params_file, overrides] if params_file else [overrides]


def remappings(image: str, camera_info: str = "") -> list[tuple[str, str]]:
    """image -> the given topic; camera_info -> the given one, or derived from the image topic."""
    return [("image", image), ("camera_info", camera_info.strip() or camera_info_topic(image))]
