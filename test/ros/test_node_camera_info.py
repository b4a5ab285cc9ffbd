"""The real node in its own process with a camera_info that disagrees with the images (DDS on loopback)."""

from __future__ import annotations

import numpy as np
import pytest
from ros import test_node
from ros.test_node import Harness, start_node, stop, write_params

pytestmark = pytest.mark.ros
rclpy_session = test_node.rclpy_session  # the fixture: rclpy initialised for this process

SIZE = (64, 64)  # what the cameras send
INFO_SIZE = (480, 640)  # what camera_info says: a stale latched one, or a driver reconfigured since
INFO_K = np.array([[320.0, 0, 320.0], [0, 320.0, 240.0], [0, 0, 1]])


class StaleInfoHarness(Harness):
    """Publishes the four sensors at SIZE with a camera_info of INFO_SIZE."""

    def publish_all(self):
        if not self.publishers:
            return
        stamp = self.node.get_clock().now().nanoseconds
        header = self.kit.header(stamp, "camera")
        images = {"rgb": (self.rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), "rgb8"),
                  "depth": (self.rng.uniform(2, 40, SIZE).astype(np.float32), "32FC1"),
                  "event": (self.rng.integers(0, 3, (*SIZE, 2), dtype=np.uint8), "8UC2"),
                  "lidar": (self.rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8), "rgb8")}
        self.info_pub.publish(self.kit.camera_info(INFO_K, INFO_SIZE, header))
        for sensor, publisher in self.publishers.items():
            publisher.publish(self.kit.image(*images[sensor], header))
        self.sent_rgb.append(stamp)


def test_frames_are_labelled_at_the_images_size_whatever_camera_info_says(rclpy_session, loopback_dds_env,
                                                                          tmp_path):
    log = tmp_path / "node.log"
    process = start_node(write_params(tmp_path / "params.yaml"), loopback_dds_env, log)
    try:
        harness = StaleInfoHarness(rclpy_session)
        harness.bring_up(process, log)
        harness.spin_until(lambda: len(harness.labels) >= 20, 120, "20 labelled frames", process, log)
        harness.spin_until(lambda: harness.status("depth")[0] == 1, 30, "depth WARN in diagnostics", process, log)
    finally:
        stop(process)
    assert all((m.height, m.width) == SIZE for m in harness.labels)
    level, message, values = harness.status("depth")
    assert "camera_info on /camera/camera_info is 640x480, another aspect ratio than the frame's 64x64" in message
    assert int(values["frames_invalid"]) > 0
    text = log.read_text()
    report = ("camera_info on /camera/camera_info is 640x480, the images 64x64 (the driving rgb image): another "
              "aspect ratio: its camera model is not used")
    assert text.count(report) == 1, text
