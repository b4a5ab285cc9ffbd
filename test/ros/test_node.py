"""The real rclpy node in its own process, driven by a publisher/subscriber in this one (DDS on loopback).

The node is a managed node: each test brings it to active over its lifecycle_msgs services (`Harness.bring_up`).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from fixtures import REPO_ROOT

pytestmark = pytest.mark.ros

H, W = 48, 64
K = np.array([[32.0, 0, 32.0], [0, 32.0, 24.0], [0, 0, 1]])
SENSOR_TOPICS = {"rgb": "/camera/image_raw", "depth": "/depth/image_raw", "event": "/test/events",
                 "lidar": "/lidar/image_raw"}


def write_params(path: Path, **changes) -> Path:
    """A params file for the tiny random-init model; `changes` replace top-level ros__parameters."""
    params = {
        "model": {"config": str(REPO_ROOT / "config" / "model" / "mlesam_tiny.yaml"), "allow_random_init": True},
        "sensors": {"event": {"topic": SENSOR_TOPICS["event"]}},  # a non-default topic, from the params file
        "classes": "deliver",  # the class table by parameter (names on /mlesam/class_names, palette)
        "diagnostics": {"period": 0.2},
        **changes,
    }
    path.write_text(yaml.safe_dump({"mlesam_segmenter": {"ros__parameters": params}}))
    return path


def start_node(params: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "mlesam_ros.node", "--ros-args", "--params-file", str(params)],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Harness:
    """Test-side node: publishes the four sensors every `period` seconds and records the node's outputs."""

    def __init__(self, rclpy, period=0.1):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image
        from std_msgs.msg import String

        from mlesam_ros.messages import MessageKit

        self.rclpy = rclpy
        self.kit = MessageKit.rclpy()
        self.node = rclpy.create_node("mlesam_test_harness")
        self.rng = np.random.default_rng(0)
        self.publishers = {s: self.node.create_publisher(Image, topic, qos_profile_sensor_data)
                           for s, topic in SENSOR_TOPICS.items()}
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera/camera_info", 10)
        self.sent_rgb: list[int] = []
        self.rgb_by_stamp: dict[int, np.ndarray] = {}  # the camera images sent (the overlay's input)
        self.labels: list = []
        self.diagnostics: list = []
        self.class_names: list = []
        self.node.create_subscription(Image, "/mlesam/labels", self.labels.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, "/mlesam/class_names", self.class_names.append, latched)
        self.node.create_timer(period, self.publish_all)

    def publish_all(self):
        if not self.publishers:
            return
        stamp = self.node.get_clock().now().nanoseconds
        header = self.kit.header(stamp, "camera")
        images = {"rgb": (self.rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8"),
                  "depth": (self.rng.uniform(2, 40, (H, W)).astype(np.float32), "32FC1"),
                  "event": (self.rng.integers(0, 3, (H, W, 2), dtype=np.uint8), "8UC2"),
                  "lidar": (self.rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8")}
        self.info_pub.publish(self.kit.camera_info(K, (H, W), header))
        for sensor, publisher in self.publishers.items():
            publisher.publish(self.kit.image(*images[sensor], header))
        self.sent_rgb.append(stamp)
        self.rgb_by_stamp[stamp] = images["rgb"][0]

    def bring_up(self, process, log, transitions=("configure", "activate")):
        """Take the node through `transitions` over its lifecycle services, as `ros2 lifecycle set` does."""
        from mlesam_ros.lifecycle_client import LifecycleClient

        client = LifecycleClient(self.node, "/mlesam_segmenter")
        while not client.ready(timeout=0.5):
            if process.poll() is not None:
                pytest.fail(f"node exited with {process.returncode} before its lifecycle services came:\n"
                            f"{log.read_text()}")
        for transition in transitions:
            if not client.change(transition):
                pytest.fail(f"{transition} refused (exit {process.poll()}):\n{log.read_text()}")
        return client

    def kill(self, sensor):
        """The sensor's publisher disappears, as when its driver process dies."""
        self.node.destroy_publisher(self.publishers.pop(sensor))

    def spin_until(self, condition, timeout, what, process, log):
        deadline = time.monotonic() + timeout
        while not condition():
            if process.poll() is not None:
                pytest.fail(f"node exited with {process.returncode} while waiting for {what}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                what = what() if callable(what) else what
                pytest.fail(f"timed out after {timeout} s waiting for {what}; node log:\n{log.read_text()}")
            self.rclpy.spin_once(self.node, timeout_sec=0.05)

    def status(self, sensor):
        """Level and message of `sensor` in the newest diagnostics."""
        from mlesam_ros.messages import diagnostic_level

        for entry in reversed(self.diagnostics):
            for status in entry.status:
                if status.hardware_id == sensor:
                    return diagnostic_level(status), status.message, {kv.key: kv.value for kv in status.values}
        return None, "", {}


@pytest.fixture
def rclpy_session(loopback_dds_env):
    import rclpy

    rclpy.init()
    yield rclpy
    rclpy.shutdown()


def test_killed_depth_sensor_labels_keep_arriving_and_diagnostics_report_it(rclpy_session, loopback_dds_env,
                                                                             tmp_path):
    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "params.yaml"), loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session)
        harness.bring_up(process, log)
        harness.spin_until(lambda: len(harness.labels) >= 5, 90, "the first labels", process, log)
        # best-effort input may lose a message under load (then that sensor is WARN for a frame): wait for OK
        harness.spin_until(lambda: all(harness.status(s)[0] == 0 for s in SENSOR_TOPICS), 30, "all sensors OK",
                           process, log)
        assert harness.status("event")[2]["topic"] == SENSOR_TOPICS["event"]  # topic from the params file

        harness.kill("depth")
        killed_at = len(harness.labels)
        harness.spin_until(lambda: harness.status("depth")[0] == 2, 30, "depth ERROR in diagnostics", process, log)
        harness.spin_until(lambda: len(harness.labels) >= killed_at + 10, 30, "labels after the kill", process, log)
        harness.spin_until(lambda: harness.status("rgb")[0] == harness.status("lidar")[0] == 0, 30,
                           "rgb and lidar OK without depth", process, log)

        level, message, values = harness.status("depth")
        assert level == 2 and message.startswith("silent for") and int(values["frames_missing"]) > 0
        after = harness.labels[killed_at:]
        assert all(m.encoding == "mono8" and (m.height, m.width) == (H, W) for m in after)
        stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in harness.labels]
        assert set(stamps) <= set(harness.sent_rgb)  # outputs carry the primary frame's header
        assert stamps == sorted(stamps)
        names = json.loads(harness.class_names[-1].data)
        assert len(names["names"]) == 25 and names["ignore_index"] == 255

        for sensor in list(harness.publishers):  # every sensor gone: diagnostics keep coming, all ERROR
            harness.kill(sensor)
        harness.spin_until(lambda: all(harness.status(s)[0] == 2 for s in SENSOR_TOPICS), 30,
                           "every sensor ERROR", process, log)
        seen = len(harness.diagnostics)
        harness.spin_until(lambda: len(harness.diagnostics) >= seen + 2, 30, "diagnostics while silent", process,
                           log)
    finally:
        stop(process)
    assert process.returncode in (0, -15)


@pytest.mark.parametrize("change, message", [
    ({"omp_wait_policy": "lazy"}, "omp_wait_policy: must be one of passive, active"),  # read-only: at start
    ({"modalities": ["rgb", "radar"]}, "modalities: unknown modality 'radar'"),  # read-only: fixes the parameters
])
def test_node_refuses_a_params_file_it_cannot_declare_naming_the_key(loopback_dds_env, tmp_path, change, message):
    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "bad.yaml", **change), loopback_dds_env, log)
    try:
        process.wait(timeout=60)
    finally:
        stop(process)
    assert process.returncode == 2
    assert message in log.read_text()


DRIVER_TOPICS = {"rgb": "/camera/image_raw/compressed", "depth": "/depth/image_raw/compressedDepth",
                 "event": "/test/events", "lidar": "/ouster/points"}


class DriverHarness(Harness):
    """Publishes what robot drivers publish: a JPEG CompressedImage, compressedDepth 16UC1, an event frame and an
    Ouster-style PointCloud2 (bytes made as the publishers make them)."""

    def __init__(self, rclpy, bad_jpeg_every=0):
        super().__init__(rclpy)
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image, PointCloud2

        for publisher in self.publishers.values():
            self.node.destroy_publisher(publisher)
        types = {"rgb": CompressedImage, "depth": CompressedImage, "event": Image, "lidar": PointCloud2}
        self.publishers = {s: self.node.create_publisher(types[s], DRIVER_TOPICS[s], qos_profile_sensor_data)
                           for s in DRIVER_TOPICS}
        self.bad_jpeg_every = bad_jpeg_every
        self.sent = 0

    def publish_all(self):
        import cv2

        from mlesam_ros.compressed import encode_compressed_depth

        if not self.publishers:
            return
        stamp = self.node.get_clock().now().nanoseconds
        header = self.kit.header(stamp, "camera_optical_frame")
        rgb = self.rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
        self.sent += 1
        data = b"\xff\xd8 not a jpeg" if self.bad_jpeg_every and self.sent % self.bad_jpeg_every == 0 else \
            jpeg.tobytes()
        millimetres = self.rng.integers(2000, 40000, (H, W)).astype(np.uint16)
        points = np.zeros(2000, dtype={"names": ["x", "y", "z", "intensity", "ring"],
                                       "formats": ["<f4", "<f4", "<f4", "<f4", "<u2"],
                                       "offsets": [0, 4, 8, 16, 26], "itemsize": 48})
        points["x"], points["y"] = self.rng.uniform(3, 30, 2000), self.rng.uniform(-8, 8, 2000)
        points["z"], points["intensity"] = self.rng.uniform(-1, 2, 2000), self.rng.uniform(0, 255, 2000)
        points["x"][::9] = np.nan
        self.info_pub.publish(self.kit.camera_info(K, (H, W), header))
        messages = {
            "rgb": self.kit.compressed_image("rgb8; jpeg compressed bgr8", data, header),
            "depth": self.kit.compressed_image(*encode_compressed_depth(millimetres, "16UC1"), header),
            "event": self.kit.image(self.rng.integers(0, 3, (H, W, 2), dtype=np.uint8), "8UC2", header),
            "lidar": self.kit.pointcloud(points, self.kit.header(stamp, "os_lidar")),
        }
        for sensor, publisher in self.publishers.items():
            publisher.publish(messages[sensor])
        self.sent_rgb.append(stamp)


def test_the_node_takes_compressed_images_compressed_depth_and_driver_point_clouds(rclpy_session, loopback_dds_env,
                                                                                    tmp_path):
    log = tmp_path / "node.log"
    sensors = {s: {"topic": t} for s, t in DRIVER_TOPICS.items()}
    sensors["lidar"]["type"] = "sensor_msgs/msg/PointCloud2"
    process = start_node(write_params(tmp_path / "params.yaml", sensors=sensors), loopback_dds_env, log)
    try:
        harness = DriverHarness(rclpy_session, bad_jpeg_every=4)
        harness.bring_up(process, log)
        harness.spin_until(lambda: len(harness.labels) >= 12, 90, "labels from driver messages", process, log)
        harness.spin_until(lambda: all(harness.status(s)[0] is not None for s in DRIVER_TOPICS), 30,
                           "diagnostics of every sensor", process, log)
    finally:
        stop(process)
    text = log.read_text()
    assert "rgb: /camera/image_raw/compressed (sensor_msgs/msg/CompressedImage)" in text
    assert "lidar: /ouster/points (sensor_msgs/msg/PointCloud2)" in text
    # no tf2 here: the node says the extrinsic comes from the parameter
    assert "camera <- LiDAR from the lidar.cam_from_lidar parameter" in text
    assert "/camera/image_raw/compressed (rgb): undecodable jpeg" in text  # bad frames logged by topic
    assert all(m.encoding == "mono8" and (m.height, m.width) == (H, W) for m in harness.labels)
    stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in harness.labels]
    bad = set(harness.sent_rgb[3::4])
    assert bad & set(stamps), "frames with an undecodable camera image are still answered"


class EventHarness(Harness):
    """rgb and depth Images, evt3 EventPackets as metavision_driver publishes them (faery-encoded stream, packets
    stamped with the ROS time of their first event), an Ouster-frame PointCloud2 and a latched /tf_static chain."""

    def __init__(self, rclpy):
        super().__init__(rclpy)
        from event_camera_msgs.msg import EventPacket
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2
        from tf2_msgs.msg import TFMessage

        for sensor in ("event", "lidar"):
            self.node.destroy_publisher(self.publishers.pop(sensor))
        self.event_pub = self.node.create_publisher(EventPacket, "/event_camera/events", qos_profile_sensor_data)
        self.cloud_pub = self.node.create_publisher(PointCloud2, "/ouster/points", qos_profile_sensor_data)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_pub = self.node.create_publisher(TFMessage, "/tf_static", latched)
        optical_in_link = np.array([[0, 0, 1, 0], [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
        tf_pub.publish(self.kit.tf_message([("base_link", "camera_link", np.eye(4)),
                                            ("camera_link", "camera", optical_in_link),  # the images' frame
                                            ("base_link", "os_lidar", np.eye(4))]))
        self.base_ns = None
        self.last_ns = None
        self.packets = 0
        self.cut_every = 0  # set by the test: every n-th packet cut mid-word

    def publish_all(self):
        from mlesam_ros.events import encode_evt3, split_evt3

        super().publish_all()
        if not self.publishers:
            return
        now = self.sent_rgb[-1]
        if self.base_ns is None:
            self.base_ns, self.last_ns = now - 50_000_000, now - 50_000_000
        n = 3000
        t_us = np.sort(self.rng.integers((self.last_ns - self.base_ns) // 1000 + 1,
                                         (now - self.base_ns) // 1000 + 1, n)).astype(np.uint64) + 1_000_000
        x = self.rng.integers(0, W, n).astype(np.uint16)
        y = self.rng.integers(0, H, n).astype(np.uint16)
        stream = encode_evt3(t_us, x, y, self.rng.integers(0, 2, n), (H, W), continuation=True)
        for data, first in split_evt3(stream, np.array([0, n // 2])):
            stamp = self.base_ns + (int(t_us[first]) - 1_000_000) * 1000
            self.packets += 1
            data = data[:-1] if self.cut_every and self.packets % self.cut_every == 0 else data
            self.event_pub.publish(self.kit.event_packet("evt3", data, (H, W), self.kit.header(stamp, "event")))
        self.last_ns = now
        points = np.zeros(500, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
        points["x"], points["y"] = self.rng.uniform(3, 30, 500), self.rng.uniform(-8, 8, 500)
        points["z"], points["intensity"] = self.rng.uniform(-1, 2, 500), self.rng.uniform(0, 255, 500)
        self.cloud_pub.publish(self.kit.pointcloud(points, self.kit.header(now, "os_lidar")))


def test_the_node_takes_evt3_event_packets_and_projects_clouds_with_tf_static(rclpy_session, loopback_dds_env,
                                                                              ros_message_packages, tmp_path):
    log = tmp_path / "node.log"
    sensors = {"event": {"topic": "/event_camera/events", "type": "event_camera_msgs/msg/EventPacket"},
               "lidar": {"topic": "/ouster/points", "type": "sensor_msgs/msg/PointCloud2"}}
    env = {**loopback_dds_env, **ros_message_packages}
    process = start_node(write_params(tmp_path / "params.yaml", sensors=sensors), env, log)
    try:
        harness = EventHarness(rclpy_session)
        harness.bring_up(process, log)
        harness.spin_until(lambda: len(harness.labels) >= 10, 90, "labels", process, log)
        harness.spin_until(lambda: all(harness.status(s)[0] == 0 for s in SENSOR_TOPICS), 30,
                           "every sensor OK (events and cloud included)", process, log)
        harness.cut_every = 10
        harness.spin_until(lambda: "cut mid-word" in log.read_text(), 30, "a cut packet logged", process, log)
        answered = len(harness.labels)
        harness.spin_until(lambda: len(harness.labels) >= answered + 5, 30, "labels after cut packets", process,
                           log)
    finally:
        stop(process)
    text = log.read_text()
    assert "event: /event_camera/events (event_camera_msgs/msg/EventPacket)" in text
    assert "camera <- LiDAR from /tf_static (tf2_msgs" in text
    assert "LiDAR extrinsic from transforms (camera <- os_lidar)" in text
    assert "/event_camera/events (event): evt3 packet of" in text


def stock_environment(env):
    """`env` as a shell without OpenMP settings would have it (test/conftest.py sets them for this process)."""
    return {k: v for k, v in env.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}


def wait_for_log(process, log, pattern, timeout):
    deadline = time.monotonic() + timeout
    while not re.search(pattern, log.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} in the node log (exit {process.poll()}):\n{log.read_text()}")
        time.sleep(0.2)


@pytest.mark.parametrize("environment, parameter, spin_count", [
    (None, None, "0"),  # a stock shell: passive, set by the node itself before torch loads
    ("PASSIVE", "active", "30000000000"),  # the parameter wins over the environment (one restart)
])
def test_node_chooses_its_openmp_wait_policy_before_torch_loads(loopback_dds_env, tmp_path, environment, parameter,
                                                                spin_count):
    env = {**stock_environment(loopback_dds_env), "OMP_DISPLAY_ENV": "VERBOSE"}  # libgomp prints what it took
    if environment:
        env["OMP_WAIT_POLICY"] = environment
    changes = {"omp_wait_policy": parameter} if parameter else {}
    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "params.yaml", **changes), env, log)
    try:
        wait_for_log(process, log, r"unconfigured: configure and activate it", 120)
    finally:
        stop(process)
    spin_counts = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", log.read_text())
    assert spin_counts and spin_counts[-1] == spin_count  # libgomp's spin count: 0 = passive, 3e10 = active
    assert f"OpenMP wait policy {(parameter or 'passive').upper()}" in log.read_text()


def test_node_refuses_parameters_it_does_not_declare_naming_them(loopback_dds_env, tmp_path):
    log = tmp_path / "node.log"
    params = write_params(tmp_path / "typos.yaml", primay="depth", sensor={"rgb": {"topic": "/front/image"}})
    process = start_node(params, loopback_dds_env, log)
    try:
        process.wait(timeout=60)
    finally:
        stop(process)
    text = log.read_text()
    assert process.returncode == 2
    assert "[mlesam_segmenter]: cannot start: primay: unknown parameters of mlesam_segmenter" in text
    assert "primay (did you mean primary?)" in text and "sensor.rgb.topic (did you mean sensors.rgb.topic?)" in text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_frames_are_inferred_stops_the_node_cleanly(rclpy_session, loopback_dds_env, tmp_path,
                                                                   signum):
    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "params.yaml"), stock_environment(loopback_dds_env), log)
    try:
        harness = Harness(rclpy_session, period=0.03)  # faster than inference: the worker is always busy
        harness.bring_up(process, log)
        harness.spin_until(lambda: len(harness.labels) >= 10, 120, "labels", process, log)
        process.send_signal(signum)
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            rclpy_session.spin_once(harness.node, timeout_sec=0.05)
    finally:
        stop(process)
    text = log.read_text()
    assert process.returncode == 0, text
    for problem in ("Traceback", "RCLError", "context is invalid", "ERROR"):
        assert problem not in text


def test_the_stop_signal_handler_records_the_signal_and_raises_nothing():
    # Raised from a handler, an exception lands wherever the main thread is; inside rclpy's take_message pybind11
    # turned it into "RuntimeError: Unable to convert call argument" and the node died with a traceback.
    import os

    from mlesam_ros.node import _StopRequest

    request = _StopRequest()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, request)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs at the next bytecode boundary of the main thread
            if request.signal_name is not None:
                break
            time.sleep(0.01)
        assert request.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a second signal while stopping is ignored
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_sim_time_bag_loop_answers_every_camera_frame_once_and_uses_every_sensor_after_the_jump(
        rclpy_session, loopback_dds_env, tmp_path):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    params = write_params(tmp_path / "params.yaml", use_sim_time=True,  # QoS by ROS 2's own override parameters
                          qos_overrides={**{topic: {"subscription": {"reliability": "reliable", "depth": 10}}
                                            for topic in SENSOR_TOPICS.values()},  # one dict each: no YAML aliases
                                         "/mlesam/labels": {"publisher": {"depth": 50}}})
    log = tmp_path / "node.log"
    process = start_node(params, loopback_dds_env, log)
    try:
        harness = Harness(rclpy_session, period=3600.0)  # frames are sent below, not by the timer
        node = harness.node
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        clock_pub = node.create_publisher(Clock, "/clock", 10)
        publishers = {s: node.create_publisher(Image, topic, reliable) for s, topic in SENSOR_TOPICS.items()}
        labels = []
        node.create_subscription(Image, "/mlesam/labels", labels.append, reliable)
        harness.bring_up(process, log)
        harness.spin_until(lambda: all(p.get_subscription_count() for p in publishers.values()), 30,
                           "the node's subscriptions", process, log)
        first = [1_000_000_000_000 + i * 100_000_000 for i in range(12)]
        stamps = first + [s - 10_000_000_000 for s in first]  # `ros2 bag play --loop --clock`: 10 s back
        for stamp in stamps:
            clock_pub.publish(Clock(clock=harness.kit.header(stamp, "").stamp))
            header = harness.kit.header(stamp, "camera")
            harness.info_pub.publish(harness.kit.camera_info(K, (H, W), header))
            images = {"depth": (harness.rng.uniform(2, 40, (H, W)).astype(np.float32), "32FC1"),
                      "event": (harness.rng.integers(0, 3, (H, W, 2), dtype=np.uint8), "8UC2"),
                      "lidar": (harness.rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8"),
                      "rgb": (harness.rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8")}
            for sensor in ("depth", "event", "lidar", "rgb"):  # the auxiliaries logged before the camera
                publishers[sensor].publish(harness.kit.image(*images[sensor], header))
            end = time.monotonic() + 0.25
            while time.monotonic() < end:
                rclpy_session.spin_once(node, timeout_sec=0.02)

        def replaced():
            return int(harness.status("inference")[2].get("frames_replaced_while_busy", 0))

        harness.spin_until(lambda: len(labels) + replaced() >= len(stamps), 120,
                           lambda: f"every frame answered ({len(labels)} labels, {replaced()} replaced of "
                                   f"{len(stamps)}: {[m.header.stamp.sec for m in labels]})", process, log)
        harness.spin_until(lambda: int(harness.status("rgb")[2].get("frames_ok", -1)) == len(labels), 30,
                           "diagnostics of the last frame", process, log)
    finally:
        stop(process)
    answered = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for m in labels]
    assert len(answered) == len(set(answered)) and answered == [s for s in stamps if s in set(answered)]
    assert len(answered) + replaced() == len(stamps)
    assert any(s < answered[0] for s in answered)  # frames after the jump were answered
    for sensor in SENSOR_TOPICS:  # every sensor matched in every segmented frame, also right after the jump
        values = harness.status(sensor)[2]
        assert int(values["frames_ok"]) == len(answered), (sensor, values)
    assert log.read_text().count("restarting synchronisation") == 1
