"""Metric depth -> model images: a 3-channel HHA-like encoding, or a single-channel depth image.

HHA (Gupta et al. 2014) encodes horizontal disparity, height above ground and the angle of the surface
normal with gravity. Ours assumes a level camera at a known height (optical frame, y down), which is what a
car- or robot-mounted camera gives; the generator writes `hha/` with this function and the ROS pipeline turns
32FC1/16UC1 depth into the same encoding, so training and deployment agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

log = logging.getLogger(__name__)

DEPTH_PNG_SCALE = 256.0  # 16-bit depth PNG value = metres * 256 (KITTI convention), 0 = no measurement


@dataclass(frozen=True)
class DepthEncoding:
    """Constants of the depth encodings (metres)."""

    camera_height: float = 1.5  # camera above ground
    near: float = 2.0  # disparity channel saturates at this depth
    min_height: float = -1.0  # height channel range
    max_height: float = 20.0
    max_depth: float = 100.0  # single-channel depth image: this depth -> 255


def _valid(depth: np.ndarray) -> np.ndarray:
    return np.isfinite(depth) & (depth > 0)


def depth_to_image(depth_m: np.ndarray, encoding: DepthEncoding = DepthEncoding()) -> np.ndarray:
    """HxW metric depth -> HxW uint8 (linear up to max_depth; invalid (0, NaN, +-Inf) -> 0)."""
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected an HxW array, got shape {tuple(depth.shape)}")
    valid = _valid(depth)
    scaled = np.clip(np.where(valid, depth, 0) / encoding.max_depth * 255.0, 1.0, 255.0)
    return np.where(valid, np.rint(scaled), 0).astype(np.uint8)


HHAEncoder = Callable[[np.ndarray, np.ndarray, DepthEncoding], np.ndarray | torch.Tensor]


def hha_encoder(device: str | torch.device = "cpu", compile: bool = False) -> HHAEncoder:
    """The HHA implementation for a model on `device`: (depth, K, encoding) -> HxWx3 uint8.

    On a GPU the encoding runs there and stays there (`depth_to_hha_on`: a torch tensor the Segmenter takes as it
    is); on the CPU numpy `depth_to_hha`, or with `compile` the torch.compile'd `CompiledHHA`
    (`python -m benchmarks.hha_speed` compares them)."""
    if torch.device(device).type != "cpu":
        return partial(_hha_on_device, device=device)
    return CompiledHHA() if compile else depth_to_hha


def _hha_on_device(depth_m: np.ndarray, intrinsics: np.ndarray, encoding: DepthEncoding,
                   device: str | torch.device) -> torch.Tensor:
    return depth_to_hha_on(depth_m, intrinsics, device, encoding)


def depth_to_hha(depth_m: np.ndarray, intrinsics: np.ndarray, encoding: DepthEncoding = DepthEncoding()) -> np.ndarray:
    """HxW metric depth + 3x3 intrinsics K -> HxWx3 uint8 (disparity, height, angle to gravity), with numpy.

    Invalid depth (0, NaN, +-Inf) gives 0 in every channel. On a CPU numpy beats eager torch's many small kernels
    here; `hha_tensor` is the same function in torch, for a GPU or torch.compile.
    """
    depth, (fx, fy, cx, cy) = _checked_depth(depth_m, intrinsics)
    h, w = depth.shape
    valid = _valid(depth)
    z = np.where(valid, depth, np.float32(0.0))
    # back-projection: x = (u - cx) / fx * z, y = (v - cy) / fy * z (float32, one channel at a time: this runs
    # per frame in the ROS node and per sample in the generator)
    ray_x = ((np.arange(w, dtype=np.float32) - cx) / fx)[None, :]
    ray_y = ((np.arange(h, dtype=np.float32) - cy) / fy)[:, None]
    x, y = ray_x * z, ray_y * z

    out = np.empty((h, w, 3), dtype=np.float32)
    np.multiply(np.clip(encoding.near / np.maximum(z, 1e-6), 0.0, 1.0), 255.0, out=out[..., 0])
    span = encoding.max_height - encoding.min_height
    height = encoding.camera_height - y
    out[..., 1] = np.clip((height - encoding.min_height) / span, 0.0, 1.0) * 254.0 + 1.0

    # surface normal = d(point)/du x d(point)/dv; its angle with "up" (-y in the optical frame), sign-free, 0..90 deg
    xu, yu, zu = (np.gradient(c, axis=1) for c in (x, y, z))
    xv, yv, zv = (np.gradient(c, axis=0) for c in (x, y, z))
    nx = yu * zv - zu * yv
    ny = zu * xv - xu * zv
    nz = xu * yv - yu * xv
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    cos_up = np.abs(ny) / np.maximum(norm, 1e-9)
    angle = np.degrees(np.arccos(np.clip(cos_up, 0.0, 1.0)))
    out[..., 2] = np.where(norm > 0, angle / 90.0 * 254.0 + 1.0, 1.0)

    np.clip(out, 1.0, 255.0, out=out)
    np.rint(out, out=out)
    out[~valid] = 0.0
    return out.astype(np.uint8)


def depth_to_hha_on(depth_m: np.ndarray, intrinsics: np.ndarray, device: str | torch.device,
                    encoding: DepthEncoding = DepthEncoding()) -> torch.Tensor:
    """`depth_to_hha` computed on `device` and left there: HxWx3 uint8 tensor (the depth goes up once instead of
    the CPU encoding it; the Segmenter takes the tensor as it is, so nothing comes back)."""
    depth, focal_centre = _checked_depth(depth_m, intrinsics)
    with torch.inference_mode():
        return hha_tensor(torch.from_numpy(depth).to(device), focal_centre, encoding)


class CompiledHHA:
    """`depth_to_hha` on the CPU through a torch.compile'd `hha_tensor`: inductor fuses its many array passes into a
    few loops (speed against numpy: `python -m benchmarks.hha_speed`), the same function up to float rounding (at
    most one level, in rare pixels). `hha_encoder` picks it when `compile` is on. It compiles on the first call
    (seconds; again for a new image size or K); where compilation is unavailable it warns once and runs the numpy
    `depth_to_hha` from then on."""

    def __init__(self) -> None:
        self._compiled: Callable[..., torch.Tensor] | None = None
        try:
            self._compiled = torch.compile(hha_tensor, dynamic=False)
        except Exception as exc:  # noqa: BLE001 -- any failure to set up compilation means numpy
            self._fall_back(exc)

    def __call__(self, depth_m: np.ndarray, intrinsics: np.ndarray,
                 encoding: DepthEncoding = DepthEncoding()) -> np.ndarray:
        """HxW metric depth + K -> HxWx3 uint8, as `depth_to_hha`."""
        depth, focal_centre = _checked_depth(depth_m, intrinsics)
        if self._compiled is not None:
            try:
                with torch.inference_mode():
                    return self._compiled(torch.from_numpy(depth), focal_centre, encoding).numpy()
            except Exception as exc:  # noqa: BLE001 -- compilation fails at the first call
                self._fall_back(exc)
        return depth_to_hha(depth, intrinsics, encoding)

    def _fall_back(self, exc: Exception) -> None:
        first_line = next(iter(str(exc).strip().splitlines()), "")
        log.warning("HHA: torch.compile is unavailable here (%s: %s): encoding depth with numpy",
                    type(exc).__name__, first_line)
        self._compiled = None


def _checked_depth(depth_m: np.ndarray,
                   intrinsics: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """HxW float32 depth (C order) and (fx, fy, cx, cy) of K or P; ValueError naming the bad argument."""
    depth = np.ascontiguousarray(depth_m, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"depth: expected an HxW array, got shape {tuple(depth.shape)}")
    k = np.asarray(intrinsics, dtype=np.float64)
    if k.shape not in ((3, 3), (3, 4)):
        raise ValueError(f"intrinsics: expected K (3x3) or P (3x4), got shape {k.shape}")
    return depth, (float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))


def hha_tensor(depth: torch.Tensor, focal_centre: tuple[float, float, float, float],
               encoding: DepthEncoding = DepthEncoding()) -> torch.Tensor:
    """`depth_to_hha` in torch, for a device: HxW float32 metric depth, (fx, fy, cx, cy) -> HxWx3 uint8 on the
    depth's device. The same function as the numpy path (tests: equal up to float rounding, at most 1 level)."""
    fx, fy, cx, cy = (float(v) for v in focal_centre)
    h, w = depth.shape
    valid = torch.isfinite(depth) & (depth > 0)
    z = torch.where(valid, depth, 0.0)
    ray_x = ((torch.arange(w, dtype=torch.float32, device=depth.device) - cx) / fx)[None, :]
    ray_y = ((torch.arange(h, dtype=torch.float32, device=depth.device) - cy) / fy)[:, None]
    xyz = torch.stack([ray_x * z, ray_y * z, z])

    disparity = (encoding.near / z.clamp_min(1e-6)).clamp(0.0, 1.0) * 255.0
    span = encoding.max_height - encoding.min_height
    height = ((encoding.camera_height - xyz[1] - encoding.min_height) / span).clamp(0.0, 1.0) * 254.0 + 1.0
    du, = torch.gradient(xyz, dim=2)  # central differences inside, one-sided at the border, as numpy.gradient
    dv, = torch.gradient(xyz, dim=1)
    normal = torch.linalg.cross(du, dv, dim=0)
    norm = torch.linalg.vector_norm(normal, dim=0)
    angle = torch.rad2deg(torch.arccos((normal[1].abs() / norm.clamp_min(1e-9)).clamp(0.0, 1.0)))
    gravity = torch.where(norm > 0, angle / 90.0 * 254.0 + 1.0, 1.0)
    out = torch.stack([disparity, height, gravity], dim=-1).clamp_(1.0, 255.0).round_()
    return torch.where(valid[..., None], out, 0.0).to(torch.uint8)
