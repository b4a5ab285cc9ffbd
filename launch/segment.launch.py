"""Launch the MLE-SAM segmentation node with config/segment.yaml and optional model/weight/device overrides.

The node is a managed (lifecycle) node: by default the launch configures it (loading the model) and, once it is
inactive, activates it, with launch_ros's lifecycle events; `autostart:=false` leaves it unconfigured for a
system manager (`ros2 lifecycle set /mlesam_segmenter configure`, then `activate`).

A first run without weights (tiny model, seeded random initialisation: the pipeline runs, the labels mean
nothing)::

    ros2 launch mlesam_ros segment.launch.py model_config:=config/model/mlesam_tiny.yaml allow_random_init:=true

With the trained model (one line)::

    ros2 launch mlesam_ros segment.launch.py checkpoint:=/path/sam2.1_hiera_base_plus.pt
        adapters:=/path/adapters.safetensors device:=cuda use_sim_time:=true
"""

import os

import lifecycle_msgs.msg
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState

from launch import LaunchDescription

PACKAGE = "mlesam_ros"
EXECUTABLE = "segment_node"
NODE_NAME = "mlesam_segmenter"
PARAMS_FILE = "segment.yaml"

# launch argument -> node parameter it overrides when given (empty = keep the params file's value)
OVERRIDES = {
    "model_config": "model.config",
    "checkpoint": "model.sam2_checkpoint",
    "adapters": "model.adapters",
    "device": "model.device",
}
# boolean launch argument -> node parameter it overrides when given ("true"/"false"; empty = the params file's)
BOOL_OVERRIDES = {
    "allow_random_init": "model.allow_random_init",
}


def _as_bool(argument: str, text: str) -> bool:
    """A boolean launch argument's value; anything but true/false is refused naming the argument."""
    if text.lower() not in ("true", "false"):
        raise ValueError(f"launch argument {argument}: expected true or false, got {text!r}")
    return text.lower() == "true"


def _node(context, *args, **kwargs):
    """Build the node with the params file plus the non-empty overrides; with autostart, the transitions that
    bring it to active."""
    overrides = {}
    for argument, parameter in OVERRIDES.items():
        value = LaunchConfiguration(argument).perform(context)
        if value:
            overrides[parameter] = value
    for argument, parameter in BOOL_OVERRIDES.items():
        value = LaunchConfiguration(argument).perform(context)
        if value:
            overrides[parameter] = _as_bool(argument, value)
    overrides["use_sim_time"] = _as_bool("use_sim_time", LaunchConfiguration("use_sim_time").perform(context))
    node = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=NODE_NAME,
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        output="screen",
    )
    if not _as_bool("autostart", LaunchConfiguration("autostart").perform(context)):
        return [node]
    # configured -> activate; only after configuring, so that a later deactivate by a manager is left alone
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    return [activate_when_configured, node, configure]


def generate_launch_description():
    """Launch arguments and the segmentation node."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", PARAMS_FILE)
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameters file of the node"),
        DeclareLaunchArgument("model_config", default_value="",
                              description="model config YAML, e.g. config/model/mlesam_tiny.yaml (relative: the "
                                          "package share directory)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="SAM2 checkpoint (.pt)"),
        DeclareLaunchArgument("adapters", default_value="", description="trained adapters (.safetensors)"),
        DeclareLaunchArgument("device", default_value="", description="torch device (cpu, cuda, ...)"),
        DeclareLaunchArgument("allow_random_init", default_value="",
                              description="true: no checkpoint, seeded random weights (a first run, tests)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (true with `ros2 bag play --clock`)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the node (false: leave it unconfigured for a "
                                          "lifecycle manager)"),
        OpaqueFunction(function=_node),
    ])
