"""PointCloud2 <-> structured arrays, and clouds projected with the shared LiDAR projection."""

import numpy as np
import pytest

from mlesam_core.sensors import lidar_image_to_uint8, project_points
from mlesam_ros.params import LIDAR_TO_OPTICAL
from mlesam_ros.pointcloud import (
    PointCloudError,
    array_to_pointcloud_fields,
    pointcloud_to_array,
    pointcloud_to_lidar_image,
)

K = np.array([[32.0, 0, 32.0], [0, 32.0, 24.0], [0, 0, 1]])
CAM_FROM_LIDAR = np.asarray(LIDAR_TO_OPTICAL).reshape(4, 4)


def cloud_array(n=40, seed=0):
    """Points ahead of a LiDAR (x forward) with intensity, a ring id and padding between fields."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype({"names": ["x", "y", "z", "intensity", "ring"],
                      "formats": [np.float32, np.float32, np.float32, np.float32, np.uint16],
                      "offsets": [0, 4, 8, 16, 20], "itemsize": 32})
    points = np.zeros(n, dtype=dtype)
    points["x"] = rng.uniform(2, 30, n)
    points["y"] = rng.uniform(-5, 5, n)
    points["z"] = rng.uniform(-1.5, 2, n)
    points["intensity"] = rng.uniform(0, 255, n)
    points["ring"] = rng.integers(0, 32, n)
    return points


def header(kit):
    return kit.header(5_000_000_000, "lidar")


def test_fields_round_trip_with_offsets_and_padding(rosbags_kit):
    points = cloud_array()
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    assert msg.point_step == 32 and [f.offset for f in msg.fields] == [0, 4, 8, 16, 20]
    decoded = pointcloud_to_array(msg)
    for name in points.dtype.names:
        np.testing.assert_array_equal(decoded[name], points[name])


def test_skip_nans_follows_sensor_msgs_py_default_off_any_field_and_only_when_not_dense(rosbags_kit):
    points = cloud_array(10)
    points["x"][2], points["z"][5], points["intensity"][7] = np.nan, np.inf, np.nan
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    assert not msg.is_dense
    assert len(pointcloud_to_array(msg)) == 10  # read_points' default: skip_nans=False
    kept = pointcloud_to_array(msg, skip_nans=True)  # NaN in any field drops the point; inf stays
    assert len(kept) == 8 and np.isinf(kept["z"]).sum() == 1
    msg.is_dense = True  # a cloud that says it is dense is trusted, as sensor_msgs_py does
    assert len(pointcloud_to_array(msg, skip_nans=True)) == 10


def test_unnamed_and_multi_count_fields_are_named_as_sensor_msgs_py_names_them(rosbags_kit):
    field = rosbags_kit.resolve("sensor_msgs/msg/PointField")
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    msg = rosbags_kit.resolve("sensor_msgs/msg/PointCloud2")(
        header=header(rosbags_kit), height=1, width=2, is_bigendian=False, point_step=24, row_step=48,
        is_dense=True, data=np.frombuffer(values.tobytes(), np.uint8),
        fields=[field(name="x", offset=0, datatype=7, count=1), field(name="", offset=4, datatype=7, count=1),
                field(name="normal", offset=8, datatype=7, count=3), field(name="", offset=20, datatype=7, count=1)])
    decoded = pointcloud_to_array(msg)
    assert decoded.dtype.names == ("x", "unnamed_field_1", "normal_0", "normal_1", "normal_2", "unnamed_field_3")
    np.testing.assert_array_equal(decoded["normal_2"], values[:, 4])
    np.testing.assert_array_equal(decoded["unnamed_field_3"], values[:, 5])


def test_big_endian_clouds_decode(rosbags_kit):
    points = cloud_array(6)
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    msg.data = np.frombuffer(points.astype(points.dtype.newbyteorder(">")).tobytes(), np.uint8)
    msg.is_bigendian = True
    decoded = pointcloud_to_array(msg)
    np.testing.assert_array_equal(decoded["intensity"], points["intensity"])
    assert decoded.dtype["x"].isnative


def test_organised_cloud_with_row_padding(rosbags_kit):
    points = cloud_array(6)
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    rows = np.frombuffer(msg.data, np.uint8).reshape(2, 3 * 32)
    msg.data = np.concatenate([rows, np.zeros((2, 8), np.uint8)], axis=1).reshape(-1)
    msg.height, msg.width, msg.row_step = 2, 3, 3 * 32 + 8
    np.testing.assert_array_equal(pointcloud_to_array(msg)["x"], points["x"])


def test_rclpy_clouds_decode_like_rosbags_clouds(rclpy_kit, rosbags_kit):
    points = cloud_array()
    live = pointcloud_to_array(rclpy_kit.pointcloud(points, header(rclpy_kit)))
    stored = pointcloud_to_array(rosbags_kit.pointcloud(points, header(rosbags_kit)))
    np.testing.assert_array_equal(live, stored)


def test_projection_is_the_shared_lidar_projection(rosbags_kit):
    points = cloud_array(200)
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    image = pointcloud_to_lidar_image(msg, CAM_FROM_LIDAR, K, (48, 64))
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
    expected = lidar_image_to_uint8(project_points(xyz, points["intensity"], CAM_FROM_LIDAR, K, (48, 64)))
    np.testing.assert_array_equal(image, expected)
    assert (image[:, :, 0] > 0).sum() > 20  # most points land in the image


def test_empty_cloud_is_an_error(rosbags_kit):
    msg = rosbags_kit.pointcloud(cloud_array(0), header(rosbags_kit))
    with pytest.raises(PointCloudError, match="empty point cloud"):
        pointcloud_to_lidar_image(msg, CAM_FROM_LIDAR, K, (48, 64))


def test_cloud_without_xyz_is_an_error(rosbags_kit):
    points = np.zeros(4, dtype=[("range", np.float32)])
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    with pytest.raises(PointCloudError, match="no field 'x'"):
        pointcloud_to_lidar_image(msg, CAM_FROM_LIDAR, K, (48, 64))


def test_truncated_data_is_an_error(rosbags_kit):
    msg = rosbags_kit.pointcloud(cloud_array(5), header(rosbags_kit))
    msg.data = msg.data[:100]
    with pytest.raises(PointCloudError, match="data holds 100 bytes"):
        pointcloud_to_array(msg)


def test_unstructured_arrays_cannot_become_clouds():
    with pytest.raises(PointCloudError, match="structured array"):
        array_to_pointcloud_fields(np.zeros((4, 3), np.float32))


# The point layouts of real drivers: (name, offset, PointField datatype), point_step
DRIVER_LAYOUTS = {
    # ouster-ros "original" point (PCL_ADD_POINT4D padding, EIGEN_ALIGN16): 48 bytes
    "ouster": ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("t", 20, 6),
                ("reflectivity", 24, 4), ("ring", 26, 4), ("ambient", 28, 4), ("range", 32, 6)], 48),
    # velodyne_pointcloud PointXYZIRT: 32 bytes
    "velodyne": ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("ring", 20, 4), ("time", 24, 7)],
                 32),
    # livox_ros_driver2 (x, y, z, intensity, tag, line, timestamp; packed, the float64 unaligned): 26 bytes
    "livox": ([("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 12, 7), ("tag", 16, 2), ("line", 17, 2),
               ("timestamp", 18, 8)], 26),
}
_NUMPY = {2: "u1", 4: "<u2", 6: "<u4", 7: "<f4", 8: "<f8"}


def driver_cloud(kit, layout, rows=4, cols=50, seed=0):
    """An organised cloud in a driver's layout, written byte by byte at the driver's offsets: NaN points
    (Velodyne's organised no-returns), (0, 0, 0) no-returns (Ouster, Livox), is_dense false."""
    fields, step = DRIVER_LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    n = rows * cols
    xyz = np.stack([rng.uniform(2, 30, n), rng.uniform(-5, 5, n), rng.uniform(-1.5, 2, n)], axis=1).astype(np.float32)
    intensity = rng.uniform(0, 255, n).astype(np.float32)
    xyz[::7] = np.nan if layout == "velodyne" else 0.0
    data = bytearray(rng.integers(0, 256, n * step, dtype=np.uint8).tobytes())  # padding holds garbage
    for name, offset, datatype in fields:
        values = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": intensity}.get(
            name, rng.integers(0, 100, n))
        dtype = np.dtype(_NUMPY[datatype])
        for i, value in enumerate(values):
            data[i * step + offset:i * step + offset + dtype.itemsize] = np.asarray(value, dtype).tobytes()
    field_cls = kit.resolve("sensor_msgs/msg/PointField")
    msg = kit.resolve("sensor_msgs/msg/PointCloud2")(
        header=header(kit), height=rows, width=cols, is_bigendian=False, point_step=step, row_step=step * cols,
        is_dense=False, data=kit._as_uint8(bytes(data)),
        fields=[field_cls(name=name, offset=offset, datatype=datatype, count=1) for name, offset, datatype in fields])
    return msg, xyz, intensity


@pytest.mark.parametrize("layout", sorted(DRIVER_LAYOUTS))
def test_driver_layouts_decode_and_project_only_points_with_a_return(layout, rosbags_kit, rclpy_kit):
    for kit in (rosbags_kit, rclpy_kit):
        msg, xyz, intensity = driver_cloud(kit, layout)
        decoded = pointcloud_to_array(msg)
        assert decoded.dtype.names == tuple(name for name, _, _ in DRIVER_LAYOUTS[layout][0])
        np.testing.assert_array_equal(decoded["intensity"], intensity)
        np.testing.assert_array_equal(decoded["y"], xyz[:, 1])
        returns = np.isfinite(xyz).all(axis=1) & xyz.any(axis=1)
        assert returns.sum() == len(xyz) - len(xyz[::7])
        image = pointcloud_to_lidar_image(msg, CAM_FROM_LIDAR, K, (48, 64))
        expected = project_points(xyz[returns], intensity[returns], CAM_FROM_LIDAR, K, (48, 64))
        np.testing.assert_array_equal(image, lidar_image_to_uint8(expected))
        assert (image[:, :, 0] > 0).sum() > 50
