"""camera <- LiDAR from /tf_static (tf2_msgs/TFMessage) chained through intermediate frames, else the parameter."""

import logging

import numpy as np
import pytest

from mlesam_core.sensors import lidar_image_to_uint8, project_points
from mlesam_ros.params import LIDAR_TO_OPTICAL, load_segment_config
from mlesam_ros.transforms import TransformTree, rotation_quaternion, transform_matrix

H, W = 48, 64
K = np.array([[32.0, 0, 32.0], [0, 32.0, 24.0], [0, 0, 1]])


def rodrigues(axis, angle, translation=(0.0, 0.0, 0.0)):
    """4x4 from an axis-angle rotation (written independently of the quaternion code under test)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    matrix[:3, 3] = translation
    return matrix


# a robot: base_link <- os_sensor <- os_lidar (Ouster's frames), base_link <- camera_link <- camera_optical_frame
BASE_FROM_SENSOR = rodrigues([0, 0, 1], 0.1, (1.2, 0.0, 1.6))
SENSOR_FROM_LIDAR = rodrigues([0, 0, 1], np.pi, (0.0, 0.0, 0.036))  # os_lidar is turned 180 degrees in os_sensor
BASE_FROM_CAMERA_LINK = rodrigues([0, 1, 0], 0.05, (1.5, 0.1, 1.4))
CAMERA_LINK_FROM_OPTICAL = np.asarray(LIDAR_TO_OPTICAL).reshape(4, 4).T  # optical: z forward, x right, y down
ROBOT_TF = [("base_link", "os_sensor", BASE_FROM_SENSOR), ("os_sensor", "os_lidar", SENSOR_FROM_LIDAR),
            ("base_link", "camera_link", BASE_FROM_CAMERA_LINK),
            ("camera_link", "camera_optical_frame", CAMERA_LINK_FROM_OPTICAL)]
OPTICAL_FROM_LIDAR = (np.linalg.inv(BASE_FROM_CAMERA_LINK @ CAMERA_LINK_FROM_OPTICAL)
                      @ BASE_FROM_SENSOR @ SENSOR_FROM_LIDAR)


@pytest.mark.parametrize("matrix", [rodrigues([1, 2, 3], 2.9), rodrigues([0, 0, 1], np.pi), np.eye(4),
                                    rodrigues([1, 0, 0], np.pi, (1, 2, 3))])
def test_quaternions_round_trip_rotation_matrices(matrix):
    class V:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    x, y, z, w = rotation_quaternion(matrix[:3, :3])
    back = transform_matrix(V(x=matrix[0, 3], y=matrix[1, 3], z=matrix[2, 3]), V(x=x, y=y, z=z, w=w))
    np.testing.assert_allclose(back, matrix, atol=1e-12)


def test_lookup_chains_through_intermediate_frames_both_ways(rosbags_kit):
    tree = TransformTree()
    tree.add_message(rosbags_kit.tf_message(ROBOT_TF))
    np.testing.assert_allclose(tree.lookup("camera_optical_frame", "os_lidar"), OPTICAL_FROM_LIDAR, atol=1e-12)
    np.testing.assert_allclose(tree.lookup("/os_lidar", "camera_optical_frame"), np.linalg.inv(OPTICAL_FROM_LIDAR),
                               atol=1e-12)
    np.testing.assert_allclose(tree.lookup("os_sensor", "os_lidar"), SENSOR_FROM_LIDAR, atol=1e-12)
    assert tree.lookup("camera_optical_frame", "velodyne") is None
    assert "velodyne" not in tree.frames and "base_link" in tree.frames


def test_a_message_with_an_unusable_transform_keeps_the_others(rosbags_kit):
    msg = rosbags_kit.tf_message(ROBOT_TF[:2])
    msg.transforms[0].transform.rotation.w = 0.0
    msg.transforms[0].transform.rotation.z = 0.0
    tree = TransformTree()
    with pytest.raises(ValueError, match="base_link <- os_sensor: rotation quaternion"):
        tree.add_message(msg)
    np.testing.assert_allclose(tree.lookup("os_sensor", "os_lidar"), SENSOR_FROM_LIDAR, atol=1e-12)


def cloud(kit, frame="os_lidar", n=400, seed=0):
    rng = np.random.default_rng(seed)
    points = np.zeros(n, dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32), ("intensity", np.float32)])
    # in os_lidar (turned 180 degrees): the scene ahead of the robot is at negative x
    points["x"], points["y"] = -rng.uniform(4, 30, n), rng.uniform(-6, 6, n)
    points["z"], points["intensity"] = rng.uniform(-1.5, 1.5, n), rng.uniform(0, 255, n)
    return kit.pointcloud(points, kit.header(2_000_000_000, frame)), points


def lidar_pipeline(tiny_segmenter):
    from mlesam_ros.pipeline import SegmentationPipeline

    config = load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver",
                                        "modalities=[rgb,lidar]", "sensors.lidar.type=sensor_msgs/msg/PointCloud2",
                                        "sensors.lidar.topic=/ouster/points"])
    return SegmentationPipeline(config, tiny_segmenter, clock=lambda: 0.0)


def run_frame(pipeline, kit, lidar_msg, t=2.0):
    stamp = int(t * 1e9)
    rgb = kit.image(np.zeros((H, W, 3), np.uint8), "rgb8", kit.header(stamp, "camera_optical_frame"))
    lidar_msg.header = kit.header(stamp, lidar_msg.header.frame_id)
    frames = pipeline.add("rgb", rgb, received=t) + pipeline.add("lidar", lidar_msg, received=t) + pipeline.drain()
    return [pipeline.process(f, now=t) for f in frames]


def test_the_pipeline_projects_clouds_with_the_tf_static_chain(tiny_segmenter, rosbags_kit, caplog, decode_message):
    pipeline = lidar_pipeline(tiny_segmenter)
    pipeline.set_camera_info(rosbags_kit.camera_info(K, (H, W), rosbags_kit.header(0, "camera_optical_frame")))
    pipeline.add_transforms(rosbags_kit.tf_message(ROBOT_TF))
    msg, points = cloud(rosbags_kit)
    xyz = np.stack([points[a] for a in "xyz"], axis=1)
    expected = lidar_image_to_uint8(project_points(xyz, points["intensity"], OPTICAL_FROM_LIDAR, K, (H, W)))
    assert (expected[:, :, 0] > 0).sum() > 50
    with caplog.at_level(logging.INFO):
        np.testing.assert_array_equal(decode_message(pipeline.decoder, "lidar", msg, (H, W)), expected)
    assert "LiDAR extrinsic from transforms (camera_optical_frame <- os_lidar)" in caplog.text
    [result] = run_frame(pipeline, rosbags_kit, msg)
    assert result.used == ("rgb", "lidar")


def test_a_cloud_whose_frame_has_no_transform_is_absent_and_logged(tiny_segmenter, rosbags_kit, caplog):
    pipeline = lidar_pipeline(tiny_segmenter)
    pipeline.set_camera_info(rosbags_kit.camera_info(K, (H, W), rosbags_kit.header(0, "camera_optical_frame")))
    pipeline.add_transforms(rosbags_kit.tf_message(ROBOT_TF))
    [result] = run_frame(pipeline, rosbags_kit, cloud(rosbags_kit, frame="velodyne")[0])
    assert result.used == ("rgb",) and result.status["lidar"] == "invalid" and result.labels is not None
    assert "/ouster/points (lidar): no transform camera_optical_frame <- velodyne" in caplog.text


def test_without_tf_static_the_parameter_is_used_and_the_log_says_so(tiny_segmenter, rosbags_kit, caplog,
                                                                     decode_message):
    pipeline = lidar_pipeline(tiny_segmenter)
    pipeline.set_camera_info(rosbags_kit.camera_info(K, (H, W), rosbags_kit.header(0, "camera_optical_frame")))
    msg, points = cloud(rosbags_kit, frame="lidar")
    points["x"] *= -1  # the parameter's LiDAR looks along +x
    msg, _ = rosbags_kit.pointcloud(points, msg.header), None
    with caplog.at_level(logging.INFO):
        image = decode_message(pipeline.decoder, "lidar", msg, (H, W))
    xyz = np.stack([points[a] for a in "xyz"], axis=1)
    expected = project_points(xyz, points["intensity"], np.asarray(LIDAR_TO_OPTICAL).reshape(4, 4), K, (H, W))
    np.testing.assert_array_equal(image, lidar_image_to_uint8(expected))
    assert "LiDAR extrinsic from the lidar.cam_from_lidar parameter (no transforms received)" in caplog.text
