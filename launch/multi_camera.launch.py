"""Two cameras, two namespaced perception nodes sharing one parameter file (its `/**:` key
matches both).

    ros2 launch mtl_perception multi_camera.launch.py left:=/left/image_raw right:=/right/image_raw

Outputs: /left/mtl_perception/... and /right/mtl_perception/...; /diagnostics carries one status
per node, named after it. Each node's camera_info is its image's sibling topic (/left/camera_info).
Without arguments both run the shipped trained model. On a single GPU both nodes share it; on CPU
give each a `threads` share.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from mtl_perception.launch_args import node_parameters, remappings

SIDES = ("left", "right")
ARGS = (*SIDES, "params_file", "checkpoint", "threads", "use_sim_time", "keyframe_interval")


def _nodes(context, *_args, **_kwargs):
    a = {name: LaunchConfiguration(name).perform(context) for name in ARGS}
    return [
        Node(
            package="mtl_perception",
            executable="mtl-perception-node",
            name="mtl_perception",
            namespace=side,
            parameters=node_parameters(a["params_file"], a["checkpoint"], a["threads"], a["use_sim_time"],
                                       a["keyframe_interval"]),
            remappings=remappings(a[side]),
            output="screen",
        )
        for side in SIDES
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("mtl_perception"), "config", "perception.yaml"])
    args = [
        DeclareLaunchArgument("left", default_value="/left/image_raw", description="left image topic"),
        DeclareLaunchArgument("right", default_value="/right/image_raw", description="right image topic"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter YAML"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="model .pt for both; empty: the shipped trained model"),
        DeclareLaunchArgument("threads", default_value="", description="CPU threads per node; empty: file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock time"),
        DeclareLaunchArgument("keyframe_interval", default_value="", description="K for both; empty: file"),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
