"""The depth camera (a stereo/ToF-like active sensor): depth-dependent noise, holes, range limit.

Noise grows with the square of depth (stereo triangulation) and is partly spatially correlated; glass and the
sky return nothing; depth edges are unreliable (mixed pixels); fog shortens the range and rain adds holes.
Darkness does not matter: the sensor brings its own light. Returns metres, 0 = no measurement.
"""

from __future__ import annotations

import numpy as np

from mlesam_core.data.synthetic.conditions import Condition
from mlesam_core.data.synthetic.raycast import GBuffer
from mlesam_core.data.synthetic.surfaces import noise_tiles

MAX_RANGE = 80.0
NOISE_QUADRATIC = 1.2e-3  # sigma = NOISE_QUADRATIC * depth^2 + NOISE_FLOOR
NOISE_FLOOR = 0.01
EDGE_JUMP = 0.08  # relative depth change between neighbours that makes a pixel unreliable


def depth_measurement(g: GBuffer, glass: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """HxW float32 metres measured by the depth camera (0 = invalid)."""
    depth = np.where(np.isfinite(g.depth), g.depth, 0.0).astype(np.float32)
    sigma = NOISE_QUADRATIC * depth ** 2 + NOISE_FLOOR
    # matching errors of a stereo sensor come in blobs: smooth noise in image space, random offset per frame
    tile = noise_tiles()[1]
    offset = rng.integers(0, tile.shape[0], 2)
    rows = (offset[0] + np.arange(depth.shape[0]) * 256 // depth.shape[0]) % tile.shape[0]
    cols = (offset[1] + np.arange(depth.shape[1]) * 256 // depth.shape[1]) % tile.shape[1]
    correlated = tile[np.ix_(rows, cols)]
    white = rng.standard_normal(depth.shape, dtype=np.float32)
    measured = depth + sigma * (0.6 * white + 0.8 * correlated)
    max_range = MAX_RANGE if condition.extinction == 0 else min(MAX_RANGE, 1.2 * condition.visibility)
    holes = rng.random(depth.shape, dtype=np.float32) < condition.depth_dropout
    invalid = (depth <= 0) | (depth > max_range) | glass | holes
    jump = np.zeros(depth.shape, bool)
    rel = np.abs(np.diff(depth, axis=1)) > EDGE_JUMP * np.maximum(depth[:, 1:], 1e-3)
    jump[:, 1:] |= rel
    jump[:, :-1] |= rel
    rel = np.abs(np.diff(depth, axis=0)) > EDGE_JUMP * np.maximum(depth[1:], 1e-3)
    jump[1:] |= rel
    jump[:-1] |= rel
    invalid |= jump & (rng.random(depth.shape, dtype=np.float32) < 0.6)
    if condition.extinction > 0:  # scattering: the farther, the likelier a lost return
        invalid |= rng.random(depth.shape, dtype=np.float32) > np.exp(-condition.extinction * depth)
    return np.where(invalid, 0.0, np.maximum(measured, 0.05)).astype(np.float32)
