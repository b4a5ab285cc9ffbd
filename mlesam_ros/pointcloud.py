"""sensor_msgs/PointCloud2 <-> numpy structured arrays, and clouds -> the projected LiDAR model image.

Like sensor_msgs_py.point_cloud2 (which does not install here): fields are read at their offsets and
datatypes, `point_step`/`row_step` padding and big-endian data are honoured. Works on rclpy and rosbags
messages alike (only fields are read).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from mlesam_core.sensors import LidarEncoding, lidar_image_to_uint8, project_points

# sensor_msgs/PointField datatype constants -> numpy element types
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}
_DATATYPE_OF = {dtype: code for code, dtype in POINTFIELD_DTYPES.items()}


class PointCloudError(ValueError):
    """A PointCloud2 message cannot be decoded or projected; the message says why."""


def pointcloud_dtype(msg: Any) -> np.dtype:
    """The structured dtype (names, offsets, itemsize = point_step) described by a cloud's fields."""
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in POINTFIELD_DTYPES:
            raise PointCloudError(f"field {field.name!r}: unknown PointField datatype {field.datatype}")
        base = POINTFIELD_DTYPES[field.datatype].newbyteorder(">" if msg.is_bigendian else "<")
        names.append(field.name)
        formats.append(base if field.count <= 1 else np.dtype((base, (field.count,))))
        offsets.append(field.offset)
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    except ValueError as exc:
        raise PointCloudError(f"fields do not fit point_step {msg.point_step}: {exc}") from None


def pointcloud_to_array(msg: Any, skip_nans: bool = True) -> np.ndarray:
    """Decode a PointCloud2 to a flat native-endian structured array (one row per point).

    With `skip_nans`, points whose x, y or z is not finite are dropped (as sensor_msgs_py does).
    """
    dtype = pointcloud_dtype(msg)
    height, width = int(msg.height), int(msg.width)
    row_bytes = width * int(msg.point_step)
    if msg.row_step < row_bytes:
        raise PointCloudError(f"row_step {msg.row_step} is shorter than {width} points of {msg.point_step} bytes")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size < msg.row_step * height:
        raise PointCloudError(f"data holds {raw.size} bytes, {height} rows of row_step {msg.row_step} need "
                              f"{msg.row_step * height}")
    rows = raw[: msg.row_step * height].reshape(height, msg.row_step)[:, :row_bytes]
    points = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    native = np.dtype([(name, dtype.fields[name][0].newbyteorder("=")) for name in dtype.names])
    out = np.empty(points.shape, dtype=native)
    for name in dtype.names:
        out[name] = points[name]
    if skip_nans and all(axis in native.names for axis in "xyz"):
        finite = np.isfinite(out["x"]) & np.isfinite(out["y"]) & np.isfinite(out["z"])
        out = out[finite]
    return out


def array_to_pointcloud_fields(points: np.ndarray) -> dict[str, Any]:
    """PointCloud2 fields for a flat structured array (unorganised: height 1); fields as (name, offset,
    datatype, count) tuples for the caller to turn into PointField messages."""
    points = np.ascontiguousarray(np.asarray(points).reshape(-1))
    if points.dtype.names is None:
        raise PointCloudError(f"expected a structured array with named fields, got dtype {points.dtype}")
    fields = []
    for name in points.dtype.names:
        field_dtype, offset = points.dtype.fields[name][:2]
        base, shape = (field_dtype.base, field_dtype.shape) if field_dtype.subdtype else (field_dtype, ())
        code = _DATATYPE_OF.get(base.newbyteorder("="))
        if code is None:
            raise PointCloudError(f"field {name!r}: dtype {base} has no PointField datatype")
        fields.append((name, offset, code, int(np.prod(shape)) if shape else 1))
    little = points.dtype.newbyteorder("<") if sys.byteorder == "big" else points.dtype
    data = points.astype(little, copy=False).tobytes()
    return {"height": 1, "width": points.shape[0], "fields": fields, "is_bigendian": False,
            "point_step": points.dtype.itemsize, "row_step": points.dtype.itemsize * points.shape[0],
            "data": data, "is_dense": bool(points.shape[0] == 0 or _all_finite(points))}


def _all_finite(points: np.ndarray) -> bool:
    return all(np.isfinite(points[axis]).all() for axis in "xyz" if axis in points.dtype.names)


def pointcloud_to_lidar_image(msg: Any, cam_from_lidar: np.ndarray, projection: np.ndarray,
                              size: tuple[int, int], encoding: LidarEncoding | None = None) -> np.ndarray:
    """PointCloud2 (x, y, z[, intensity]) -> HxWx3 uint8 projected LiDAR image (range, intensity, height)."""
    points = pointcloud_to_array(msg)
    missing = [axis for axis in "xyz" if axis not in (points.dtype.names or ())]
    if missing:
        raise PointCloudError(f"point cloud has no field {missing[0]!r} (fields: {', '.join(points.dtype.names)})")
    if points.size == 0:
        raise PointCloudError("empty point cloud (no finite points)")
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
    intensity = points["intensity"] if "intensity" in points.dtype.names else None
    image = project_points(xyz, intensity, cam_from_lidar, projection, size)
    return lidar_image_to_uint8(image, encoding or LidarEncoding())


__all__ = ["POINTFIELD_DTYPES", "PointCloudError", "pointcloud_dtype", "pointcloud_to_array",
           "array_to_pointcloud_fields", "pointcloud_to_lidar_image"]
