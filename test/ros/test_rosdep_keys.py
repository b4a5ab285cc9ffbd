"""package.xml's dependency keys against a pinned extract of ros/rosdistro (tools/rosdistro_extract.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from fixtures import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
from rosdistro_extract import DISTRIBUTIONS, extract, package_keys  # noqa: E402

EXTRACT = yaml.safe_load((REPO_ROOT / "test" / "data" / "rosdistro_extract.yaml").read_text())


def pip_packages(rule):
    """Every pip package a rosdep rule installs, on any OS."""
    found = []
    for key, value in rule.items() if isinstance(rule, dict) else ():
        if key == "pip":
            found += value["packages"] if isinstance(value, dict) else value
        else:
            found += pip_packages(value)
    return found


def test_every_package_xml_key_is_known_to_rosdistro():
    keys = package_keys(REPO_ROOT / "package.xml")
    assert EXTRACT["unknown"] == []
    missing = [key for key in keys if key not in EXTRACT["rosdep"] and key not in EXTRACT["packages"]]
    assert missing == [], "regenerate test/data/rosdistro_extract.yaml (tools/rosdistro_extract.py)"
    for key, releases in EXTRACT["packages"].items():  # a ROS package released in every supported distribution
        assert all(releases[d] for d in DISTRIBUTIONS), (key, releases)


def test_no_key_installs_torchvision_and_none_is_an_eol_alias():
    assert all("torchvision" not in pip_packages(rule) for rule in EXTRACT["rosdep"].values())
    text = (REPO_ROOT / "package.xml").read_text()
    depends = re.findall(r"<(?:\w+_)?depend>([^<]+)</", text)
    assert "python3-pytorch-pip" not in depends and "python3-safetensors-pip" not in depends
    assert all(isinstance(rule, dict) for rule in EXTRACT["rosdep"].values())  # rules, not migration aliases


def test_the_extract_tool_reads_rules_and_releases_from_rosdistro_files(tmp_path):
    files = {
        "rosdep/base.yaml": "libfoo:\n  ubuntu: [libfoo-dev]\n",
        "rosdep/python.yaml": "python3-bar-pip:\n  ubuntu:\n    pip:\n      packages: [bar]\n",
        **{f"{d}/distribution.yaml": "repositories:\n  common_interfaces:\n    release:\n      packages: [std_msgs]\n"
           "  rclpy:\n    release: {version: 1.0.0}\n" for d in DISTRIBUTIONS},
    }
    data = extract(["libfoo", "python3-bar-pip", "std_msgs", "rclpy", "python3-nothing"], files.__getitem__,
                   {"commit": "test"})
    assert data["rosdep"] == {"libfoo": {"ubuntu": ["libfoo-dev"]},
                              "python3-bar-pip": {"ubuntu": {"pip": {"packages": ["bar"]}}}}
    assert data["packages"] == {"std_msgs": dict.fromkeys(DISTRIBUTIONS, "common_interfaces"),
                                "rclpy": dict.fromkeys(DISTRIBUTIONS, "rclpy")}
    assert data["unknown"] == ["python3-nothing"]


def test_the_extract_tool_refuses_a_directory_that_is_no_rosdistro_checkout(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "rosdistro_extract.py"), "--rosdistro",
                           str(tmp_path), "--out", str(tmp_path / "out.yaml")], capture_output=True, text=True)
    assert done.returncode == 2 and f"--rosdistro {tmp_path}: not a git checkout" in done.stderr
