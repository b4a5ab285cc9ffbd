"""The ROS conventions of the node, checked across processes: outputs computed only for subscribers, the overlay
and camera_info beside the outputs, the timing topic, live parameters over the parameter service, QoS overrides
(QoSOverridingOptions) and the processing-time diagnostics."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from fixtures import REPO_ROOT
from ros.test_lifecycle import get_parameter, set_parameters, stamp_ns
from ros.test_node import SENSOR_TOPICS, H, Harness, K, W, start_node, stop, write_params

pytestmark = pytest.mark.ros


@pytest.fixture
def rclpy_session(loopback_dds_env):
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.shutdown()


def computed(harness):
    """Outputs computed so far, from the node's /diagnostics (name -> count)."""
    values = harness.status("outputs")[2]
    return {key.removeprefix("computed_"): int(value) for key, value in values.items()}


def by_stamp(messages):
    return {stamp_ns(m): m for m in messages}


def test_outputs_are_computed_for_subscribers_with_overlay_camera_info_timing_and_live_parameters(
        rclpy_session, loopback_dds_env, tmp_path):
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Float64MultiArray

    from mlesam_core.data.classes import DELIVER

    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "params.yaml"), loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session)  # subscribes to the labels only
        harness.bring_up(process, log)
        harness.spin_until(lambda: computed(harness).get("labels", 0) >= 5, 90, "5 labels computed", process, log)
        only_labels = computed(harness)
        assert only_labels["labels_color"] == only_labels["confidence"] == only_labels["overlay"] == \
            only_labels["routing"] == 0, only_labels

        node = harness.node
        overlays, infos, confidences, timings = [], [], [], []
        node.create_subscription(Image, "/mlesam/overlay", overlays.append, 10)
        node.create_subscription(Image, "/mlesam/confidence", confidences.append, 10)
        node.create_subscription(CameraInfo, "/mlesam/camera_info", infos.append, 10)
        node.create_subscription(Float64MultiArray, "/mlesam/timing",
                                 lambda m: timings.append((m, time.time_ns())), 10)
        harness.spin_until(lambda: len(overlays) >= 3 and len(infos) >= 3 and len(timings) >= 3 and confidences,
                           60, "overlay, camera_info, timing and confidence", process, log)

        # a live parameter change over the parameter service: taken; an invalid value: refused naming the key
        overlays_before = len(overlays)  # made with alpha 0.5
        assert set_parameters(harness, outputs__overlay_alpha=1.0)["outputs.overlay_alpha"] == (True, "")
        changed_at = len(harness.sent_rgb)  # frames sent from here on are made with alpha 1.0
        refused = set_parameters(harness, outputs__overlay_alpha=1.5)["outputs.overlay_alpha"]
        assert not refused[0] and "outputs.overlay_alpha: must lie in [0, 1], got 1.5" in refused[1]
        assert not set_parameters(harness, omp_wait_policy="active")["omp_wait_policy"][0]  # read-only
        assert set_parameters(harness, sensors__rgb__slop=0.08)["sensors.rgb.slop"] == (True, "")
        assert get_parameter(harness, "outputs.overlay_alpha") == 1.0
        harness.spin_until(lambda: set(harness.sent_rgb[changed_at:]) & set(by_stamp(overlays)) & set(
            by_stamp(harness.labels)), 60, "an overlay after the change", process, log)
        assert process.poll() is None
    finally:
        stop(process)

    labels = by_stamp(harness.labels)
    after_change = set(harness.sent_rgb[changed_at:])
    checked = {0.5: 0, 1.0: 0}
    for index, overlay in enumerate(overlays):  # content: the camera image blended with the palette
        stamp = stamp_ns(overlay)
        alpha = 0.5 if index < overlays_before else 1.0 if stamp in after_change else None
        if stamp not in labels or alpha is None:  # alpha None: sent while the change was on its way
            continue
        checked[alpha] += 1
        ids = np.frombuffer(labels[stamp].data, np.uint8).reshape(H, W)
        camera = harness.rgb_by_stamp[stamp].astype(np.float32)
        palette = np.array(DELIVER.palette, np.float32)[np.minimum(ids, len(DELIVER.palette) - 1)]
        expected = np.where((ids == 255)[:, :, None], camera, np.rint((1 - alpha) * camera + alpha * palette))
        got = np.frombuffer(overlay.data, np.uint8).reshape(H, W, 3)
        assert overlay.encoding == "rgb8" and overlay.header.frame_id == "camera"
        assert np.array_equal(got, expected.astype(np.uint8))
    assert checked[0.5] and checked[1.0]
    for info in infos:  # camera_info beside the outputs: the primary's content, the outputs' header
        assert stamp_ns(info) in harness.rgb_by_stamp and info.header.frame_id == "camera"
        assert (info.height, info.width) == (H, W) and np.allclose(np.reshape(info.k, (3, 3)), K)
    assert {stamp_ns(i) for i in infos} & set(labels)
    for confidence in confidences:
        values = np.frombuffer(confidence.data, np.float32)
        assert confidence.encoding == "32FC1" and values.size == H * W and 0 < values.min() <= values.max() <= 1
    for timing, received_ns in timings:  # stamp -> publish latency >= processing >= model time
        assert timing.layout.dim[0].label == "timing=stamp_sec,stamp_nanosec,latency_ms,processing_ms,model_ms"
        sec, nanosec, latency_ms, processing_ms, model_ms = timing.data
        stamp = int(sec) * 1_000_000_000 + int(nanosec)
        assert stamp in harness.rgb_by_stamp
        assert (received_ns - stamp) / 1e6 >= latency_ms >= processing_ms >= model_ms > 0
    assert "parameters changed: outputs.overlay_alpha=1.0" in log.read_text()


def test_qos_overrides_set_the_qos_of_publishers_and_subscriptions(rclpy_session, loopback_dds_env, tmp_path):
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    log = tmp_path / "node.log"
    overrides = {"/mlesam/labels": {"publisher": {"reliability": "best_effort"}},
                 SENSOR_TOPICS["rgb"]: {"subscription": {"reliability": "reliable"}}}
    process = start_node(write_params(tmp_path / "params.yaml", qos_overrides=overrides), loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session)
        node = harness.node
        node.destroy_publisher(harness.publishers["rgb"])  # the camera published reliably, as the node asks
        harness.publishers["rgb"] = node.create_publisher(Image, SENSOR_TOPICS["rgb"], 10)
        best_effort, reliable, incompatible = [], [], []
        node.create_subscription(Image, "/mlesam/labels", best_effort.append, qos_profile_sensor_data)
        reliable_sub = node.create_subscription(
            Image, "/mlesam/labels", reliable.append, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=incompatible.append))
        harness.bring_up(process, log)
        harness.spin_until(lambda: len(best_effort) >= 3 and incompatible, 90,
                           "labels for best effort, an incompatible-QoS event for reliable", process, log)
        camera_subscriptions = node.get_subscriptions_info_by_topic(SENSOR_TOPICS["rgb"])
        assert get_parameter(harness, "qos_overrides./mlesam/labels.publisher.reliability") == "best_effort"
    finally:
        stop(process)
    assert reliable == [] and reliable_sub.get_publisher_count() == 0  # a reliable-only subscriber does not connect
    assert [i.qos_profile.reliability for i in camera_subscriptions] == [ReliabilityPolicy.RELIABLE]
    assert {stamp_ns(m) for m in best_effort} <= set(harness.sent_rgb)  # the camera drove them


def test_a_qos_override_for_a_topic_the_node_does_not_have_is_refused_at_configure(rclpy_session, loopback_dds_env,
                                                                                  tmp_path):
    from mlesam_ros.lifecycle_client import LifecycleClient

    log = tmp_path / "node.log"
    typo = {"/mlesam/lables": {"publisher": {"reliability": "best_effort"}}}
    process = start_node(write_params(tmp_path / "params.yaml", qos_overrides=typo), loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session, period=3600.0)
        client = LifecycleClient(harness.node, "/mlesam_segmenter")
        assert not client.change("configure") and client.state() == "unconfigured"
    finally:
        stop(process)
    assert "configure failed: qos_overrides./mlesam/lables.publisher.reliability: no publisher or subscription" in \
        log.read_text()


def test_processing_diagnostics_warn_while_the_model_is_slow_and_recover(rclpy_session, loopback_dds_env, tmp_path):
    delay = tmp_path / "model_delay"
    delay.write_text("0")
    params = write_params(tmp_path / "params.yaml", diagnostics={
        "period": 0.2, "max_processing_time_ms": 1500.0, "late_frames_warn": 2, "late_frames_error": 1000})
    log = tmp_path / "node.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "test" / "ros" / "slow_model_node.py"),
                                    "--ros-args", "--params-file", str(params)], cwd=REPO_ROOT, stdout=out,
                                   stderr=subprocess.STDOUT,
                                   env={**loopback_dds_env, "MLESAM_TEST_MODEL_DELAY": str(delay)})
    try:
        harness = Harness(rclpy_session)
        harness.bring_up(process, log)
        harness.spin_until(lambda: harness.status("processing")[0] == 0 and len(harness.labels) >= 3, 90,
                           "processing OK at the model's own speed", process, log)
        delay.write_text("2.0")  # the model takes 2 s more per frame
        harness.spin_until(lambda: harness.status("processing")[0] == 1, 60, "processing WARN", process, log)
        level, warned, values = harness.status("processing")
        delay.write_text("0")
        harness.spin_until(lambda: harness.status("processing")[0] == 0, 60, "processing OK again", process, log)
        recovered = harness.status("processing")[2]
    finally:
        stop(process)
    assert "frames in a row over max_processing_time_ms 1500" in warned
    assert int(values["consecutive_late_frames"]) >= 2 and float(values["model_ms"]) > 1500
    assert recovered["consecutive_late_frames"] == "0" and int(recovered["late_frames"]) >= 2
