"""mtl_perception: video multi-task dense prediction for ROS 2."""

__version__ = "0.1.0"
