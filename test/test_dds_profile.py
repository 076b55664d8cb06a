"""The node's Fast DDS profile (mtl_perception/dds_profile.py): set only when the user has not
chosen, the shipped file adds a shared-memory transport large enough for whole output images and
keeps the built-in transports, and a bad override fails start-up with one line."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import pytest

from mtl_perception import dds_profile
from mtl_perception.tools import harness

NS = {"d": "http://www.eprosima.com"}


def test_default_points_at_the_shipped_profile() -> None:
    env: dict[str, str] = {}
    line = dds_profile.apply(env)
    path = env["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert path.endswith("config/fastdds_large_images.xml") and path in line
    # no ROS_DISTRO (the PyPI wheels, Fast DDS 3): only the new name; the old one would make
    # Fast DDS 3 print a deprecation warning on every start (and break one-line start-up errors)
    assert set(env) == {"FASTDDS_DEFAULT_PROFILES_FILE"}
    root = ET.parse(path).getroot()
    shm = [t for t in root.iterfind(".//d:transport_descriptor", NS)
           if t.findtext("d:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    # a 256x512 normals image (1.5 MB) and a 512x1024 one (6.3 MB) must fit one message and the
    # segment must hold several: the point of the profile
    assert int(shm[0].findtext("d:maxMessageSize", namespaces=NS)) >= 512 * 1024 * 3 * 4
    assert int(shm[0].findtext("d:segment_size", namespaces=NS)) >= 4 * 512 * 1024 * 3 * 4
    part = root.find(".//d:participant", NS)
    assert part.get("is_default_profile") == "true"
    # added to, not replacing, the built-in transports (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA stays)
    assert part.findtext("d:rtps/d:useBuiltinTransports", namespaces=NS) == "true"
    ids = [e.text for e in part.iterfind("d:rtps/d:userTransports/d:transport_id", NS)]
    assert ids == [shm[0].findtext("d:transport_id", namespaces=NS)]


@pytest.mark.parametrize("env", [
    {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"},
    {"FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"},
    {"MTL_PERCEPTION_DDS_PROFILE": "none"},
    {"MTL_PERCEPTION_DDS_PROFILE": "NONE", "FASTDDS_DEFAULT_PROFILES_FILE": ""},
    {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
])
def test_the_users_choice_wins(env: dict[str, str]) -> None:
    before = dict(env)
    line = dds_profile.apply(env)
    assert env == before, line  # nothing set or changed
    assert line.startswith("DDS profile:")


def test_explicit_rmw_fastrtps_and_an_own_file(tmp_path) -> None:
    mine = tmp_path / "p.xml"
    mine.write_text("<dds/>")
    env = {"RMW_IMPLEMENTATION": "rmw_fastrtps_dynamic_cpp", "MTL_PERCEPTION_DDS_PROFILE": str(mine)}
    dds_profile.apply(env)
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(mine)
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in env


@pytest.mark.parametrize("distro,old_name", [("humble", True), ("Jazzy", True), ("iron", True),
                                             ("kilted", False), ("rolling", False), ("", False)])
def test_old_variable_name_only_on_fast_dds_2_distros(distro: str, old_name: bool) -> None:
    env = {"ROS_DISTRO": distro}
    dds_profile.apply(env)
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_large_images.xml")
    expected = env["FASTDDS_DEFAULT_PROFILES_FILE"] if old_name else None
    assert env.get("FASTRTPS_DEFAULT_PROFILES_FILE") == expected


def test_missing_override_is_an_error_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="MTL_PERCEPTION_DDS_PROFILE='/no/such.xml'"):
        dds_profile.apply({"MTL_PERCEPTION_DDS_PROFILE": "/no/such.xml"})


def test_node_refuses_a_missing_profile_with_one_line(domain_id: int) -> None:
    env = harness.ros_env(domain_id)
    env["MTL_PERCEPTION_DDS_PROFILE"] = "/no/such.xml"
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    p = subprocess.run(harness.node_command({"threads": 1}), env=env, capture_output=True, text=True,
                       timeout=120)
    out = p.stdout + p.stderr
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert p.returncode == 1 and "Traceback" not in out, out[-2000:]
    assert len(lines) == 1 and "MTL_PERCEPTION_DDS_PROFILE" in lines[0] and "/no/such.xml" in lines[0], out
