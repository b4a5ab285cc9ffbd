"""Pinhole camera matrices at another image size: one rule for every caller (ROS camera_info, data set loaders)."""

from __future__ import annotations

import numpy as np

ASPECT_TOLERANCE = 0.01  # relative difference of height/width ratios still taken as the same aspect ratio


def scale_camera_matrix(matrix: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """K (3x3) or P (3x4) of an image of `from_size` (H, W) for the same view at `to_size`: the x row times the
    width ratio, the y row times the height ratio (image_geometry's rule for binning, the MUSES SDK's rescale_K)."""
    scaled = np.array(matrix, dtype=np.float64)
    scaled[0] *= to_size[1] / from_size[1]
    scaled[1] *= to_size[0] / from_size[0]
    return scaled


def same_aspect(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether sizes (H, W) `a` and `b` have the same aspect ratio (within ASPECT_TOLERANCE): one is a scaled view
    of the other (binning, a driver's resolution setting), not a crop."""
    ratio_a, ratio_b = a[0] / a[1], b[0] / b[1]
    return abs(ratio_a - ratio_b) <= ASPECT_TOLERANCE * ratio_b


__all__ = ["ASPECT_TOLERANCE", "scale_camera_matrix", "same_aspect"]
