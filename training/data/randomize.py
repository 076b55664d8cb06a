"""Per-clip appearance and camera randomisation of the synthetic generator (``mtl-data generate
--randomize``): the cheapest lever against the synthetic-to-real gap (domain randomisation).

Each option perturbs one group of the domain's :class:`Appearance` / :class:`CameraRig`:

* ``texture``: procedural textures (windows, lane dashes, speckle) on in 75 % of clips;
* ``lighting``: sun direction and colour, ambient level, sky gradient, haze;
* ``color``: per-object tints and a white-balance gain;
* ``blur``: 0-2 passes of the [1,2,1] blur;
* ``noise``: sensor noise (with the vignetting that comes with it);
* ``camera``: camera height, focal length (lens) and pitch.

Why one fixed draw order for all groups: every clip draws the same sequence of numbers from its
own generator (seeded by the clip seed), whatever the options, so switching one option on or off
never changes what the others draw; and a clip is identical for the same seed. Geometry and labels
(apart from the camera group, which moves the camera) are untouched: the draws come from a
generator separate from the scene's.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .synthetic import Appearance, CameraRig

OPTIONS = ("texture", "lighting", "color", "blur", "noise", "camera")
_SALT = 41  # generator stream of the randomisation: [seed, 41] (the scene uses 11/12, tints 21, noise 31)


def parse_options(text: str) -> tuple[str, ...]:
    """``"all"``, ``"none"``/``""`` or a comma list of :data:`OPTIONS` -> the options in canonical order.

    Raises ``ValueError`` naming the unknown entry."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    if text == "all":
        return OPTIONS
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in OPTIONS]
    if bad:
        raise ValueError(f"unknown randomisation {bad[0]!r}; expected 'all', 'none' or names from "
                         f"{list(OPTIONS)}")
    return tuple(o for o in OPTIONS if o in names)


@dataclasses.dataclass(frozen=True)
class Draw:
    """One clip's random values (all groups, drawn in a fixed order)."""

    textured: bool
    sun: tuple[float, float, float]
    sun_color: tuple[float, float, float]
    ambient: float
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    haze: float
    color_jitter: float
    gain: tuple[float, float, float]
    blur: int
    noise_std: float
    height: float
    focal: float
    pitch_deg: float


def _rgb(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def draw(seed: int) -> Draw:
    """The clip's random values; a pure function of ``seed``."""
    rng = np.random.default_rng([seed, _SALT])
    textured = bool(rng.uniform() < 0.75)
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(12, 70))
    sun = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    warm = rng.uniform(0, 1)  # 0 = white noon sun, 1 = warm low sun
    sun_color = _rgb(np.array([1.0, 1.0 - 0.15 * warm, 1.0 - 0.35 * warm]) * rng.uniform(0.8, 1.2))
    ambient = float(rng.uniform(0.25, 0.6))
    # Sky: blue, grey overcast or hazy-warm, mixed; the horizon is lighter.
    blue, grey = np.array([0.45, 0.62, 0.90]), np.array([0.70, 0.72, 0.75])
    warm_sky = np.array([0.85, 0.75, 0.65])
    w = rng.dirichlet([1.5, 1.0, 0.6])
    top = np.clip(w[0] * blue + w[1] * grey + w[2] * warm_sky + rng.normal(0, 0.04, 3), 0.1, 1.0)
    horizon = np.clip(top + rng.uniform(0.0, 0.25) * (1.0 - top), 0.1, 1.0)
    haze = float(rng.uniform(0.0, 0.012))
    color_jitter = float(rng.uniform(0.1, 0.4))
    gain = _rgb(rng.uniform(0.85, 1.15, 3))
    blur = int(rng.integers(0, 3))
    noise_std = float(rng.uniform(0.0, 0.04))
    height = float(rng.uniform(1.1, 2.2))
    focal = float(rng.uniform(0.5, 0.95))
    pitch_deg = float(rng.uniform(-1.0, 5.0))
    return Draw(textured, sun, sun_color, ambient, _rgb(top), _rgb(horizon), haze,
                color_jitter, gain, blur, noise_std, height, focal, pitch_deg)


def apply(options: tuple[str, ...], seed: int, app: Appearance,
          rig: CameraRig) -> tuple[Appearance, CameraRig, dict]:
    """``app`` and ``rig`` with the enabled groups replaced by the clip's draw; plus the values used
    (for meta.json). No options: the inputs unchanged."""
    if not options:
        return app, rig, {}
    d = draw(seed)
    a: dict = {}
    r: dict = {}
    if "texture" in options:
        a.update(textured=d.textured)
    if "lighting" in options:
        a.update(sun=d.sun, sun_color=d.sun_color, ambient=d.ambient, sky_top=d.sky_top,
                 sky_horizon=d.sky_horizon, haze=d.haze)
    if "color" in options:
        a.update(color_jitter=d.color_jitter, gain=d.gain)
    if "blur" in options:
        a.update(blur=d.blur)
    if "noise" in options:
        a.update(noise_std=d.noise_std)
    if "camera" in options:
        r.update(height=d.height, focal=d.focal, pitch_deg=d.pitch_deg)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in {**a, **r}.items()}
    used = {"options": list(options), **values}
    return dataclasses.replace(app, **a), dataclasses.replace(rig, **r), used
