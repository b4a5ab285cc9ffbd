"""sensor_msgs/PointCloud2 <-> numpy structured arrays, and clouds -> the projected LiDAR model image.

With sensor_msgs_py.point_cloud2's semantics (it does not install here; `pointcloud_to_array` says where it
differs): fields are read at their offsets and datatypes, `point_step`/`row_step` padding and big-endian data are
honoured; the padded layouts of real drivers (Ouster, Velodyne, Livox) decode as they are. Works on rclpy and
rosbags messages alike (only fields are read).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from mlesam_core.sensors import LidarEncoding, project_points_uint8

# sensor_msgs/PointField datatype constants -> numpy element types
POINTFIELD_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.int8), 2: np.dtype(np.uint8), 3: np.dtype(np.int16), 4: np.dtype(np.uint16),
    5: np.dtype(np.int32), 6: np.dtype(np.uint32), 7: np.dtype(np.float32), 8: np.dtype(np.float64),
}
_DATATYPE_OF = {dtype: code for code, dtype in POINTFIELD_DTYPES.items()}


class PointCloudError(ValueError):
    """A PointCloud2 message cannot be decoded or projected; the message says why."""


DUMMY_FIELD_PREFIX = "unnamed_field"  # sensor_msgs_py's name for a field whose name is ''


def pointcloud_dtype(msg: Any) -> np.dtype:
    """The structured dtype (names, offsets, itemsize = point_step, wire byte order) of a cloud's fields.

    Named as sensor_msgs_py's `dtype_from_fields`: a field named '' becomes `unnamed_field_<index>`, a field
    with count > 1 becomes `<name>_0` ... `<name>_<count-1>`.
    """
    names, formats, offsets = [], [], []
    for index, field in enumerate(msg.fields):
        if field.datatype not in POINTFIELD_DTYPES:
            raise PointCloudError(f"field {field.name!r}: unknown PointField datatype {field.datatype}")
        if field.count < 1:
            raise PointCloudError(f"field {field.name!r}: count {field.count} (must be >= 1)")
        base = POINTFIELD_DTYPES[field.datatype].newbyteorder(">" if msg.is_bigendian else "<")
        name = field.name or f"{DUMMY_FIELD_PREFIX}_{index}"
        for element in range(field.count):
            sub_name = f"{name}_{element}" if field.count > 1 else name
            if sub_name in names:
                raise PointCloudError(f"field name {sub_name!r} appears twice")
            names.append(sub_name)
            formats.append(base)
            offsets.append(field.offset + element * base.itemsize)
    try:
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    except ValueError as exc:
        raise PointCloudError(f"fields do not fit point_step {msg.point_step}: {exc}") from None


def pointcloud_points(msg: Any) -> np.ndarray:
    """A flat view (no copy) of a cloud's points in wire byte order, `row_step` padding skipped."""
    dtype = pointcloud_dtype(msg)
    height, width, point_step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    row_bytes = width * point_step
    if row_step < row_bytes:
        raise PointCloudError(f"row_step {row_step} is shorter than {width} points of {point_step} bytes")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size < row_step * height:
        raise PointCloudError(f"data holds {raw.size} bytes, {height} rows of row_step {row_step} need "
                              f"{row_step * height}")
    rows = raw[: row_step * height].reshape(height, row_step)[:, :row_bytes]
    if row_step != row_bytes:
        rows = np.ascontiguousarray(rows)
    return rows.reshape(-1).view(dtype)


def pointcloud_to_array(msg: Any, skip_nans: bool = False) -> np.ndarray:
    """Decode a PointCloud2 to a flat native-endian structured array (one row per point), as sensor_msgs_py's
    `read_points(cloud)` returns it.

    Field names as `pointcloud_dtype` gives them. With `skip_nans` (default False, as sensor_msgs_py) and a
    cloud whose `is_dense` is false, points with a NaN in any field are dropped (infinite values are kept; a
    dense cloud is returned whole, trusting its flag). Unlike sensor_msgs_py, `row_step` padding is honoured, the
    message is never byteswapped in place, and an organised cloud comes back flat (height * width points, row
    by row).
    """
    points = pointcloud_points(msg)
    fields = _fields(points.dtype)
    native = np.dtype([(name, field.newbyteorder("=")) for name, field in fields.items()])
    out = np.empty(points.shape, dtype=native)
    for name in fields:
        out[name] = points[name]
    if skip_nans and not msg.is_dense:
        keep = np.ones(out.shape, dtype=bool)
        for name, field in fields.items():
            if field.kind == "f":
                keep &= ~np.isnan(out[name])
        out = out[keep]
    return out


def _fields(dtype: np.dtype) -> dict[str, np.dtype]:
    """name -> dtype of each field of a structured dtype, in order ({} for a plain dtype)."""
    fields = dtype.fields
    if fields is None:
        return {}
    return {name: fields[name][0] for name in dtype.names or ()}


def array_to_pointcloud_fields(points: np.ndarray) -> dict[str, Any]:
    """PointCloud2 fields for a flat structured array (unorganised: height 1); fields as (name, offset,
    datatype, count) tuples for the caller to turn into PointField messages."""
    points = np.ascontiguousarray(np.asarray(points).reshape(-1))
    if points.dtype.names is None or points.dtype.fields is None:
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
    return all(np.isfinite(points[axis]).all() for axis in "xyz" if axis in (points.dtype.names or ()))


def pointcloud_xyz_intensity(msg: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """[N, 3] float32 x, y, z and [N] float32 intensity (None without such a field) of the points with a return:
    non-finite coordinates (REP 117, or organised clouds' NaN padding) and the (0, 0, 0) of no-return points
    (Ouster, Livox) are dropped. Only these four fields are read."""
    points = pointcloud_points(msg)
    names = points.dtype.names or ()
    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        raise PointCloudError(f"point cloud has no field {missing[0]!r} (fields: {', '.join(names) or 'none'})")
    x, y, z = (points[axis].astype(np.float32) for axis in "xyz")
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z) & ((x != 0) | (y != 0) | (z != 0))
    intensity = points["intensity"].astype(np.float32)[keep] if "intensity" in names else None
    # columns contiguous, as the projection reads them
    xyz = np.empty((int(keep.sum()), 3), dtype=np.float32, order="F")
    for column, values in enumerate((x, y, z)):
        xyz[:, column] = values[keep]
    return xyz, intensity


def pointcloud_to_lidar_image(msg: Any, cam_from_lidar: np.ndarray, projection: np.ndarray,
                              size: tuple[int, int], encoding: LidarEncoding | None = None) -> np.ndarray:
    """PointCloud2 (x, y, z[, intensity]) -> HxWx3 uint8 projected LiDAR image (range, intensity, height)."""
    xyz, intensity = pointcloud_xyz_intensity(msg)
    if xyz.shape[0] == 0:
        raise PointCloudError("empty point cloud (no point with a finite, non-zero position)")
    return project_points_uint8(xyz, intensity, cam_from_lidar, projection, size, encoding or LidarEncoding())


__all__ = ["POINTFIELD_DTYPES", "DUMMY_FIELD_PREFIX", "PointCloudError", "pointcloud_dtype", "pointcloud_points",
           "pointcloud_to_array", "pointcloud_xyz_intensity",
           "array_to_pointcloud_fields", "pointcloud_to_lidar_image"]
