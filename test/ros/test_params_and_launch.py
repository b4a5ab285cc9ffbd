"""config/segment.yaml, the typed pipeline config, the launch file and package.xml agree with each other."""

import ast
import re
import xml.etree.ElementTree as ET

import pytest
from fixtures import REPO_ROOT

from mlesam_core.config_io import ConfigError, from_dict, load_yaml
from mlesam_ros.params import NODE_NAME, SegmentConfig, iter_parameters, load_segment_config, nest, resolve_path

PARAMS = REPO_ROOT / "config" / "segment.yaml"
LAUNCH = REPO_ROOT / "launch" / "segment.launch.py"


def launch_constants():
    tree = ast.parse(LAUNCH.read_text())
    constants = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and isinstance(node.value, (ast.Constant, ast.Dict))}
    arguments = [call.args[0].value for call in ast.walk(tree)
                 if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"]
    return constants, arguments


def setup_py():
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    constants = {node.targets[0].id: node.value.value for node in tree.body
                 if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}
    scripts = [s.value for node in ast.walk(tree) if isinstance(node, ast.Dict)
               for key, value in zip(node.keys, node.values, strict=True)
               if isinstance(key, ast.Constant) and key.value == "console_scripts" for s in value.elts]
    return constants, dict(s.replace(" ", "").split("=") for s in scripts)


def test_shipped_params_file_is_a_valid_config_for_the_node_name():
    assert NODE_NAME in load_yaml(PARAMS)
    config = load_segment_config(PARAMS)
    assert config.modalities == ("rgb", "depth", "event", "lidar") and config.primary == "rgb"
    assert config.sensors["depth"].topic == "/depth/image_raw"
    assert resolve_path(config.model.config).is_file()


def test_params_file_documents_every_parameter_the_node_declares():
    section = load_yaml(PARAMS)[NODE_NAME]["ros__parameters"]
    declared = {name for name, value, _, _ in iter_parameters(load_segment_config(PARAMS))
                if value != ()}  # unset arrays (camera.intrinsics, camera.image_size) are commented out
    written = set()

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                written.add(f"{prefix}{key}")

    walk(section)
    assert written == declared


def test_every_parameter_has_a_description():
    undocumented = [name for name, _, doc, _ in iter_parameters(SegmentConfig()) if not doc]
    assert undocumented == []


def test_flat_ros_parameters_rebuild_the_same_config():
    config = load_segment_config(PARAMS)
    flat = {name: value for name, value, _, _ in iter_parameters(config)}
    assert all("." not in key for key in nest(flat))
    assert from_dict(SegmentConfig, nest(flat)) == config


@pytest.mark.parametrize("override, message", [
    ("sensors.depth.slop=-1.0", "sensors.depth.slop: must be >= 0"),
    ("primary=radar", "modalities: unknown modality|primary: 'radar' is not one of the modalities"),
    ("sync.primary_timeout=0", "sync.primary_timeout: must be > 0"),
    ("lidar.cam_from_lidar=[1.0, 0.0]", "lidar.cam_from_lidar: needs 16 values"),
    ("depth.encoding=disparity", "depth.encoding: must be one of 'hha', 'depth'"),
    ("sensors.nir.topic=/nir", "sensors.nir.topic: unknown parameter of mlesam_segmenter"),
    ("outputs.labls=true", "outputs.labls: unknown parameter of mlesam_segmenter: outputs.labls \\(did you "
                           "mean outputs.labels\\?\\)"),
    ("qos.output_depth=3", "qos.output_depth: no longer a parameter"),
    ("qos_overrides./mlesam/labels.publisher.depth=-1", "qos_overrides./mlesam/labels.publisher.depth: must be an "
                                                        "integer >= 1"),
    ("diagnostics.period=0", "diagnostics.period: must be > 0"),
])
def test_bad_values_are_refused_naming_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_segment_config(PARAMS, [override])


def test_a_params_file_without_the_node_section_is_refused(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("other_node:\n  ros__parameters: {primary: rgb}\n")
    with pytest.raises(ConfigError, match="no 'mlesam_segmenter: ros__parameters:' section"):
        load_segment_config(path)


def test_wildcard_node_section_is_accepted(tmp_path):
    path = tmp_path / "any.yaml"
    path.write_text("/**:\n  ros__parameters:\n    primary: depth\n")
    assert load_segment_config(path).priority == ("depth", "rgb", "event", "lidar")


def test_launch_file_names_exist_in_setup_py_and_config():
    constants, arguments = launch_constants()
    setup_constants, scripts = setup_py()
    assert constants["PACKAGE"] == setup_constants["PACKAGE"]
    assert scripts[constants["EXECUTABLE"]] == "mlesam_ros.node:main"
    assert constants["NODE_NAME"] == NODE_NAME
    assert (REPO_ROOT / "config" / constants["PARAMS_FILE"]).is_file()
    assert set(arguments) == {"params_file", "model_config", "checkpoint", "adapters", "device", "allow_random_init",
                              "namespace", "use_sim_time", "autostart"}
    declared = {name for name, *_ in iter_parameters(SegmentConfig())}
    for overrides in (constants["OVERRIDES"], constants["BOOL_OVERRIDES"]):
        assert set(overrides) <= set(arguments)
        assert set(overrides.values()) <= declared
    assert constants["BOOL_OVERRIDES"] == {"allow_random_init": "model.allow_random_init"}


def test_launch_file_starts_a_lifecycle_node_and_brings_it_to_active_unless_autostart_is_false():
    """launch_ros's way (LifecycleNode, ChangeState events, OnStateTransition): configure at start, activate once
    configured (only from configuring, so a manager's later deactivate stays); autostart:=false returns the node
    alone. The launch library does not install here: read from the file's syntax tree."""
    tree = ast.parse(LAUNCH.read_text())
    calls = {getattr(c.func, "id", ""): c for c in ast.walk(tree) if isinstance(c, ast.Call)}
    assert "LifecycleNode" in calls and "Node" not in calls
    handler = {k.arg: ast.literal_eval(k.value) for k in calls["OnStateTransition"].keywords
               if isinstance(k.value, ast.Constant)}
    assert handler == {"start_state": "configuring", "goal_state": "inactive"}
    transitions = [ast.unparse(k.value) for c in ast.walk(tree) if isinstance(c, ast.Call)
                   and getattr(c.func, "id", "") == "ChangeState" for k in c.keywords if k.arg == "transition_id"]
    assert sorted(transitions) == ["lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE",
                                   "lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE"]
    node_function = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "_node")
    returns = [ast.unparse(r.value) for r in ast.walk(node_function) if isinstance(r, ast.Return)]
    assert sorted(returns) == ["[activate_when_configured, node, configure]", "[node]"]
    default = next(c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") ==
                   "DeclareLaunchArgument" and c.args[0].value == "autostart")
    assert {k.arg: ast.literal_eval(k.value) for k in default.keywords}["default_value"] == "true"


def test_package_xml_declares_every_ros_package_the_code_imports():
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "mlesam_ros"
    assert root.find("export/build_type").text == "ament_python"
    depends = {e.text for e in root.findall("exec_depend")}
    ros_packages = {"rclpy", "rcl_interfaces", "std_msgs", "sensor_msgs", "diagnostic_msgs", "builtin_interfaces",
                    "launch", "launch_ros", "ament_index_python", "tf2_ros", "tf2_msgs", "lifecycle_msgs"}
    released_as = {"tf2_ros": "tf2_ros_py"}  # the Python module's package (tf2_ros is the C++ library)
    imported = set()
    for path in [*(REPO_ROOT / "mlesam_ros").glob("*.py"), LAUNCH]:
        for name in re.findall(r"^\s*(?:from|import) (\w+)", path.read_text(), re.M):
            imported.add(name)
    assert {released_as.get(name, name) for name in imported & ros_packages} <= depends
    assert (REPO_ROOT / "resource" / "mlesam_ros").exists()


def test_robot_docs_list_every_parameter():
    docs = (REPO_ROOT / "docs" / "robot.md").read_text()
    names = {re.sub(r"^sensors\.\w+\.", "sensors.<m>.", name) for name, *_ in iter_parameters(SegmentConfig())}
    assert sorted(n for n in names if f"`{n}`" not in docs) == []


def test_fast_inference_options_default_off_and_reach_the_segmenter(monkeypatch):
    from types import SimpleNamespace

    from mlesam_core import Segmenter
    from mlesam_ros.pipeline import load_segmenter

    defaults = load_segment_config(PARAMS).model
    assert (defaults.compile, defaults.cuda_graphs, defaults.merge_lora) == (False, False, False)
    received = {}
    loaded = SimpleNamespace(warm_up=lambda subsets: None)  # load_segmenter warms the loaded segmenter up
    monkeypatch.setattr(Segmenter, "from_files", lambda path, **kwargs: received.update(kwargs) or loaded)
    load_segmenter(load_segment_config(PARAMS, ["model.compile=true", "model.cuda_graphs=true",
                                                "model.merge_lora=true"]))
    options = received["options"]
    assert (options.compile, options.cuda_graphs, options.merge_lora) == (True, True, True)


def test_cpu_threads_apply_to_the_thread_that_loads_the_model(monkeypatch):
    import threading

    import torch

    from mlesam_core import predictor
    from mlesam_ros.pipeline import load_segmenter

    class BuildReached(Exception):
        pass

    def build_model(*args, **kwargs):
        raise BuildReached  # the threads are set before the model is built; no need to build it

    monkeypatch.setattr(predictor, "build_model", build_model)
    main_threads = torch.get_num_threads()
    wanted = 1 if main_threads != 1 else 2
    seen = {}

    def inference_thread():
        with pytest.raises(BuildReached):
            load_segmenter(load_segment_config(PARAMS, [f"model.threads={wanted}", "model.allow_random_init=true"]))
        seen["threads"] = torch.get_num_threads()

    worker = threading.Thread(target=inference_thread)
    worker.start()
    worker.join()
    assert seen["threads"] == wanted and torch.get_num_threads() == main_threads
    with pytest.raises(ConfigError, match=r"model\.threads: must be >= 0"):
        load_segment_config(PARAMS, ["model.threads=-2"])


def test_the_parameters_load_and_validate_without_torch():
    """The node reads and checks its parameters before torch starts (torch's threading is set from them)."""
    import subprocess
    import sys

    probe = ("import sys; from mlesam_ros.params import load_segment_config; "
             f"load_segment_config({str(PARAMS)!r}, ['model.device=cuda:1', 'model.precision=bf16']); "
             "print(sorted(m for m in ('torch', 'cv2', 'sam2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]"
