"""The node as a managed node, driven from this process over its lifecycle_msgs services (ChangeState, GetState)
and the parameter service, as `ros2 lifecycle set` / `ros2 param set` or a system manager would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from fixtures import REPO_ROOT
from ros.test_node import Harness, start_node, stop, write_params

pytestmark = pytest.mark.ros

NODE = "/mlesam_segmenter"
TINY = REPO_ROOT / "config" / "model" / "mlesam_tiny.yaml"


@pytest.fixture
def rclpy_session(loopback_dds_env):
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.shutdown()


def set_parameters(harness, **values):
    """SetParameters on the node from this process; {name: (successful, reason)} (names with '.' as '__')."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = harness.node.create_client(SetParameters, f"{NODE}/set_parameters")
    assert client.wait_for_service(timeout_sec=30)
    names = [name.replace("__", ".") for name in values]
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()
                                                for name, value in zip(names, values.values(), strict=True)])
    future = client.call_async(request)
    harness.rclpy.spin_until_future_complete(harness.node, future, timeout_sec=30)
    harness.node.destroy_client(client)
    return {name: (r.successful, r.reason) for name, r in zip(names, future.result().results, strict=True)}


def get_parameter(harness, name):
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    client = harness.node.create_client(GetParameters, f"{NODE}/get_parameters")
    assert client.wait_for_service(timeout_sec=30)
    future = client.call_async(GetParameters.Request(names=[name]))
    harness.rclpy.spin_until_future_complete(harness.node, future, timeout_sec=30)
    harness.node.destroy_client(client)
    return parameter_value_to_python(future.result().values[0])


def stamp_ns(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_full_lifecycle_answers_frames_only_while_active(rclpy_session, loopback_dds_env, tmp_path):
    from mlesam_ros.lifecycle_client import LifecycleClient

    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "params.yaml"), loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session)
        client = LifecycleClient(harness.node, NODE)
        sent_in: dict[str, set] = {"active": set(), "inactive": set(), "unconfigured": set()}

        def frames_in(state, count):
            """Publish `count` frames in `state` (the node's state checked before and after)."""
            assert client.state() == state
            first = len(harness.sent_rgb)
            harness.spin_until(lambda: len(harness.sent_rgb) >= first + count, 30, f"frames in {state}", process, log)
            assert client.state() == state
            sent_in[state].update(harness.sent_rgb[first:])

        def change(transition, goal):
            assert client.change(transition), log.read_text()  # frames sent meanwhile belong to no state
            assert client.state() == goal

        frames_in("unconfigured", 5)
        change("configure", "inactive")
        frames_in("inactive", 5)
        change("activate", "active")
        answered = len(harness.labels)
        harness.spin_until(lambda: len(harness.labels) >= answered + 5, 90, "labels when active", process, log)
        frames_in("active", 3)
        change("deactivate", "inactive")
        frames_in("inactive", 10)
        change("activate", "active")
        answered = len(harness.labels)
        harness.spin_until(lambda: len(harness.labels) >= answered + 3, 60, "labels when active again", process,
                           log)
        change("deactivate", "inactive")
        change("cleanup", "unconfigured")
        frames_in("unconfigured", 5)
        assert not client.change("activate")  # not a transition of unconfigured: refused, the node goes on
        assert client.state() == "unconfigured"
        # the last transition from the command line, as a user without the ros2 CLI would
        done = subprocess.run([sys.executable, "-m", "mlesam_ros.lifecycle_client", NODE, "shutdown"],
                              cwd=REPO_ROOT, env=loopback_dds_env, capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stdout.strip()) == (0, "finalized"), done.stderr
        assert client.state() == "finalized"
        assert process.poll() is None  # finalized, still answering its services until stopped
    finally:
        stop(process)
    answered_stamps = {stamp_ns(m) for m in harness.labels}
    assert answered_stamps and not answered_stamps & (sent_in["inactive"] | sent_in["unconfigured"])
    text = log.read_text()
    assert "transition 3 is not available in state unconfigured" in text  # 3: activate
    assert text.count("unconfigured: model released") == 1
    assert "Traceback" not in text


def lifecycle_status(harness):
    """(level, message, values) of the newest lifecycle status on /diagnostics."""
    return harness.status("lifecycle")


def test_a_model_that_fails_to_load_is_reported_and_another_configure_loads_another_model(rclpy_session,
                                                                                          loopback_dds_env, tmp_path):
    from mlesam_ros.lifecycle_client import LifecycleClient

    muses_model = tmp_path / "tiny_muses.yaml"  # another model: the tiny one with the 19 MUSES classes
    muses_model.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()), "num_classes": 19,
                                           "classes": "muses"}))
    log = tmp_path / "node.log"
    params = write_params(tmp_path / "params.yaml", classes="",
                          model={"config": str(TINY), "allow_random_init": True, "device": "cuda:99"})
    process = start_node(params, loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session)
        client = LifecycleClient(harness.node, NODE)
        assert client.state() == "unconfigured"
        harness.spin_until(lambda: harness.node.count_publishers("/diagnostics") > 0, 30, "the diagnostics publisher",
                           process, log)
        assert not client.change("configure")  # the model does not load: error processing, back to unconfigured
        assert client.state() == "unconfigured" and process.poll() is None
        harness.spin_until(lambda: lifecycle_status(harness)[0] == 2, 30, "the lifecycle status ERROR", process, log)
        level, message, values = lifecycle_status(harness)
        assert message.startswith("configure failed: model.device: 'cuda:99'") and values["state"] == "unconfigured"

        # an invalid parameter value is refused naming the key; a configure-time one is taken while unconfigured
        refused = set_parameters(harness, primary="radar")["primary"]
        assert not refused[0] and "primary: 'radar' is not one of the modalities" in refused[1]
        assert set_parameters(harness, model__device="cpu")["model.device"] == (True, "")
        assert client.change("configure") and client.change("activate")
        harness.spin_until(lambda: len(harness.labels) >= 3, 90, "labels of the first model", process, log)
        harness.spin_until(lambda: harness.class_names, 30, "the class list", process, log)
        assert len(json.loads(harness.class_names[-1].data)["names"]) == 25

        # while configured, the model cannot change under the node's feet: refused with the way to do it
        refused = set_parameters(harness, model__config=str(muses_model))["model.config"]
        assert not refused[0] and refused[1].startswith("model.config: read at configure and the node is active")
        assert get_parameter(harness, "model.config") == str(TINY)

        assert client.change("deactivate") and client.change("cleanup")
        assert set_parameters(harness, model__config=str(muses_model))["model.config"] == (True, "")
        harness.class_names.clear()
        assert client.change("configure") and client.change("activate")
        answered = len(harness.labels)
        harness.spin_until(lambda: len(harness.labels) >= answered + 3, 90, "labels of the second model", process,
                           log)
        harness.spin_until(lambda: harness.class_names, 30, "the new class list", process, log)
    finally:
        stop(process)
    names = json.loads(harness.class_names[-1].data)
    assert names["dataset"] == "muses" and len(names["names"]) == 19
    text = log.read_text()
    assert "error processing: released the model; unconfigured (configure failed: model.device: 'cuda:99'" in text
    assert "available: cpu" in text
    assert process.returncode in (0, -15)


def test_the_lifecycle_command_line_refuses_a_transition_that_does_not_exist():
    done = subprocess.run([sys.executable, "-m", "mlesam_ros.lifecycle_client", NODE, "configure", "start"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "transition 'start': one of configure, cleanup, activate, deactivate, shutdown" in done.stderr
