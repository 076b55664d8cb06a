"""Launch files: checked statically (launch/launch_ros are not pip-installable here), and run for
real only where launch_ros imports."""

from __future__ import annotations

import ast
import filecmp
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def _node_params() -> set[str]:
    pytest.importorskip("rclpy", reason="rclpy not installed: cannot import the node's parameter table")
    from mtl_perception.node import PARAMETERS

    return set(PARAMETERS)


def _console_scripts() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    return set(re.findall(r'"([\w-]+)\s*=\s*[\w.]+:\w+"', text))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def _kw(call: ast.Call, key: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def test_launch_files_exist_and_compile() -> None:
    names = {p.name for p in LAUNCH_FILES}
    assert {"camera.launch.py", "multi_camera.launch.py"} <= names
    for p in LAUNCH_FILES:
        tree = ast.parse(p.read_text(), str(p))
        assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
                   for n in tree.body)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_nodes_use_installed_executable_and_shared_helpers(path: Path) -> None:
    scripts = _console_scripts()
    tree = ast.parse(path.read_text())
    nodes = _calls(tree, "Node")
    assert nodes, "no launch_ros Node in the file"
    for call in nodes:
        pkg, exe = _kw(call, "package"), _kw(call, "executable")
        assert isinstance(pkg, ast.Constant) and pkg.value == "mtl_perception"
        assert isinstance(exe, ast.Constant) and exe.value in scripts, f"{exe.value} not a console script"
        assert _kw(call, "namespace") is not None
        # parameters and remappings come from the tested pure helpers, not ad-hoc literals
        params, remaps = _kw(call, "parameters"), _kw(call, "remappings")
        assert isinstance(params, ast.Call) and params.func.id == "node_parameters"
        assert isinstance(remaps, ast.Call) and remaps.func.id == "remappings"
    # every launch argument the file reads is declared, and the four are there
    args = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert {"params_file", "checkpoint", "threads", "use_sim_time"} <= args
    argv = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGS")
    read = {e.value for e in ast.walk(argv) if isinstance(e, ast.Constant)}
    sides = {e.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "SIDES"
             for e in ast.walk(n.value) if isinstance(e, ast.Constant)}
    assert read | sides == args, f"read but not declared / declared but unused: {read ^ args}"


@pytest.mark.parametrize("image, expected", [
    ("/camera/image_raw", "/camera/camera_info"),
    ("/front/left/image_rect_color", "/front/left/camera_info"),
    ("/image", "/camera_info"),
    ("image", "camera_info"),
    ("cam/image_raw/", "cam/camera_info"),
    ("/cam/image_raw/compressed", "/cam/camera_info"),
])
def test_camera_info_follows_image_topic(image: str, expected: str) -> None:
    from mtl_perception.launch_args import camera_info_topic, remappings

    assert camera_info_topic(image) == expected
    assert remappings(image) == [("image", image), ("camera_info", expected)]
    assert remappings(image, "/other/info") == [("image", image), ("camera_info", "/other/info")]


def test_launch_parameters_only_override_what_is_given() -> None:
    from mtl_perception.launch_args import node_parameters

    # defaults: the file alone decides the model (the shipped checkpoint), sim time off
    assert node_parameters("p.yaml") == ["p.yaml", {"use_sim_time": False}]
    got = node_parameters("p.yaml", checkpoint="/m.pt", threads="2", use_sim_time="true",
                          keyframe_interval="3")
    assert got == ["p.yaml", {"use_sim_time": True, "checkpoint": "/m.pt", "threads": 2,
                              "keyframe_interval": 3}]
    declared = _node_params() | {"use_sim_time"}  # use_sim_time: declared by every rclpy node
    assert set(got[1]) <= declared
    for bad in ({"threads": "two"}, {"use_sim_time": "maybe"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            node_parameters("p.yaml", **bad)


def test_params_file_matches_node() -> None:
    data = yaml.safe_load((ROOT / "config/perception.yaml").read_text())
    assert list(data) == ["/**"], "use the /** key so renamed/namespaced nodes match"
    keys = set(data["/**"]["ros__parameters"])
    declared = _node_params()
    assert keys <= declared, f"unknown parameters in perception.yaml: {keys - declared}"
    from mtl_perception.node import PARAMETERS

    for k in keys:  # same types as the declared defaults (rcl would reject the file otherwise)
        assert type(data["/**"]["ros__parameters"][k]) is type(PARAMETERS[k][0]), k
    # the shipped file runs the shipped trained model, not random weights
    model = data["/**"]["ros__parameters"]
    from mtl_perception.pipeline import model_source

    ckpt, cfg = model_source(model["checkpoint"], model["model_config"])
    # the checkout's file, or its installed copy (colcon test runs with the install's share folder)
    shipped = ROOT / "models/mila_street_lite.pt"
    assert Path(ckpt).name == shipped.name and filecmp.cmp(ckpt, shipped, shallow=False) and cfg == ""


def test_setup_installs_launch_and_config() -> None:
    text = (ROOT / "setup.py").read_text()
    assert "launch/*.py" in text and "config/*.yaml" in text
    assert "mtl-perception-node" in _console_scripts()


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch_ros not installed (not pip-installable); static checks cover the files")
def test_camera_launch_runs(tmp_path: Path) -> None:  # pragma: no cover - needs a ROS install
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    import launch

    ls = launch.LaunchService()
    ls.include_launch_description(launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch/camera.launch.py")),
        launch_arguments={"namespace": "launch_test"}.items()))
    ls.include_launch_description(launch.LaunchDescription([
        launch.actions.TimerAction(period=8.0, actions=[launch.actions.Shutdown()])]))
    assert ls.run() == 0
