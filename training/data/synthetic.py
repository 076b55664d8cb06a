"""Procedural driving-style clips with exact dense labels, rasterised with OpenGL (moderngl, EGL).

Why moderngl + Mesa EGL: measured on the 2-core CI machines it renders RGB + depth + ids + exact
normals at ~100 fps for 256x512 with custom shaders (llvmpipe, no GPU, no display), against
~12-15 fps for MuJoCo and ~5 fps for pybullet's TinyRenderer. trimesh only builds primitive meshes.

One render pass writes two colour attachments:
  0: RGBA8   rgb = shaded colour, a = (class id + 1) / 255 (exact; 0 = nothing drawn)
  1: RGBA32F xyz = unit normal in the camera optical frame, w = z-depth in metres
Pixels nothing covers are sky (class `sky`, or `wall` indoors; depth 0 = invalid, normal 0).

Geometry and appearance are seeded separately, so `source` and `target` clips of one seed show the
same scene and objects with the same motion; only the look and the camera rig differ.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from .classes import BUILDING, INDOOR_CLASSES, PERSON, POLE, ROAD, SIDEWALK, SKY, VEGETATION, VEHICLE
from .classes import CLASSES as STREET_CLASSES
from .geometry import intrinsics_matrix

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


# --------------------------------------------------------------------------------------------------
# OpenGL renderer
# --------------------------------------------------------------------------------------------------
_VERT = """
#version 330
uniform mat4 u_view;   // world -> optical
uniform mat4 u_proj;   // optical -> clip (rows map to image rows top-down on readback)
in vec3 in_pos; in vec3 in_normal; in vec3 in_color; in float in_cls;
out vec3 v_world; out vec3 v_opt; out vec3 v_nworld; out vec3 v_color; flat out float v_cls;
void main() {
    vec4 p = u_view * vec4(in_pos, 1.0);
    v_world = in_pos; v_opt = p.xyz; v_nworld = in_normal; v_color = in_color; v_cls = in_cls;
    gl_Position = u_proj * p;
}
"""

_FRAG = """
#version 330
uniform mat4 u_view;
uniform vec3 u_sun; uniform vec3 u_sun_color; uniform float u_ambient;
uniform int u_textured; uniform float u_haze; uniform vec3 u_haze_color;
in vec3 v_world; in vec3 v_opt; in vec3 v_nworld; in vec3 v_color; flat in float v_cls;
layout(location = 0) out vec4 o_color;
layout(location = 1) out vec4 o_geom;

float hash(vec3 p) { return fract(sin(dot(p, vec3(12.9898, 78.233, 37.719))) * 43758.5453); }
float vnoise(vec3 p) {
    vec3 i = floor(p); vec3 f = fract(p); f = f * f * (3.0 - 2.0 * f);
    vec3 X = vec3(1, 0, 0), Y = vec3(0, 1, 0), Z = vec3(0, 0, 1);
    float a = mix(mix(hash(i), hash(i + X), f.x), mix(hash(i + Y), hash(i + X + Y), f.x), f.y);
    vec3 W = Y + Z;
    float b = mix(mix(hash(i + Z), hash(i + X + Z), f.x), mix(hash(i + W), hash(i + X + W), f.x), f.y);
    return mix(a, b, f.z);
}
void main() {
    vec3 n_world = normalize(v_nworld);
    vec3 n_opt = normalize(mat3(u_view) * n_world);
    if (dot(n_opt, v_opt) > 0.0) { n_opt = -n_opt; n_world = -n_world; }  // double-sided
    vec3 albedo = v_color;
    if (u_textured == 1) {
        int c = int(v_cls + 0.5);
        float fine = vnoise(v_world * 8.0), coarse = vnoise(v_world * 0.7);
        albedo *= 0.75 + 0.35 * coarse + 0.15 * fine;
        if (c == 2) {  // building: window grid
            vec3 q = fract(v_world * vec3(0.45, 0.45, 0.33));
            float win = step(0.25, q.x + q.y - floor(q.x + q.y)) * step(0.35, q.z) * step(q.z, 0.8);
            float wall = step(0.5, abs(n_world.x) + abs(n_world.y));
            albedo = mix(albedo, vec3(0.15, 0.18, 0.22), 0.6 * win * wall);
        } else if (c == 0) {  // road: lane dashes at y = 0
            float dash = step(abs(v_world.y), 0.08) * step(0.5, fract(v_world.x / 6.0));
            albedo = mix(albedo, vec3(0.9, 0.9, 0.85), dash);
        } else if (c == 4) {  // vegetation: leafy speckle
            albedo *= 0.6 + 0.8 * vnoise(v_world * 5.0);
        }
    }
    float lambert = max(dot(n_world, normalize(u_sun)), 0.0);
    vec3 col = albedo * (u_ambient + (1.0 - u_ambient) * lambert * u_sun_color);
    float fog = 1.0 - exp(-u_haze * v_opt.z);
    col = mix(col, u_haze_color, fog);
    o_color = vec4(clamp(col, 0.0, 1.0), (v_cls + 1.0) / 255.0);  // 0 is kept for "background"
    o_geom = vec4(n_opt, v_opt.z);
}
"""


def egl_available() -> tuple[bool, str]:
    """Whether a headless OpenGL 3.3 context can be created; (ok, reason)."""
    try:
        import moderngl

        ctx = moderngl.create_standalone_context(backend="egl")
        ctx.release()
        return True, "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "no renderer here"
        return False, f"{type(exc).__name__}: {exc}"


class Renderer:
    """Owns one EGL context and an offscreen framebuffer of a fixed size."""

    def __init__(self, height: int, width: int, near: float = 0.1, far: float = 400.0) -> None:
        import moderngl

        # Mesa's llvmpipe: cap threads to the machine so two generators don't oversubscribe.
        os.environ.setdefault("LP_NUM_THREADS", str(max(1, min(4, os.cpu_count() or 1))))
        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.H, self.W, self.near, self.far = height, width, near, far
        self.prog = self.ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        self.color = self.ctx.texture((width, height), 4, dtype="f1")
        self.geom = self.ctx.texture((width, height), 4, dtype="f4")
        self.depth_rb = self.ctx.depth_renderbuffer((width, height))
        self.fbo = self.ctx.framebuffer([self.color, self.geom], self.depth_rb)
        self._static = None
        self._dynamic = None
        self._dyn_vbo = None

    def release(self) -> None:
        self.ctx.release()

    def _vao(self, data: np.ndarray):
        vbo = self.ctx.buffer(np.ascontiguousarray(data, dtype=np.float32).tobytes() or b"\0" * 40)
        fmt = "3f 3f 3f 1f"
        vao = self.ctx.vertex_array(self.prog, [(vbo, fmt, "in_pos", "in_normal", "in_color", "in_cls")])
        return vbo, vao

    def load(self, static: np.ndarray) -> None:
        """Upload the static geometry (interleaved vertices) once per clip."""
        if self._static is not None:
            self._static[0].release()
            self._static[1].release()
        self._static = (*self._vao(static), len(static))

    def set_dynamic(self, verts: np.ndarray) -> None:
        if self._dynamic is not None:
            self._dynamic[0].release()
            self._dynamic[1].release()
        self._dynamic = (*self._vao(verts), len(verts)) if len(verts) else None

    def projection(self, K: np.ndarray) -> np.ndarray:  # noqa: N803
        """Optical-frame -> clip matrix. NDC y grows with the image row, so the framebuffer's first
        (bottom) row is image row 0 and no flip is needed on readback."""
        W, H, n, f = self.W, self.H, self.near, self.far
        P = np.zeros((4, 4))
        P[0, 0] = 2 * K[0, 0] / W
        P[0, 2] = 2 * (K[0, 2] + 0.5) / W - 1
        P[1, 1] = 2 * K[1, 1] / H
        P[1, 2] = 2 * (K[1, 2] + 0.5) / H - 1
        P[2, 2] = (f + n) / (f - n)
        P[2, 3] = -2 * f * n / (f - n)
        P[3, 2] = 1.0
        return P

    def render(
        self,
        pose: np.ndarray,
        K: np.ndarray,  # noqa: N803
        app: Appearance,
        sky_class: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> rgb (H,W,3) float32 [0,1], semantic (H,W) uint8, depth (H,W) float32, normals (H,W,3)."""
        view = np.linalg.inv(pose)
        # GL wants column-major; numpy arrays are row-major, so upload the transpose.
        self.prog["u_view"].write(view.T.astype("f4").tobytes())
        self.prog["u_proj"].write(self.projection(K).T.astype("f4").tobytes())
        self.prog["u_sun"].value = tuple(app.sun)
        self.prog["u_sun_color"].value = tuple(app.sun_color)
        self.prog["u_ambient"].value = app.ambient
        self.prog["u_textured"].value = int(app.textured)
        self.prog["u_haze"].value = app.haze
        self.prog["u_haze_color"].value = tuple(app.sky_horizon)
        self.fbo.use()
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.ctx.disable(self.ctx.CULL_FACE)
        # Zeros everywhere: alpha 0 marks "nothing drawn" (sky), geometry 0 marks invalid.
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        for item in (self._static, self._dynamic):
            if item is not None and item[2]:
                item[1].render(vertices=item[2])
        c = np.frombuffer(self.fbo.read(components=4, attachment=0, dtype="f1"), dtype=np.uint8)
        c = c.reshape(self.H, self.W, 4)
        g = np.frombuffer(self.fbo.read(components=4, attachment=1, dtype="f4"), dtype=np.float32)
        g = g.reshape(self.H, self.W, 4)
        rgb = c[..., :3].astype(np.float32) / 255.0
        drawn = c[..., 3] > 0
        semantic = np.where(drawn, c[..., 3] - 1, sky_class).astype(np.uint8)
        rgb[~drawn] = app.sky_top
        depth = g[..., 3].copy()
        normals = g[..., :3].copy()
        return rgb, semantic, depth, normals


# --------------------------------------------------------------------------------------------------
# Post-processing for the target domain (sensor look); labels are untouched.
# --------------------------------------------------------------------------------------------------
def _blur(img: np.ndarray, passes: int) -> np.ndarray:
    for _ in range(passes):
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
        img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4
    return img


def postprocess(
    rgb: np.ndarray,
    semantic: np.ndarray,
    sky_class: int,
    app: Appearance,
    rng: np.random.Generator,
    sky_gradient: bool,
) -> np.ndarray:
    H, W, _ = rgb.shape
    if sky_gradient and app.sky_top != app.sky_horizon:
        t = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None, None] ** 0.7
        sky = (1 - t) * np.array(app.sky_top, np.float32) + t * np.array(app.sky_horizon, np.float32)
        rgb = np.where((semantic == sky_class)[..., None], np.broadcast_to(sky, rgb.shape), rgb)
    if app.blur:
        rgb = _blur(rgb, app.blur)
    rgb = rgb * np.array(app.gain, dtype=np.float32)
    if app.noise_std > 0:
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
        rgb = rgb * (1.0 - 0.25 * r2[..., None])  # vignetting
        rgb = rgb + rng.normal(0.0, app.noise_std, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


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
