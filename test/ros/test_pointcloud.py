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


def test_points_with_non_finite_coordinates_are_skipped(rosbags_kit):
    points = cloud_array(10)
    points["x"][2], points["z"][5] = np.nan, np.inf
    msg = rosbags_kit.pointcloud(points, header(rosbags_kit))
    assert not msg.is_dense
    assert len(pointcloud_to_array(msg)) == 8
    assert len(pointcloud_to_array(msg, skip_nans=False)) == 10


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
