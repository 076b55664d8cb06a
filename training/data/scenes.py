"""Procedural scene description of the synthetic generator: per-domain camera rigs and looks, and
the street and indoor scenes as triangle soups with classes, plus the camera trajectory.

Pure numpy (trimesh builds the primitive meshes); no OpenGL here, so scenes can be built and checked
without a renderer (:mod:`.render` rasterises them, :mod:`.synthetic` turns them into clips).

Geometry and appearance are seeded separately, so `source` and `target` clips of one seed show the
same scene and objects with the same motion; only the look and the camera rig differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .classes import BUILDING, INDOOR_CLASSES, PERSON, POLE, ROAD, SIDEWALK, SKY, VEGETATION, VEHICLE
from .classes import CLASSES as STREET_CLASSES

DOMAINS = ("source", "target")
SCENES = ("street", "indoor")
FRAME_DT = 0.1  # seconds between frames (10 Hz, like the paper's video benchmarks)

# Optical frame (x right, y down, z forward) axes expressed in a ROS world frame (x forward, y left,
# z up) for a camera looking along +x: columns are the optical axes.
_R_WORLD_FROM_OPT = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Camera rig and appearance per domain
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraRig:
    height: float  # metres above the ground
    focal: float  # fx = fy = focal * image width
    pitch_deg: float  # positive looks down


@dataclass(frozen=True)
class Appearance:
    textured: bool
    sun: tuple[float, float, float]  # direction towards the sun, world frame
    sun_color: tuple[float, float, float]
    ambient: float
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    haze: float  # exponential fog density per metre
    color_jitter: float  # per-object palette variation
    noise_std: float  # sensor noise, [0,1] units
    blur: int  # passes of a [1,2,1] blur
    gain: tuple[float, float, float]  # white balance


RIGS = {
    "source": CameraRig(height=1.6, focal=0.80, pitch_deg=2.0),
    "target": CameraRig(height=1.25, focal=0.62, pitch_deg=0.5),
}
APPEARANCES = {
    "source": Appearance(
        textured=False,
        sun=(0.3, 0.5, 0.8),
        sun_color=(1.0, 1.0, 1.0),
        ambient=0.45,
        sky_top=(0.55, 0.70, 0.90),
        sky_horizon=(0.55, 0.70, 0.90),
        haze=0.0,
        color_jitter=0.0,
        noise_std=0.0,
        blur=0,
        gain=(1.0, 1.0, 1.0),
    ),
    "target": Appearance(
        textured=True,
        sun=(-0.6, -0.3, 0.35),
        sun_color=(1.0, 0.85, 0.65),
        ambient=0.30,
        sky_top=(0.35, 0.45, 0.65),
        sky_horizon=(0.85, 0.75, 0.65),
        haze=0.006,
        color_jitter=0.25,
        noise_std=0.025,
        blur=1,
        gain=(1.08, 0.98, 0.86),
    ),
}

# Base colours (linear-ish RGB in [0,1]) per street class for the renderer; not the label palette.
_STREET_BASE = np.array(
    [
        [0.35, 0.33, 0.36],  # road
        [0.62, 0.58, 0.55],  # sidewalk
        [0.60, 0.45, 0.38],  # building
        [0.45, 0.45, 0.48],  # pole
        [0.25, 0.50, 0.18],  # vegetation
        [0.15, 0.25, 0.60],  # vehicle
        [0.75, 0.45, 0.35],  # person
        [0.55, 0.70, 0.90],  # sky
    ]
)
_INDOOR_BASE = np.array(
    [
        [0.55, 0.42, 0.30],  # floor
        [0.82, 0.80, 0.74],  # wall
        [0.92, 0.92, 0.90],  # ceiling
        [0.50, 0.32, 0.20],  # table
        [0.30, 0.30, 0.55],  # chair
        [0.45, 0.55, 0.45],  # cabinet
        [0.75, 0.45, 0.35],  # person
    ]
)


# --------------------------------------------------------------------------------------------------
# Scene description (pure numpy; no OpenGL needed)
# --------------------------------------------------------------------------------------------------
@dataclass
class Part:
    """A triangle soup of one object: flat per-face normals, one class, one base colour."""

    tris: np.ndarray  # (F,3,3) world (or object) coordinates
    cls: int
    color: np.ndarray  # (3,)


@dataclass
class Mover:
    """An independently moving object: parts in object coordinates + a straight-line trajectory."""

    parts: list[Part]
    start: np.ndarray  # (3,) world position at t=0
    velocity: np.ndarray  # (3,) m/s
    yaw: float


@dataclass
class Scene:
    kind: str
    classes: tuple[str, ...]
    static: list[Part] = field(default_factory=list)
    movers: list[Mover] = field(default_factory=list)
    cam_start: np.ndarray = field(default_factory=lambda: np.zeros(3))
    cam_speed: float = 0.0
    cam_lateral: float = 0.0  # amplitude of a gentle lateral weave
    cam_phase: float = 0.0
    sky_class: int = SKY


def _box(center, size, yaw: float = 0.0) -> np.ndarray:
    import trimesh

    m = trimesh.creation.box(extents=size)
    return _place(m.vertices[m.faces], center, yaw)


def _cylinder(center, radius: float, height: float, sections: int = 10) -> np.ndarray:
    import trimesh

    m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    return _place(m.vertices[m.faces], center, 0.0)


def _sphere(center, radius: float) -> np.ndarray:
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=1, radius=radius)
    return _place(m.vertices[m.faces], center, 0.0)


def _rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _place(tris: np.ndarray, center, yaw: float) -> np.ndarray:
    return tris @ _rot_z(yaw).T + np.asarray(center, dtype=np.float64)


def _quad(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    a, b, c, d = (x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)
    return np.array([[a, b, c], [a, c, d]], dtype=np.float64)


def _tint(rng: np.random.Generator, base: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(base * (1.0 + amount * rng.uniform(-1, 1, 3)), 0.02, 1.0)


def build_street(seed: int, frames: int) -> Scene:
    """A straight street along world +x: road, sidewalks, building rows, poles, trees, cars, people."""
    rng = np.random.default_rng([seed, 11])
    speed = float(rng.uniform(5.0, 10.0))
    length = speed * frames * FRAME_DT + 140.0
    x0, x1 = -30.0, length
    s = Scene(kind="street", classes=STREET_CLASSES)
    s.cam_speed = speed
    s.cam_start = np.array([0.0, -2.0, 0.0])
    s.cam_lateral = float(rng.uniform(0.0, 0.4))
    s.cam_phase = float(rng.uniform(0, 2 * math.pi))
    c = _STREET_BASE
    road_half, walk = 5.0, 3.0
    add = s.static.append
    add(Part(_quad(x0, x1, -road_half, road_half, 0.0), ROAD, c[ROAD]))
    for side in (-1, 1):
        yc = side * (road_half + walk / 2)
        add(Part(_box(((x0 + x1) / 2, yc, 0.075), (x1 - x0, walk, 0.15)), SIDEWALK, c[SIDEWALK]))
        # Ground behind the buildings reads as sidewalk (paved plaza), so gaps are labelled.
        add(
            Part(_quad(x0, x1, *sorted((side * (road_half + walk), side * 60.0)), 0.0), SIDEWALK, c[SIDEWALK])
        )
        # Front row of buildings with random widths, heights, set-backs and occasional gaps.
        x = x0
        while x < x1:
            w = float(rng.uniform(6, 20))
            if rng.uniform() < 0.15:
                x += w
                continue
            h = float(rng.uniform(5, 25))
            d = float(rng.uniform(8, 15))
            setback = float(rng.uniform(0, 2.5))
            yb = side * (road_half + walk + setback + d / 2)
            add(Part(_box((x + w / 2, yb, h / 2), (w, d, h)), BUILDING, c[BUILDING]))
            x += w + float(rng.uniform(0, 1.5))
        # Back row fills the skyline through gaps.
        x = x0
        while x < x1:
            w = float(rng.uniform(15, 35))
            h = float(rng.uniform(15, 40))
            add(Part(_box((x + w / 2, side * 38.0, h / 2), (w, 10, h)), BUILDING, c[BUILDING]))
            x += w
        # Poles (street lights with an arm) along the kerb.
        x = x0 + float(rng.uniform(0, 10))
        while x < x1:
            yp = side * (road_half + 0.4)
            add(Part(_cylinder((x, yp, 3.0), 0.1, 6.0, 8), POLE, c[POLE]))
            add(Part(_box((x, yp - side * 0.8, 5.9), (0.15, 1.6, 0.12)), POLE, c[POLE]))
            x += float(rng.uniform(15, 30))
        # Trees: trunk + faceted canopy, both vegetation; plus low hedges.
        x = x0 + float(rng.uniform(0, 8))
        while x < x1:
            yt = side * (road_half + walk - 0.8)
            add(Part(_cylinder((x, yt, 1.3), 0.18, 2.6, 8), VEGETATION, c[VEGETATION] * 0.7))
            r = float(rng.uniform(1.2, 2.2))
            add(Part(_sphere((x, yt, 2.6 + r * 0.8), r), VEGETATION, c[VEGETATION]))
            if rng.uniform() < 0.3:
                hl = float(rng.uniform(2, 5))
                add(Part(_box((x + 3, yt, 0.5), (hl, 0.8, 0.7)), VEGETATION, c[VEGETATION]))
            x += float(rng.uniform(8, 20))
        # Parked cars at the kerb.
        x = x0 + float(rng.uniform(0, 10))
        while x < x1:
            if rng.uniform() < 0.6:
                car = _car_parts(rng, c[VEHICLE])
                tris = [
                    Part(_place(p.tris, (x, side * (road_half - 1.1), 0.0), 0.0), p.cls, p.color) for p in car
                ]
                s.static.extend(tris)
            x += float(rng.uniform(6, 14))
    # Moving cars: same direction ahead of the camera, oncoming in the other lane.
    for _ in range(int(rng.integers(2, 5))):
        ahead = float(rng.uniform(12, 60))
        v = speed * float(rng.uniform(0.7, 1.1))
        s.movers.append(
            Mover(_car_parts(rng, c[VEHICLE]), np.array([ahead, -2.0, 0.0]), np.array([v, 0, 0]), 0.0)
        )
    for _ in range(int(rng.integers(2, 6))):
        xs = float(rng.uniform(20, length))
        v = float(rng.uniform(6, 12))
        s.movers.append(
            Mover(_car_parts(rng, c[VEHICLE]), np.array([xs, 2.0, 0.0]), np.array([-v, 0, 0]), math.pi)
        )
    # Pedestrians walking along the sidewalks, a few crossing.
    for _ in range(int(rng.integers(4, 10))):
        side = 1 if rng.uniform() < 0.5 else -1
        xs = float(rng.uniform(5, length - 60))
        v = float(rng.uniform(0.8, 1.6)) * (1 if rng.uniform() < 0.5 else -1)
        yp = side * (road_half + float(rng.uniform(0.8, 2.2)))
        vel = np.array([v, 0.0, 0.0])
        if rng.uniform() < 0.2:  # crossing the road
            vel = np.array([0.0, -side * abs(v), 0.0])
        s.movers.append(Mover(_person_parts(rng, c[PERSON], 0.15), np.array([xs, yp, 0.15]), vel, 0.0))
    return s


def _car_parts(rng: np.random.Generator, base: np.ndarray) -> list[Part]:
    L, W = float(rng.uniform(3.8, 4.8)), float(rng.uniform(1.7, 1.95))
    col = _tint(rng, base, 0.0)
    return [
        Part(_box((0, 0, 0.75), (L, W, 0.8)), VEHICLE, col),
        Part(_box((-0.2, 0, 1.42), (L * 0.55, W * 0.9, 0.55)), VEHICLE, col),
        *[
            Part(_box((sx * L * 0.32, sy * W * 0.45, 0.33), (0.65, 0.25, 0.66)), VEHICLE, col * 0.3)
            for sx in (-1, 1)
            for sy in (-1, 1)
        ],
    ]


def _person_parts(rng: np.random.Generator, base: np.ndarray, z0: float) -> list[Part]:
    h = float(rng.uniform(1.55, 1.9))
    return [
        Part(_box((0, 0.1, h * 0.24), (0.18, 0.16, h * 0.48)), PERSON, base * 0.6),
        Part(_box((0, -0.1, h * 0.24), (0.18, 0.16, h * 0.48)), PERSON, base * 0.6),
        Part(_cylinder((0, 0, h * 0.64), 0.22, h * 0.32, 8), PERSON, base),
        Part(_sphere((0, 0, h * 0.89), 0.12), PERSON, base * 1.1),
    ]


def build_indoor(seed: int, frames: int) -> Scene:
    """A small room: floor, walls, ceiling, tables, chairs, cabinets and a walking person."""
    rng = np.random.default_rng([seed, 12])
    floor, wall, ceiling, table, chair, cabinet, person = range(len(INDOOR_CLASSES))
    c = _INDOOR_BASE
    Lx, Ly, Hz = float(rng.uniform(8, 12)), float(rng.uniform(5, 8)), float(rng.uniform(2.6, 3.2))
    s = Scene(kind="indoor", classes=INDOOR_CLASSES, sky_class=wall)
    s.cam_speed = min(0.8, (Lx - 3.0) / max(frames * FRAME_DT, 1e-3))
    s.cam_start = np.array([0.5, float(rng.uniform(-0.5, 0.5)), 0.0])
    s.cam_lateral = 0.2
    s.cam_phase = float(rng.uniform(0, 2 * math.pi))
    add = s.static.append
    add(Part(_quad(-1, Lx, -Ly / 2, Ly / 2, 0.0), floor, c[floor]))
    add(Part(_quad(-1, Lx, -Ly / 2, Ly / 2, Hz), ceiling, c[ceiling]))
    for y in (-Ly / 2 - 0.05, Ly / 2 + 0.05):
        add(Part(_box(((Lx - 1) / 2, y, Hz / 2), (Lx + 1, 0.1, Hz)), wall, c[wall]))
    for x in (-1.05, Lx + 0.05):
        add(Part(_box((x, 0, Hz / 2), (0.1, Ly, Hz)), wall, c[wall]))
    for _ in range(int(rng.integers(2, 4))):
        x, y = float(rng.uniform(2, Lx - 1)), float(rng.choice([-1, 1]) * rng.uniform(1.2, Ly / 2 - 0.8))
        add(Part(_box((x, y, 0.73), (1.4, 0.8, 0.05)), table, c[table]))
        for dx in (-0.6, 0.6):
            for dy in (-0.3, 0.3):
                add(Part(_box((x + dx, y + dy, 0.36), (0.06, 0.06, 0.72)), table, c[table]))
        for dy in (-0.7, 0.7):
            add(Part(_box((x, y + dy, 0.23), (0.45, 0.45, 0.46)), chair, c[chair]))
            add(Part(_box((x, y + dy + np.sign(dy) * 0.2, 0.7), (0.45, 0.05, 0.5)), chair, c[chair]))
    for _ in range(int(rng.integers(1, 3))):
        x = float(rng.uniform(1, Lx - 1))
        side = float(rng.choice([-1, 1]))
        add(Part(_box((x, side * (Ly / 2 - 0.3), 0.9), (1.2, 0.55, 1.8)), cabinet, c[cabinet]))
    v = float(rng.uniform(0.5, 1.0)) * float(rng.choice([-1, 1]))
    s.movers.append(
        Mover(
            _person_parts(rng, c[person], 0.0),
            np.array([Lx / 2, float(rng.uniform(-1, 1)), 0.0]),
            np.array([0.0, v * 0.5, 0.0]),
            0.0,
        )
    )
    return s


def build_scene(kind: str, seed: int, frames: int) -> Scene:
    if kind == "street":
        return build_street(seed, frames)
    if kind == "indoor":
        return build_indoor(seed, frames)
    raise ValueError(f"unknown scene kind {kind!r}; expected one of {SCENES}")


def camera_pose(scene: Scene, rig: CameraRig, t: float) -> np.ndarray:
    """4x4 camera-to-world pose (optical frame -> ROS world) at time t seconds."""
    x = scene.cam_start[0] + scene.cam_speed * t
    w = 2 * math.pi * 0.15
    y = scene.cam_start[1] + scene.cam_lateral * math.sin(w * t + scene.cam_phase)
    # Heading follows the weave (derivative of the lateral offset), so the view sways gently.
    dy = scene.cam_lateral * w * math.cos(w * t + scene.cam_phase)
    yaw = math.atan2(dy, max(scene.cam_speed, 1e-3))
    pitch = math.radians(rig.pitch_deg)
    R_pitch = np.array(  # about world y: positive pitch tilts the optical axis down
        [[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0], [-math.sin(pitch), 0, math.cos(pitch)]]
    )
    T = np.eye(4)
    T[:3, :3] = _rot_z(yaw) @ R_pitch @ _R_WORLD_FROM_OPT
    T[:3, 3] = (x, y, rig.height)
    return T


def _flatten(parts: list[Part]) -> np.ndarray:
    """Interleaved vertices: pos(3) normal(3) colour(3) class(1), flat normals per face."""
    if not parts:
        return np.zeros((0, 10), dtype=np.float32)
    out = []
    for p in parts:
        tris = p.tris
        n = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        F = len(tris)
        v = np.empty((F, 3, 10))
        v[..., 0:3] = tris
        v[..., 3:6] = n[:, None, :]
        v[..., 6:9] = p.color
        v[..., 9] = p.cls
        out.append(v.reshape(-1, 10))
    return np.concatenate(out).astype(np.float32)
