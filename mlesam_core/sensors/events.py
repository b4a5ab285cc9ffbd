"""Events (x, y, polarity) -> event frame (positive count, negative count, 0): the common event currency."""

from __future__ import annotations

import numpy as np

# Event-frame value per event in each data set's event frames: the procedural generator renders DELIVER-format
# event frames at 32 per event (8 events saturate the 8-bit frame); MUSES' SDK renders plain counts. What a data
# set's frames are made of (the generator, converting frames back to events); the ROS pipeline renders at its
# explicit `events.count_scale` parameter, that of the data the model was trained on.
EVENT_COUNT_SCALES = {"deliver": 32.0, "muses": 1.0}


def event_count_scale(dataset: str | None) -> float:
    """The count scale of `dataset`'s event frames (plain counts, 1, for a data set not in the table)."""
    return EVENT_COUNT_SCALES.get(dataset or "", 1.0)


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
    if x.dtype.kind in "ui" and y.dtype.kind in "ui":  # integer pixels (decoded events): no floor needed
        xi, yi = x.astype(np.int64), y.astype(np.int64)
    else:
        xi, yi = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    positive = polarity > 0
    if not inside.all():  # decoded events usually all lie on the sensor: no copies then
        xi, yi, positive = xi[inside], yi[inside], positive[inside]
    # one histogram over (pixel, polarity) bins: several times faster than np.add.at for the same counts
    bins = (yi * width + xi) * 2 + (~positive)
    counts = np.bincount(bins, minlength=2 * height * width).reshape(height, width, 2)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    if float(count_scale).is_integer() and count_scale >= 0:  # the usual case: integer arithmetic, same values
        frame[:, :, :2] = np.minimum(counts * int(count_scale), 255)
    else:
        frame[:, :, :2] = np.clip(np.rint(counts * float(count_scale)), 0, 255).astype(np.uint8)
    return frame
