"""How raw sensor readings become model images: one implementation shared by data sets, generator and ROS."""

from mlesam_core.sensors.camera import same_aspect, scale_camera_matrix
from mlesam_core.sensors.depth import (
    CompiledHHA,
    DepthEncoding,
    HHAEncoder,
    depth_to_hha,
    depth_to_hha_on,
    depth_to_image,
    hha_encoder,
    hha_tensor,
)
from mlesam_core.sensors.events import EVENT_COUNT_SCALES, event_count_scale, render_event_frame
from mlesam_core.sensors.lidar import LidarEncoding, lidar_image_to_uint8, project_points, project_points_uint8

__all__ = ["same_aspect", "scale_camera_matrix", "CompiledHHA", "DepthEncoding", "HHAEncoder", "depth_to_hha",
           "depth_to_hha_on", "depth_to_image", "hha_encoder", "hha_tensor", "EVENT_COUNT_SCALES", "event_count_scale",
           "render_event_frame", "LidarEncoding", "lidar_image_to_uint8", "project_points", "project_points_uint8"]
