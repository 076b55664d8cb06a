"""One perception node for one camera.

    ros2 launch mtl_perception camera.launch.py image:=/camera/image_raw namespace:=front \
        keyframe_interval:=5 params_file:=/path/to/perception.yaml

Outputs appear under /<namespace>/mtl_perception/{semantic,depth,normals,...}.
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
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="input sensor_msgs/Image topic (compressed: <image>/compressed)"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info",
                              description="input CameraInfo topic (used when use_camera_info is true)"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameter YAML (keys under /**)"),
        DeclareLaunchArgument("keyframe_interval", default_value="5",
                              description="every K-th frame is a keyframe (1..100)"),
    ]
    node = Node(
        package="mtl_perception",
        executable="mtl-perception-node",
        name="mtl_perception",
        namespace=LaunchConfiguration("namespace"),
        parameters=[
            LaunchConfiguration("params_file"),
            {"keyframe_interval": ParameterValue(LaunchConfiguration("keyframe_interval"), value_type=int)},
        ],
        remappings=[("image", LaunchConfiguration("image")),
                    ("camera_info", LaunchConfiguration("camera_info"))],
        output="screen",
        emulate_tty=True,
    )
    return LaunchDescription([*args, node])
