"""Launch the MLE-SAM segmentation node with config/segment.yaml and optional weight/device overrides.

    ros2 launch mlesam_ros segment.launch.py checkpoint:=/path/sam2.1_hiera_base_plus.pt \
        adapters:=/path/adapters.safetensors device:=cuda use_sim_time:=true
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

PACKAGE = "mlesam_ros"
EXECUTABLE = "segment_node"
NODE_NAME = "mlesam_segmenter"
PARAMS_FILE = "segment.yaml"

# launch argument -> node parameter it overrides when given (empty = keep the params file's value)
OVERRIDES = {
    "checkpoint": "model.sam2_checkpoint",
    "adapters": "model.adapters",
    "device": "model.device",
}


def _node(context, *args, **kwargs):
    """Build the node with the params file plus the non-empty overrides."""
    overrides = {parameter: LaunchConfiguration(argument).perform(context)
                 for argument, parameter in OVERRIDES.items()}
    overrides = {key: value for key, value in overrides.items() if value}
    overrides["use_sim_time"] = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    return [Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        output="screen",
    )]


def generate_launch_description():
    """Launch arguments and the segmentation node."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", PARAMS_FILE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameters file of the node"),
        DeclareLaunchArgument("checkpoint", default_value="", description="SAM2 checkpoint (.pt)"),
        DeclareLaunchArgument("adapters", default_value="", description="trained adapters (.safetensors)"),
        DeclareLaunchArgument("device", default_value="", description="torch device (cpu, cuda, ...)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (true with `ros2 bag play --clock`)"),
        OpaqueFunction(function=_node),
    ])
