"""Keyframe schedules for clips (training and the paper's evaluation protocol)."""

from __future__ import annotations


def keyframe_flags(num_frames: int, interval: int, offset: int) -> list[bool]:
    """Which frames of a clip are keyframes, the annotated frame being the last.

    The last frame lies ``offset`` frames after the most recent keyframe (0 <= offset < interval),
    keyframes repeat every ``interval`` frames before it, and frame 0 is always a keyframe
    because a stream must start on one (Sec. 4.1 averages results over offsets 0..K-1).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if interval < 1:
        raise ValueError(f"keyframe interval must be >= 1, got {interval}")
    if not 0 <= offset < interval:
        raise ValueError(f"keyframe offset must be in [0, {interval - 1}], got {offset}")
    last_key = num_frames - 1 - offset
    if last_key < 0:
        raise ValueError(f"a clip of {num_frames} frames cannot end {offset} frames after a keyframe")
    flags = [t <= last_key and (last_key - t) % interval == 0 for t in range(num_frames)]
    flags[0] = True
    return flags
