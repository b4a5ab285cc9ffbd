"""The event camera: per-pixel log-intensity change between two renders of an ego-motion pair, thresholded
into positive/negative events (with per-pixel threshold mismatch and background-activity noise), rendered into
the common event frame with `render_event_frame`.

The `eventlowres` failure case senses at DELIVER's low event resolution (512 of 1042 px) and returns the small
frame: the data set stores it that way and loaders upsample it with nearest neighbour.
"""

from __future__ import annotations

import cv2
import numpy as np

from mlesam_core.sensors import EVENT_COUNT_SCALES, render_event_frame

THRESHOLD = 0.2  # log-intensity contrast per event
THRESHOLD_MISMATCH = 0.03  # sigma of the per-pixel threshold
MAX_EVENTS = 8  # per pixel and frame
COUNT_SCALE = EVENT_COUNT_SCALES["deliver"]  # event frame value per event (8 events saturate the 8-bit frame)
LOW_RES_FRACTION = 512.0 / 1042.0  # DELIVER's event-low-resolution case
LOG_EPS = 0.01  # dark floor of the log response


def luminance(radiance: np.ndarray) -> np.ndarray:
    """HxW luminance (Rec. 709 weights) of an HxWx3 linear radiance image."""
    return radiance @ np.array([0.2126, 0.7152, 0.0722], np.float32)


def low_res_size(size: tuple[int, int]) -> tuple[int, int]:
    """Event-frame size of the `eventlowres` case for an image of `size`."""
    return max(1, round(size[0] * LOW_RES_FRACTION)), max(1, round(size[1] * LOW_RES_FRACTION))


def event_frame(previous: np.ndarray, current: np.ndarray, noise_rate: float, case: str | None,
                rng: np.random.Generator) -> np.ndarray:
    """Two radiance images (HxWx3) -> HxWx3 uint8 event frame (positive count, negative count, 0) x COUNT_SCALE."""
    log_prev = np.log(luminance(previous) + LOG_EPS)
    log_curr = np.log(luminance(current) + LOG_EPS)
    size = log_curr.shape
    if case == "eventlowres":
        size = low_res_size(size)
        log_prev = cv2.resize(log_prev, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        log_curr = cv2.resize(log_curr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    change = log_curr - log_prev
    threshold = THRESHOLD + THRESHOLD_MISMATCH * rng.standard_normal(size, dtype=np.float32)
    counts = np.minimum(np.floor(np.abs(change) / np.maximum(threshold, 0.05)), MAX_EVENTS).astype(np.int64)
    noise = rng.random(size, dtype=np.float32) < noise_rate
    counts = counts + noise
    polarity = np.where(noise & (counts == 1), rng.random(size, dtype=np.float32) < 0.5, change > 0)
    ys, xs = np.nonzero(counts)
    repeat = counts[ys, xs]
    return render_event_frame(np.repeat(xs, repeat), np.repeat(ys, repeat), np.repeat(polarity[ys, xs], repeat),
                              size, count_scale=COUNT_SCALE)
