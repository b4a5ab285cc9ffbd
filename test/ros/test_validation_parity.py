"""One validation of the node's parameters: every shipped and documented parameter file, and bad variants of the
shipped one, get the same verdict (accepted, or refused naming the same parameter) from the replay's loader and from
the node itself (a real rclpy SegmentationNode reading the file through rcl, configured up to the model load), and,
cross-process, from the node started as `python -m mlesam_ros.node` and configured over its lifecycle service."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import yaml
from fixtures import REPO_ROOT

from mlesam_core.config_io import ConfigError
from mlesam_ros.params import NODE_NAME, SegmentConfig, load_segment_config

SHIPPED = REPO_ROOT / "config" / "segment.yaml"
MODEL_REACHED = "validated: the model would load now"  # what the node's patched model loader raises
TOP_LEVEL = {*SegmentConfig.__dataclass_fields__, "qos_overrides", "use_sim_time"}


def documented_parameter_files():
    """(name, text) of every YAML block in README.md and docs/*.md that is a parameters file of the node, or a
    fragment of one (its keys are parameters: it is wrapped in the node's section, dedented)."""
    files = []
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for number, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            data = yaml.safe_load(textwrap.dedent(block))
            if not isinstance(data, dict):
                continue
            if any(isinstance(v, dict) and "ros__parameters" in v for v in data.values()):
                files.append((f"{doc.name}#{number}", textwrap.dedent(block)))
            elif set(data) <= TOP_LEVEL:
                body = textwrap.indent(textwrap.dedent(block), "    ")
                files.append((f"{doc.name}#{number}", f"{NODE_NAME}:\n  ros__parameters:\n{body}"))
    return files


def variant(**changes):
    """The shipped file with top-level parameters replaced (nested ones merged one level down)."""
    data = yaml.safe_load(SHIPPED.read_text())
    section = data[NODE_NAME]["ros__parameters"]
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return yaml.safe_dump(data)


INTEGER_EXTRINSIC = [0, -1, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, 0, 1]
# name -> (file text, None when accepted, else the parameter the refusal names)
VARIANTS = {
    "integer where a number is expected": (variant(diagnostics={"period": 1}, log_period=5), None),
    "integer extrinsic": (variant(lidar={"cam_from_lidar": INTEGER_EXTRINSIC}), None),
    "ROS node parameter and a QoS override": (variant(use_sim_time=True, qos_overrides={
        "/mlesam/labels": {"publisher": {"depth": 5, "reliability": "best_effort"}}}), None),
    "negative output queue depth": (variant(qos_overrides={"/mlesam/labels": {"publisher": {"depth": -1}}}),
                                    "qos_overrides./mlesam/labels.publisher.depth"),
    "negative input queue depth": (variant(qos_overrides={"/camera/image_raw": {"subscription": {"depth": -1}}}),
                                   "qos_overrides./camera/image_raw.subscription.depth"),
    "unknown reliability": (variant(qos_overrides={"/mlesam/labels": {"publisher": {"reliability": "sometimes"}}}),
                            "qos_overrides./mlesam/labels.publisher.reliability"),
    "parameter of an earlier version": (variant(qos={"input_depth": -1}), "qos.input_depth"),
    "zero diagnostics period": (variant(diagnostics={"period": 0}), "diagnostics.period"),
    "text for a number": (variant(diagnostics={"period": "fast"}), "diagnostics.period"),
    "fraction for an integer": (variant(sync={"buffer_size": 2.5}), "sync.buffer_size"),
    "negative log period": (variant(log_period=-1.0), "log_period"),
    "alpha out of range": (variant(outputs={"overlay_alpha": 2}), "outputs.overlay_alpha"),
    "typo": (variant(primay="rgb"), "primay"),
    "unknown modality": (variant(modalities=["rgb", "radar"]), "modalities"),
    "primary not a modality": (variant(primary="radar"), "primary"),
    "sensor of another modality": (variant(sensors={"nir": {"topic": "/nir/image"}}), "sensors.nir.topic"),
    "extrinsic of 3 values": (variant(lidar={"cam_from_lidar": [1.0, 0.0, 0.0]}), "lidar.cam_from_lidar"),
    "image size of zero": (variant(camera={"image_size": [0, 64]}), "camera.image_size"),
    "negative threads": (variant(model={"threads": -2}), "model.threads"),
    "unknown wait policy": (variant(omp_wait_policy="lazy"), "omp_wait_policy"),
}


def replay_verdict(path):
    """(accepted, message) of the replay's loader."""
    try:
        load_segment_config(path)
    except ConfigError as exc:
        return False, str(exc)
    return True, ""


def node_verdict(path, monkeypatch):
    """(accepted, message) of a real SegmentationNode given `path` as its parameters file: refused when it does
    not build or its configure fails before the model load; accepted when configure reaches the model loader."""
    import rclpy

    from mlesam_ros import node as node_module

    def model_reached(*args, **kwargs):
        raise FileNotFoundError(MODEL_REACHED)

    monkeypatch.setattr(node_module, "load_segmenter", model_reached)
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = None
    try:
        try:
            node = node_module.SegmentationNode(context=context, cli_args=["--ros-args", "--params-file", str(path)])
        except ConfigError as exc:
            return False, str(exc)
        node.trigger_configure()
        return MODEL_REACHED in node._last_error, node._last_error
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.shutdown(context=context)


def cases():
    shipped = [("config/segment.yaml", SHIPPED.read_text(), None)]
    documented = [(name, text, None) for name, text in documented_parameter_files()]
    return shipped + documented + [(name, text, key) for name, (text, key) in VARIANTS.items()]


def test_the_documents_hold_parameter_files():
    assert len(documented_parameter_files()) >= 2  # docs/robot.md's topics, docs/deploy.md's onnxruntime model


@pytest.mark.parametrize("name, text, refused_key", cases(), ids=[c[0] for c in cases()])
def test_node_and_replay_give_a_parameters_file_the_same_verdict(name, text, refused_key, tmp_path, monkeypatch,
                                                                 loopback_dds_env):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    replay_accepted, replay_message = replay_verdict(path)
    node_accepted, node_message = node_verdict(path, monkeypatch)
    assert replay_accepted == node_accepted == (refused_key is None), (replay_message, node_message)
    if refused_key is not None:
        assert f"{refused_key}: " in replay_message and f"{refused_key}: " in node_message, (replay_message,
                                                                                            node_message)


def test_a_list_of_mixed_types_is_refused_by_ros_and_by_the_replay(tmp_path, loopback_dds_env):
    """ROS 2's parameter file parser has no list of mixed integers and doubles: the node cannot start, so the
    replay refuses the file too, naming the parameter."""
    path = tmp_path / "mixed.yaml"
    path.write_text(variant(lidar={"cam_from_lidar": [0, -1.0, 0, 0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, 0, 1]}))
    accepted, message = replay_verdict(path)
    assert not accepted and "lidar.cam_from_lidar: a ROS 2 parameter list holds values of one type" in message
    done = subprocess.run([sys.executable, "-m", "mlesam_ros.node", "--ros-args", "--params-file", str(path)],
                          cwd=REPO_ROOT, env=loopback_dds_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"[{NODE_NAME}] cannot start: " in done.stderr and "Sequence should be of same type" in done.stderr


def configure_over_lifecycle_service(params, env, log):
    """Start the node process with `params`, ask it to configure; (success, the node's log so far)."""
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "mlesam_ros.node", "--ros-args", "--params-file",
                                    str(params)], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    client_node = rclpy.create_node("parity_test_client", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(client_node)

    def answer(client, request):
        """The service's answer, None when none came (a request sent before the node's service had matched this
        client is lost: DDS does not deliver it late)."""
        assert client.wait_for_service(timeout_sec=120), log.read_text()
        future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=30)
        return future.result() if future.done() else None

    try:
        change = client_node.create_client(ChangeState, f"/{NODE_NAME}/change_state")
        get = client_node.create_client(GetState, f"/{NODE_NAME}/get_state")
        configure = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))
        for _ in range(4):
            changed = answer(change, configure)
            if changed is not None:
                return changed.success, log.read_text()
            state = answer(get, GetState.Request())  # did the lost request (or only its answer) reach the node?
            if state is not None and state.current_state.label != "unconfigured":
                return state.current_state.label == "inactive", log.read_text()
        raise AssertionError(f"no answer from /{NODE_NAME}/change_state: {log.read_text()}")
    finally:
        executor.shutdown()
        client_node.destroy_node()
        rclpy.shutdown(context=context)
        process.terminate()
        process.wait(timeout=30)


def test_the_node_process_configures_with_integers_and_refuses_a_negative_queue_depth_before_loading(
        tmp_path, loopback_dds_env):
    tiny = {"config": str(REPO_ROOT / "config" / "model" / "mlesam_tiny.yaml"), "allow_random_init": True}
    accepted = tmp_path / "integers.yaml"
    accepted.write_text(variant(model=tiny, classes="deliver", diagnostics={"period": 1},
                                lidar={"cam_from_lidar": INTEGER_EXTRINSIC}))
    success, log = configure_over_lifecycle_service(accepted, loopback_dds_env, tmp_path / "accepted.log")
    assert success, log
    refused = tmp_path / "depth.yaml"
    refused.write_text(variant(model=tiny, classes="deliver",
                               qos_overrides={"/mlesam/labels": {"publisher": {"depth": -1}}}))
    success, log = configure_over_lifecycle_service(refused, loopback_dds_env, tmp_path / "refused.log")
    assert not success
    assert "qos_overrides./mlesam/labels.publisher.depth: must be an integer >= 1 (messages kept), got -1" in log
    assert "Traceback" not in log and "invalid allocator" not in log
