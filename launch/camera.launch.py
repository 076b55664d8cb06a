"""One perception node for one camera.

    ros2 launch mtl_perception camera.launch.py image:=/camera/image_raw
    ros2 launch mtl_perception camera.launch.py image:=/front/image_raw namespace:=front \
        checkpoint:=/path/to/model.pt threads:=2 use_sim_time:=true

Without arguments the node runs the shipped trained model (models/mila_street_lite.pt) with
config/perception.yaml. camera_info defaults to the image's sibling topic (image_transport:
/front/image_raw -> /front/camera_info). Outputs: /<namespace>/mtl_perception/{semantic,depth,...}.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription
from mtl_perception.launch_args import node_parameters, remappings

ARGS = ("namespace", "image", "camera_info", "params_file", "checkpoint", "threads", "use_sim_time",
        "keyframe_interval")


def _node(context, *_args, **_kwargs):
    a = {name: LaunchConfiguration(name).perform(context) for name in ARGS}
    return [Node(
        package="mtl_perception",
        executable="mtl-perception-node",
        name="mtl_perception",
        namespace=a["namespace"],
        parameters=node_parameters(a["params_file"], a["checkpoint"], a["threads"], a["use_sim_time"],
                                   a["keyframe_interval"]),
        remappings=remappings(a["image"], a["camera_info"]),
        output="screen",
        emulate_tty=True,
    )]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("mtl_perception"), "config", "perception.yaml"])
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="input sensor_msgs/Image topic (compressed: <image>/compressed)"),
        DeclareLaunchArgument("camera_info", default_value="",
                              description="input CameraInfo topic; empty: next to the image topic"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="parameter YAML (keys under /**)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="model .pt; empty: the params file's (the shipped trained "
                                          "model); 'random': untrained weights"),
        DeclareLaunchArgument("threads", default_value="", description="CPU inference threads; empty: "
                                                                        "the params file's (0 = default)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock time"),
        DeclareLaunchArgument("keyframe_interval", default_value="",
                              description="every K-th frame is a keyframe (1..100); empty: params file"),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_node)])
