"""One way to choose each sensor's input (sensors.<m>.type/topic); parameters of earlier versions refused saying
what to write instead; the event count scale an explicit parameter."""

import pytest

from mlesam_core.config_io import ConfigError, load_yaml
from mlesam_ros.params import (
    IMAGE_TYPE,
    POINTCLOUD_TYPE,
    load_segment_config,
    parameters_section,
    unknown_parameters_error,
)

PARAMS = "config/segment.yaml"


def write_params(tmp_path, body):
    path = tmp_path / "old.yaml"
    path.write_text("mlesam_segmenter:\n  ros__parameters:\n" + body)
    return path


def test_an_old_params_file_choosing_lidar_points_is_refused_saying_what_to_write(tmp_path):
    path = write_params(tmp_path, "    lidar:\n      input: points\n      points_topic: /ouster/points\n")
    with pytest.raises(ConfigError) as error:
        load_segment_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: lidar.input: no longer a parameter")
    assert "sensors.lidar.type (sensor_msgs/msg/PointCloud2" in message
    assert "lidar.points_topic: no longer a parameter: write the PointCloud2 topic as sensors.lidar.topic" in message


def test_an_old_key_given_as_an_override_or_to_the_node_is_refused_the_same_way():
    with pytest.raises(ConfigError, match="lidar.points_topic: no longer a parameter: write the PointCloud2 topic"):
        load_segment_config(None, ["lidar.points_topic=/ouster/points"])
    error = unknown_parameters_error(["lidar.input"], ["lidar.cam_from_lidar", "sensors.lidar.type"])
    assert str(error).startswith("lidar.input: no longer a parameter: the LiDAR input is chosen as every sensor's")


def test_the_sensor_type_and_topic_choose_the_lidar_input():
    config = load_segment_config(None, [f"sensors.lidar.type={POINTCLOUD_TYPE}", "sensors.lidar.topic=/ouster/points"])
    assert (config.input_type("lidar"), config.input_topic("lidar")) == (POINTCLOUD_TYPE, "/ouster/points")
    default = load_segment_config(None)
    assert (default.input_type("lidar"), default.input_topic("lidar")) == (IMAGE_TYPE, "/lidar/image_raw")


def test_the_event_count_scale_is_an_explicit_parameter_with_the_shipped_value():
    shipped = parameters_section(load_yaml(PARAMS), PARAMS)
    assert shipped["events"]["count_scale"] == 32.0  # the procedural (DELIVER-format) data the shipped models use
    assert load_segment_config(PARAMS).events.count_scale == 32.0
    assert load_segment_config(None, ["events.count_scale=1.0"]).events.count_scale == 1.0
    with pytest.raises(ConfigError, match=r"events.count_scale: must be > 0, got 0.0"):
        load_segment_config(None, ["events.count_scale=0.0"])
