"""Events (x, y, polarity) -> event frame (positive count, negative count, 0): the common event currency."""

from __future__ import annotations

import numpy as np


def render_event_frame(x: np.ndarray, y: np.ndarray, polarity: np.ndarray, size: tuple[int, int],
                       count_scale: float = 1.0) -> np.ndarray:
    """Accumulate events into an HxWx3 uint8 frame: channel 0 positive, 1 negative counts x `count_scale`.

    polarity > 0 is positive (1/0 and +1/-1 encodings both work); events outside the image are dropped;
    counts saturate at 255. MUSES renders plain counts (count_scale 1).
    """
    x = np.asarray(x).reshape(-1)
    y = np.asarray(y).reshape(-1)
    polarity = np.asarray(polarity).reshape(-1)
    if not (x.shape == y.shape == polarity.shape):
        raise ValueError(f"events: x, y, polarity lengths differ ({x.size}, {y.size}, {polarity.size})")
    height, width = size
    xi, yi = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    xi, yi, positive = xi[inside], yi[inside], polarity[inside] > 0
    counts = np.zeros((2, height * width), dtype=np.float64)
    np.add.at(counts[0], yi[positive] * width + xi[positive], 1.0)
    np.add.at(counts[1], yi[~positive] * width + xi[~positive], 1.0)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:, :, :2] = np.clip(np.rint(counts.T.reshape(height, width, 2) * count_scale), 0, 255).astype(np.uint8)
    return frame
