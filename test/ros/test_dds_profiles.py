"""The shipped Fast DDS profiles load in real rclpy processes and carry 1920x1080 images between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
PAIR = """
import json, sys, time
import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

role, count, height, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rclpy.init()
node = rclpy.create_node(f"mlesam_dds_{role}")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
if role == "sub":
    got = []
    node.create_subscription(Image, "/mlesam_dds_check", lambda m: got.append([m.height, m.width, len(m.data)]), qos)
    end = time.monotonic() + 90
    while len(got) < count and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps(got), flush=True)
else:
    pub = node.create_publisher(Image, "/mlesam_dds_check", qos)
    end = time.monotonic() + 60
    while pub.get_subscription_count() == 0 and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    image = Image(height=height, width=width, encoding="rgb8", step=width * 3,
                  data=np.zeros(height * width * 3, np.uint8).tobytes())
    for _ in range(count):
        pub.publish(image)
        time.sleep(0.1)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
rclpy.shutdown()
"""


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("fastrtps_*")} if Path("/dev/shm").is_dir() else set()


@pytest.mark.parametrize("profile", ["fastdds_localhost.xml", "fastdds_same_host.xml"])
def test_profile_loads_and_carries_full_hd_images_between_processes(loopback_dds_env, tmp_path, profile):
    env = {**loopback_dds_env, "FASTRTPS_DEFAULT_PROFILES_FILE": str(REPO / "config" / profile)}
    before = shm_segments()
    count, height, width = 5, 1080, 1920
    with (tmp_path / "sub.err").open("w") as sub_err, (tmp_path / "pub.err").open("w") as pub_err:
        sub = subprocess.Popen([sys.executable, "-c", PAIR, "sub", str(count), str(height), str(width)], env=env,
                               stdout=subprocess.PIPE, stderr=sub_err, text=True)
        pub = subprocess.Popen([sys.executable, "-c", PAIR, "pub", str(count), str(height), str(width)], env=env,
                               stderr=pub_err)
        try:
            time.sleep(3)  # both participants are up: their segments exist while they run
            during = shm_segments()
            out, _ = sub.communicate(timeout=120)
            pub.wait(timeout=60)
        finally:
            for process in (sub, pub):
                if process.poll() is None:
                    process.kill()
    errors = (tmp_path / "sub.err").read_text() + (tmp_path / "pub.err").read_text()
    assert "XMLPARSER" not in errors and "Error" not in errors, errors  # Fast DDS took the profile as written
    assert json.loads(out) == [[height, width, height * width * 3]] * count
    if profile == "fastdds_same_host.xml" and os.path.isdir("/dev/shm"):
        assert during - before  # the shared-memory transport made its segments
