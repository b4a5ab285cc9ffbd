"""What colcon, rosdep and ament see of the package: colcon's pytest step, the test dependencies, the linters."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

from mlesam_ros.params import load_segment_config

REPO = Path(__file__).resolve().parents[2]


def setup_keyword(name):
    """The literal value of a setup() keyword in setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") ==
                "setup")
    return next(ast.literal_eval(k.value) for k in call.keywords if k.arg == name)


def test_setup_py_declares_pytest_so_colcon_test_runs_the_suite_with_it():
    # colcon picks its pytest step only for a test dependency on pytest; otherwise `python -m unittest`, 0 tests
    assert "pytest" in setup_keyword("extras_require")["test"]


def test_every_test_dependency_of_package_xml_has_its_test():
    root = ET.parse(REPO / "package.xml").getroot()
    depends = {e.text for e in root.findall("test_depend")}
    linters = {"ament_flake8": "test_flake8.py", "ament_pep257": "test_pep257.py"}
    assert "ament_copyright" not in depends  # no registry wheel, no per-file headers: not claimed
    for depend, test in linters.items():
        assert depend in depends and (REPO / "test" / test).is_file()
    assert {"python3-pytest", "python3-pytest-timeout"} <= depends


def test_a_params_file_with_rclpys_own_use_sim_time_is_accepted_by_the_replay(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("mlesam_segmenter:\n  ros__parameters:\n    use_sim_time: true\n    primary: depth\n")
    assert load_segment_config(path).primary == "depth"  # the node takes the same file
