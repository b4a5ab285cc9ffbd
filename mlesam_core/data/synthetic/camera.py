"""The RGB camera: exposure, photon shot noise and read noise, gain, 8-bit quantisation, and the three camera
failure cases of DELIVER (motionblur, overexposure, underexposure).

Exposure acts before the noise (more light, less relative noise; too much, saturation); the auto-exposure gain
of dark scenes acts after it (it brightens noise with the signal), which is what makes night images grainy.
"""

from __future__ import annotations

import cv2
import numpy as np

from mlesam_core.data.synthetic.conditions import Condition

FULL_WELL = 1500.0  # photo-electrons at full scale
KNEE = 0.8  # the tone curve is linear up to here and rolls off smoothly towards white above it


def tone_curve(value: np.ndarray) -> np.ndarray:
    """Linear below KNEE, an exponential shoulder above (highlights compress instead of clipping hard)."""
    headroom = 1.0 - KNEE
    out = value.copy()
    high = value > KNEE
    out[high] = KNEE + headroom * (1.0 - np.exp(-(value[high] - KNEE) / headroom))
    return out


def motion_blur_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised line kernel of `length` pixels at `angle_deg` from the horizontal."""
    length = max(int(length) | 1, 3)
    kernel = np.zeros((length, length), np.float32)
    centre = length // 2
    dx, dy = np.cos(np.radians(angle_deg)) * centre, np.sin(np.radians(angle_deg)) * centre
    cv2.line(kernel, (int(round(centre - dx)), int(round(centre - dy))),
             (int(round(centre + dx)), int(round(centre + dy))), 1.0, 1, cv2.LINE_AA)
    return kernel / kernel.sum()


def camera_image(radiance: np.ndarray, condition: Condition, case: str | None,
                 rng: np.random.Generator) -> np.ndarray:
    """Scene radiance HxWx3 (after the atmosphere) -> HxWx3 uint8 RGB image."""
    signal = np.maximum(radiance, 0.0)
    if case == "motionblur":
        length = rng.uniform(0.04, 0.09) * radiance.shape[1]
        signal = cv2.filter2D(signal, -1, motion_blur_kernel(int(length), rng.uniform(-25, 25)),
                              borderType=cv2.BORDER_REFLECT)
    if case == "overexposure":
        signal = signal * rng.uniform(3.0, 6.0)
    elif case == "underexposure":
        signal = signal * rng.uniform(0.05, 0.12)
    # in units of the full well: shot noise variance s / FULL_WELL, read noise variance read_noise^2
    well = np.minimum(signal, 1.0)  # the pixel well saturates
    sigma = np.sqrt(well * (1.0 / FULL_WELL) + condition.read_noise ** 2)
    sigma *= rng.standard_normal(signal.shape, dtype=np.float32)
    well += sigma
    well *= condition.exposure
    value = tone_curve(well)
    value *= 255.0
    return np.clip(np.rint(value), 0, 255).astype(np.uint8)
