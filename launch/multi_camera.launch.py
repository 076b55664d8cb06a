"""Two cameras, two namespaced perception nodes sharing one parameter file (its `/**:` key
matches both).

    ros2 launch mtl_perception multi_camera.launch.py left:=/left/image_raw right:=/right/image_raw

Outputs: /left/mtl_perception/... and /right/mtl_perception/...; /diagnostics carries one status
per node, named after it. On a single GPU both nodes share it; on CPU give each a `threads` share.
"""

from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("mtl_perception"), "config", "perception.yaml"])
    args = [
        DeclareLaunchArgument("left", default_value="/left/image_raw", description="left image topic"),
        DeclareLaunchArgument("right", default_value="/right/image_raw", description="right image topic"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="parameter YAML"),
        DeclareLaunchArgument("keyframe_interval", default_value="5", description="K for both cameras"),
    ]
    nodes = [
        Node(
            package="mtl_perception",
            executable="mtl-perception-node",
            name="mtl_perception",
            namespace=side,
            parameters=[
                LaunchConfiguration("params_file"),
                {"keyframe_interval": ParameterValue(LaunchConfiguration("keyframe_interval"),
                                                     value_type=int)},
            ],
            remappings=[("image", LaunchConfiguration(side)),
                        ("camera_info", f"/{side}/camera_info")],
            output="screen",
        )
        for side in ("left", "right")
    ]
    return LaunchDescription([*args, *nodes])
