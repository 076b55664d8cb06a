"""Procedural driving-style clips with exact dense labels: the clip generator.

Builds a scene (:mod:`.scenes`: rigs, looks, geometry, camera path), rasterises it frame by frame
with OpenGL (:mod:`.render`: moderngl on headless EGL, RGB + class ids + depth + normals in one pass)
and returns :class:`Clip` s; adds hard cuts and fast camera turns for keyframe-policy tests.

The names callers import from here (rigs, appearances, domains, ``build_scene``, ``egl_available``,
...) are re-exported from the two modules so ``training.data.synthetic`` stays the one entry point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .classes import CLASSES as STREET_CLASSES
from .classes import INDOOR_CLASSES
from .geometry import intrinsics_matrix
from .render import Renderer, egl_available, postprocess
from .scenes import (
    APPEARANCES,
    DOMAINS,
    FRAME_DT,
    RIGS,
    Appearance,
    CameraRig,
    Part,
    _flatten,
    _rot_z,
    _tint,
    build_scene,
    camera_pose,
)

__all__ = [
    "APPEARANCES",
    "DOMAINS",
    "FRAME_DT",
    "RIGS",
    "TURN_DEG",
    "TURN_FRAMES",
    "Appearance",
    "CameraRig",
    "Clip",
    "Part",
    "Renderer",
    "SyntheticGenerator",
    "build_scene",
    "camera_pose",
    "egl_available",
    "generate_clip",
    "postprocess",
    "turn_yaw",
]


# --------------------------------------------------------------------------------------------------
# Clip generation
# --------------------------------------------------------------------------------------------------
@dataclass
class Clip:
    """T frames of one rendered clip (numpy, HWC), plus metadata."""

    rgb: np.ndarray  # (T,H,W,3) float32 [0,1]
    semantic: np.ndarray  # (T,H,W) uint8
    depth: np.ndarray  # (T,H,W) float32 metres, 0 = invalid
    normals: np.ndarray  # (T,H,W,3) float32 optical frame, 0 = invalid
    intrinsics: np.ndarray  # (3,3)
    poses: np.ndarray  # (T,4,4) camera-to-world
    classes: tuple[str, ...]
    meta: dict


class SyntheticGenerator:
    """Renders clips; keeps one GL context per output size (create once, reuse for many clips)."""

    def __init__(self, height: int, width: int) -> None:
        self.H, self.W = height, width
        self.renderer = Renderer(height, width)

    def close(self) -> None:
        self.renderer.release()

    def __enter__(self) -> SyntheticGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def intrinsics(self, rig: CameraRig) -> np.ndarray:
        f = rig.focal * self.W
        return intrinsics_matrix(f, f, (self.W - 1) / 2, (self.H - 1) / 2)

    def iter_frames(
        self,
        seed: int,
        frames: int,
        domain: str = "source",
        scene: str = "street",
        rig: CameraRig | None = None,
        appearance: Appearance | None = None,
        turns: tuple[int, ...] = (),
        randomize: tuple[str, ...] = (),
    ):
        """Yield (rgb, semantic, depth, normals, pose) per frame; also sets `self.last_meta` and
        `self.last_rig` (the rig used, for the intrinsics).

        ``turns``: frames where a fast camera turn starts (see :func:`turn_yaw`).
        ``randomize``: per-clip appearance/camera randomisation groups (:mod:`.randomize`)."""
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
        rig = rig or RIGS[domain]
        app = appearance or APPEARANCES[domain]
        randomized: dict = {}
        if randomize:
            from .randomize import apply

            app, rig, randomized = apply(tuple(randomize), seed, app, rig)
        self.last_rig = rig
        sc = build_scene(scene, seed, frames)
        K = self.intrinsics(rig)
        # Appearance randomness (object tints) never touches the geometry RNG.
        arng = np.random.default_rng([seed, 21])
        static = _flatten(sc.static)
        if app.color_jitter > 0:
            _jitter_colors(static, sc.static, arng, app.color_jitter)
        self.renderer.load(static)
        movers = []
        for m in sc.movers:
            v = _flatten(m.parts)
            if app.color_jitter > 0:
                _jitter_colors(v, m.parts, arng, app.color_jitter * 2)
            movers.append((m, v))
        nrng = np.random.default_rng([seed, 31])
        self.last_meta = {
            "seed": seed,
            "domain": domain,
            "scene": scene,
            "frames": frames,
            "height": self.H,
            "width": self.W,
            "dt": FRAME_DT,
            "camera_height": rig.height,
            "focal": rig.focal,
            "pitch_deg": rig.pitch_deg,
        }
        if turns:
            self.last_meta["turns"] = [int(x) for x in turns]
        if randomized:
            self.last_meta["randomize"] = randomized
        for i in range(frames):
            t = i * FRAME_DT
            dyn = []
            for m, v in movers:
                R = _rot_z(m.yaw)
                w = v.copy()
                w[:, 0:3] = v[:, 0:3] @ R.T + (m.start + m.velocity * t)
                w[:, 3:6] = v[:, 3:6] @ R.T
                dyn.append(w)
            self.renderer.set_dynamic(np.concatenate(dyn) if dyn else np.zeros((0, 10), np.float32))
            pose = camera_pose(sc, rig, t)
            if turns:  # rotate the view about the world's vertical axis through the camera
                pose[:3, :3] = _rot_z(turn_yaw(i, turns)) @ pose[:3, :3]
            rgb, sem, depth, normals = self.renderer.render(pose, K, app, sc.sky_class)
            rgb = postprocess(rgb, sem, sc.sky_class, app, nrng, sky_gradient=sc.kind == "street")
            yield rgb, sem, depth, normals, pose.astype(np.float32)

    def iter_frames_events(
        self,
        seed: int,
        frames: int,
        domain: str = "source",
        scene: str = "street",
        cut_every: int = 0,
        turn_every: int = 0,
        randomize: tuple[str, ...] = (),
    ):
        """Like :meth:`iter_frames`, with hard cuts (a new scene, seed + 7919 k, every ``cut_every``
        frames) and fast camera turns (every ``turn_every`` frames within a shot); 0 disables.
        Why: adaptive keyframe policies must be measured on content that is not uniform.
        ``self.last_meta`` gets ``cuts`` and ``turns`` (frame indices in the whole clip)."""
        if cut_every < 0 or turn_every < 0:
            raise ValueError(f"cut_every and turn_every must be >= 0, got {cut_every}, {turn_every}")
        shot = cut_every if cut_every > 0 else frames
        cuts, turns = [], []
        for k, start in enumerate(range(0, frames, shot)):
            n = min(shot, frames - start)
            local = tuple(range(turn_every, n - 1, turn_every)) if turn_every > 0 else ()
            if start:
                cuts.append(start)
            turns += [start + x for x in local]
            yield from self.iter_frames(seed + 7919 * k, n, domain, scene, turns=local, randomize=randomize)
        self.last_meta.update(seed=seed, frames=frames)
        if cut_every > 0 or turn_every > 0:
            self.last_meta.update(cuts=cuts, turns=turns)

    def clip(
        self,
        seed: int,
        frames: int,
        domain: str = "source",
        scene: str = "street",
        rig: CameraRig | None = None,
        appearance: Appearance | None = None,
        randomize: tuple[str, ...] = (),
    ) -> Clip:
        out = list(self.iter_frames(seed, frames, domain, scene, rig, appearance, randomize=randomize))
        rgb, sem, depth, normals, poses = (np.stack(x) for x in zip(*out))
        classes = STREET_CLASSES if scene == "street" else INDOOR_CLASSES
        return Clip(
            rgb,
            sem,
            depth,
            normals,
            self.intrinsics(self.last_rig),
            poses,
            classes,
            dict(self.last_meta),
        )


TURN_DEG, TURN_FRAMES = 40.0, 3  # a fast turn: 40 degrees in 3 frames (130 deg/s at 10 Hz)


def turn_yaw(i: int, turns: tuple[int, ...]) -> float:
    """Extra camera yaw (radians) at frame ``i``: each turn ramps by TURN_DEG over TURN_FRAMES frames,
    alternating left and right so the camera keeps looking along the street on average."""
    yaw = 0.0
    for k, start in enumerate(turns):
        done = min(max(i - start, 0), TURN_FRAMES) / TURN_FRAMES
        yaw += (1 if k % 2 == 0 else -1) * math.radians(TURN_DEG) * done
    return yaw


def _jitter_colors(verts: np.ndarray, parts: list[Part], rng: np.random.Generator, amount: float) -> None:
    """Per-object colour variation (target domain), in place on the interleaved vertex array."""
    start = 0
    for p in parts:
        n = len(p.tris) * 3
        verts[start : start + n, 6:9] = _tint(rng, p.color, amount)
        start += n


def generate_clip(
    seed: int, frames: int, size: tuple[int, int], domain: str = "source", scene: str = "street"
) -> Clip:
    """One-shot convenience: create a renderer, render one clip, release the context."""
    with SyntheticGenerator(*size) as gen:
        return gen.clip(seed, frames, domain, scene)
