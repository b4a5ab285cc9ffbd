"""What happens to light between the scene and the lens: fog/haze (Koschmieder) and falling rain streaks."""

from __future__ import annotations

import cv2
import numpy as np

from mlesam_core.data.synthetic.conditions import Condition

STREAK_LEVELS = 4  # streak brightness is quantised so that each level is drawn with one polylines call


def apply_fog(radiance: np.ndarray, depth: np.ndarray, condition: Condition) -> np.ndarray:
    """Attenuate radiance with distance and add airlight: L = L0 * T + A * (1 - T), T = exp(-beta * depth)."""
    beta = condition.extinction
    if beta == 0:
        return radiance
    transmission = np.exp(-beta * np.where(np.isfinite(depth), depth, 1e6))[..., None].astype(np.float32)
    airlight = np.asarray(condition.fog_color, np.float32) * min(1.0, condition.ambient + 0.1)
    return radiance * transmission + airlight * (1 - transmission)


def rain_streaks(size: tuple[int, int], condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """HxW additive radiance of motion-blurred raindrops close to the lens (zeros without rain)."""
    height, width = size
    layer = np.zeros(size, np.float32)
    if condition.rain <= 0:
        return layer
    count = int(condition.rain * 0.01 * height * width)
    x = rng.uniform(0, width, count)
    y = rng.uniform(-0.1 * height, height, count)
    length = rng.uniform(0.03, 0.12, count) * height
    angle = np.radians(rng.normal(8.0, 4.0) + rng.normal(0, 3.0, count))
    ends = np.stack([x + length * np.sin(angle), y + length * np.cos(angle)], axis=1)
    lines = np.stack([np.stack([x, y], axis=1), ends], axis=1)
    level = rng.integers(1, STREAK_LEVELS + 1, count)
    for k in range(1, STREAK_LEVELS + 1):
        chosen = np.rint(lines[level == k]).astype(np.int32)
        if len(chosen):
            cv2.polylines(layer, list(chosen), False, 0.08 * k, 1, cv2.LINE_AA)
    return cv2.GaussianBlur(layer, (3, 3), 0)
