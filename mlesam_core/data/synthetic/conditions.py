"""The five DELIVER weather/light conditions as physical parameters every simulated sensor reads.

cloud: diffuse light, no shadows. sun: a low or high sun with hard shadows, bright. fog: light scattering
(visibility 20-70 m) attenuates camera contrast and LiDAR/depth returns with distance. rain: overcast, wet
asphalt, streaks in front of the lens, LiDAR/depth dropouts and spurious drop returns. night: almost no ambient
light, the ego car's headlights and street lamps light the scene, the camera's gain brings up noise; depth and
LiDAR are active sensors and barely change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlesam_core.data.deliver import CONDITIONS


@dataclass(frozen=True)
class Condition:
    """Physical parameters of one capture's weather and light."""

    name: str
    ambient: float  # sky (hemisphere) irradiance
    sun: float  # direct sunlight irradiance (0 when overcast)
    sun_direction: tuple[float, float, float]  # unit vector towards the sun (y down, so y < 0)
    shadows: bool
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    visibility: float  # metres (meteorological, contrast 5 %); inf = clear air
    fog_color: tuple[float, float, float]
    rain: float  # 0..1
    night: bool
    exposure: float  # camera gain (auto-exposure brings dark scenes up, noise with them)
    read_noise: float  # camera read noise (fraction of full scale) before gain
    event_noise_rate: float  # background-activity events per pixel per frame
    lidar_dropout: float  # random LiDAR return loss (fraction)
    depth_dropout: float  # random depth-camera hole fraction

    @property
    def extinction(self) -> float:
        """Visible-light extinction coefficient per metre (Koschmieder: 3 / visibility)."""
        return 0.0 if not np.isfinite(self.visibility) else 3.0 / self.visibility


def _sun_direction(elevation_deg: float, azimuth_deg: float) -> tuple[float, float, float]:
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    return (float(np.cos(e) * np.sin(a)), float(-np.sin(e)), float(np.cos(e) * np.cos(a)))


def sample_condition(name: str, rng: np.random.Generator) -> Condition:
    """Random parameters of condition `name` (one of DELIVER's five)."""
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r} (known: {', '.join(CONDITIONS)})")
    azimuth = rng.uniform(-150, 150)
    common: dict[str, Any] = dict(name=name, visibility=np.inf, fog_color=(0.0, 0.0, 0.0), rain=0.0, night=False,
                  read_noise=0.004, event_noise_rate=0.002, lidar_dropout=0.01, depth_dropout=0.02,
                  shadows=False, sun=0.0, sun_direction=_sun_direction(50, azimuth))
    if name == "sun":
        elevation = rng.uniform(15, 60)
        return Condition(**{**common, "ambient": rng.uniform(0.35, 0.5), "sun": rng.uniform(0.8, 1.0),
                            "sun_direction": _sun_direction(elevation, azimuth), "shadows": True,
                            "sky_top": (0.25, 0.45, 0.85), "sky_horizon": (0.65, 0.78, 0.95),
                            "exposure": rng.uniform(1.0, 1.15)})
    if name == "cloud":
        return Condition(**{**common, "ambient": rng.uniform(0.85, 1.05), "sun": rng.uniform(0.0, 0.15),
                            "sky_top": (0.62, 0.64, 0.68), "sky_horizon": (0.82, 0.83, 0.85),
                            "exposure": rng.uniform(0.95, 1.1)})
    if name == "fog":
        grey = rng.uniform(0.62, 0.78)
        return Condition(**{**common, "ambient": rng.uniform(0.8, 0.95), "visibility": rng.uniform(20, 70),
                            "fog_color": (grey, grey, grey * 1.02), "sky_top": (grey,) * 3,
                            "sky_horizon": (grey,) * 3, "exposure": 1.0, "lidar_dropout": 0.02,
                            "depth_dropout": 0.04})
    if name == "rain":
        return Condition(**{**common, "ambient": rng.uniform(0.55, 0.75), "rain": rng.uniform(0.5, 1.0),
                            "visibility": rng.uniform(150, 400), "fog_color": (0.55, 0.56, 0.58),
                            "sky_top": (0.38, 0.40, 0.43), "sky_horizon": (0.55, 0.56, 0.58),
                            "exposure": rng.uniform(1.1, 1.3), "read_noise": 0.008, "event_noise_rate": 0.006,
                            "lidar_dropout": 0.05, "depth_dropout": 0.06})
    return Condition(**{**common, "ambient": rng.uniform(0.008, 0.02), "night": True,
                        "sky_top": (0.004, 0.006, 0.015), "sky_horizon": (0.02, 0.022, 0.03),
                        "exposure": rng.uniform(1.6, 2.6), "read_noise": 0.012, "event_noise_rate": 0.02})
