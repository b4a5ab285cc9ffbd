"""Flood/soak of the launched segmentation node: four sensors at 10 Hz for a minute, from a stock environment.

    python -m benchmarks.ros_soak [--size H W] [--seconds 60] [--rate 10] [--launcher process|launch]
        [--prefix build/colcon_ws/install] [--dds localhost|same_host] [--lifecycle-cpu] [--out FILE]

The node runs in its own process as `ros2 launch` starts it, from an environment without OpenMP settings (no
OMP_WAIT_POLICY, OMP_NUM_THREADS or GOMP_SPINCOUNT: what a stock shell has; the node must choose them itself):

- `--launcher process` (default): the `segment_node` command line that launch_ros builds (`--ros-args -r
  __node:=mlesam_segmenter --params-file FILE`), here as `python -m mlesam_ros.node`, configured and activated
  over its lifecycle services as the launch file does;
- `--launcher launch`: the real `launch` library runs the installed `segment.launch.py` (`params_file:=FILE`), as
  `ros2 launch mlesam_ros segment.launch.py` does. It needs launch/launch_ros in the interpreter running this
  benchmark and a colcon install of the package: `.venv/bin/python tools/ros_tools_venv.py --launch-src ...
  --launch-ros-src ...` (checkouts of ros2/launch and ros2/launch_ros, not on the package registry), `make
  colcon-build`, then `.venv-ros-tools/bin/python -m benchmarks.ros_soak --launcher launch`.

This process publishes rgb8 camera, 32FC1 depth, 2-channel event and 3-channel LiDAR images of `--size` plus
camera_info at `--rate` with sensor-data QoS (best effort, as drivers and `ros2 bag play` do), and records: labels
per camera frame (each once?), latency from the camera's header stamp to the labels' arrival here (the node's
publish plus loopback delivery), the node's resident memory every second, per-sensor messages the node received
(its /diagnostics) against those sent, UDP receive-buffer errors of the machine (/proc/net/snmp; machine-wide,
so other processes' drops count too) and the machine's load. The tiny model on seeded random weights.

`--lifecycle-cpu`: the CPU the node's process takes (user + system time of all its threads, from /proc) while the
sensors keep publishing, `--seconds` in each lifecycle state in turn: active, inactive (deactivated), unconfigured
(cleaned up: the model released), and the labels it publishes in each (`ros_lifecycle_cpu_<H>x<W>_<dds>.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks import REPO_ROOT, RESULTS_DIR, command_line
from mlesam_ros.lifecycle_client import LifecycleClient

NODE_NAME = "mlesam_segmenter"
TOPICS = {"rgb": "/camera/image_raw", "depth": "/depth/image_raw", "event": "/event/image_raw",
          "lidar": "/lidar/image_raw"}
DDS_PROFILES = {"localhost": "fastdds_localhost.xml", "same_host": "fastdds_same_host.xml"}
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")
WARM_UP_SECONDS = 10.0  # model load excluded; RSS and rates judged after this much of publishing


def stock_environment(dds_profile: Path) -> dict[str, str]:
    """This environment without OpenMP settings, DDS on loopback (its own domain)."""
    env = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES and k != "ROS_LOCALHOST_ONLY"}
    env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(150 + os.getpid() % 80),
                "FASTRTPS_DEFAULT_PROFILES_FILE": str(dds_profile), "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"})
    return env


def write_params(path: Path) -> Path:
    params = {"model": {"config": str(REPO_ROOT / "config" / "model" / "mlesam_tiny.yaml"), "allow_random_init": True},
              "classes": "deliver", "diagnostics": {"period": 1.0}}
    path.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": params}}))
    return path


LAUNCH_SCRIPT = """
import sys
from launch import LaunchDescription, LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from ament_index_python.packages import get_package_share_directory

source = PythonLaunchDescriptionSource(get_package_share_directory("mlesam_ros") + "/launch/segment.launch.py")
service = LaunchService(argv=sys.argv[1:])
service.include_launch_description(LaunchDescription([
    IncludeLaunchDescription(source, launch_arguments=[("params_file", sys.argv[1])])]))
sys.exit(service.run())
"""


def start_node(launcher: str, params: Path, env: dict[str, str], prefix: Path | None, log: Path) -> subprocess.Popen:
    """The node (or the launch service that starts it) in its own process."""
    if launcher == "process":
        command = [sys.executable, "-m", "mlesam_ros.node", "--ros-args", "-r", f"__node:={NODE_NAME}",
                   "--params-file", str(params)]
    else:
        if prefix is None or not (prefix / "mlesam_ros").is_dir():
            raise SystemExit(f"--launcher launch needs --prefix with a colcon install of mlesam_ros, got {prefix}")
        package = prefix / "mlesam_ros"
        site = next(package.glob("lib/python*/site-packages"))
        env = {**env, "AMENT_PREFIX_PATH": str(package), "PYTHONPATH": os.pathsep.join(
            [str(site), *filter(None, [env.get("PYTHONPATH")])])}
        command = [sys.executable, "-c", LAUNCH_SCRIPT, str(params)]
    with log.open("w") as out:  # its own process group: Ctrl-C signals the whole group (see `run`)
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def node_pid(root: int) -> int | None:
    """The process that runs the node (the launcher's child under `launch`)."""
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "segment_node" in cmdline or "mlesam_ros.node" in cmdline:
            return pid
    return None


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bring_up(launcher: str, client: Any, process: subprocess.Popen, log: Path, spin: Any) -> None:
    """The node active: configured and activated here (`process`), or by the launch file (`launch`)."""
    if launcher == "process":
        for transition in ("configure", "activate"):
            if not client.change(transition):
                raise SystemExit(f"{transition} refused:\n{log.read_text()}")
        return
    deadline = time.monotonic() + 180
    while client.state() != "active":
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the launch did not activate the node (exit {process.poll()}):\n{log.read_text()}")
        spin(1.0)


def udp_receive_buffer_errors() -> int:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


class Harness:
    """Publishes the four sensors and records labels and diagnostics."""

    def __init__(self, rclpy: Any, size: tuple[int, int], rate: float) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image

        from mlesam_ros.messages import MessageKit

        self.kit = MessageKit.rclpy()
        self.node = rclpy.create_node("mlesam_soak_harness")
        self.size = size
        h, w = size
        rng = np.random.default_rng(0)
        self.images = [{"rgb": (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "rgb8"),
                        "depth": (rng.uniform(2, 40, (h, w)).astype(np.float32), "32FC1"),
                        "event": (rng.integers(0, 3, (h, w, 2), dtype=np.uint8), "8UC2"),
                        "lidar": (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "rgb8")} for _ in range(4)]
        self.k = np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1]], dtype=np.float64)
        self.publishers = {s: self.node.create_publisher(Image, t, qos_profile_sensor_data) for s, t in TOPICS.items()}
        self.info_pub = self.node.create_publisher(CameraInfo, "/camera/camera_info", qos_profile_sensor_data)
        self.sent: list[int] = []
        self.publishing = False
        self.labels: list[tuple[int, float]] = []  # (header stamp ns, arrival ns)
        self.diagnostics: list[Any] = []
        reliable = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, "/mlesam/labels", self._on_labels, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.node.create_timer(1.0 / rate, self._publish)

    def _on_labels(self, msg: Any) -> None:
        self.labels.append((msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, time.time_ns()))

    def _publish(self) -> None:
        if not self.publishing:
            return
        stamp = time.time_ns()
        header = self.kit.header(stamp, "camera")
        images = self.images[len(self.sent) % len(self.images)]
        self.info_pub.publish(self.kit.camera_info(self.k, self.size, header))
        for sensor in ("depth", "event", "lidar", "rgb"):
            self.publishers[sensor].publish(self.kit.image(*images[sensor], header))
        self.sent.append(stamp)

    def spin(self, seconds: float) -> None:
        """Spin (publish, receive) for `seconds`."""
        import rclpy

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.01)

    def values(self, hardware_id: str) -> dict[str, str]:
        for entry in reversed(self.diagnostics):
            for status in entry.status:
                if status.hardware_id == hardware_id:
                    return {kv.key: kv.value for kv in status.values}
        return {}


def percentiles(values: list[float]) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return {"p50": None, "p95": None, "max": None}
    return {"p50": round(float(np.percentile(array, 50)), 2), "p95": round(float(np.percentile(array, 95)), 2),
            "max": round(float(array.max()), 2)}


def start_session(args: argparse.Namespace, launcher: str, prefix: Path | None,
                  work_prefix: str) -> tuple[subprocess.Popen, Path, Harness]:
    """The node started by `launcher` in the stock DDS environment of `args.dds`, its log, and the harness that
    publishes the sensors to it (rclpy initialised here)."""
    import rclpy

    env = stock_environment(REPO_ROOT / "config" / DDS_PROFILES[args.dds])
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                                           "FASTRTPS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")})
    work = Path(tempfile.mkdtemp(prefix=work_prefix))
    log = work / "node.log"
    process = start_node(launcher, write_params(work / "params.yaml"), env, prefix, log)
    rclpy.init()
    return process, log, Harness(rclpy, (args.size[0], args.size[1]), args.rate)


def stop_session(process: subprocess.Popen, harness: Harness, process_group: bool) -> None:
    """SIGINT to the node (to its whole process group, as Ctrl-C in a terminal, when launch runs it), then rclpy
    down."""
    import rclpy

    if process_group:
        # Ctrl-C in a terminal: SIGINT to the foreground process group (launch then leaves the node to the SIGINT it
        # got itself, and escalates to SIGTERM only when the node has not exited `sigterm_timeout` later)
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    harness.node.destroy_node()
    rclpy.shutdown()


def log_errors(log: Path) -> list[str]:
    """The node log's lines that report an error."""
    return [line for line in log.read_text().splitlines()
            if any(word in line for word in ("Traceback", "RCLError", "ERROR", "FATAL"))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import rclpy

    process, log, harness = start_session(args, args.launcher, args.prefix, "mlesam_soak_")
    try:
        bring_up(args.launcher, LifecycleClient(harness.node, f"/{NODE_NAME}"), process, log, harness.spin)
        pid = node_pid(process.pid)
        drops_before = udp_receive_buffer_errors()
        start = time.monotonic()
        harness.publishing = True
        rss, load = [], []
        next_sample = start
        while time.monotonic() - start < args.seconds:
            rclpy.spin_once(harness.node, timeout_sec=0.01)
            if time.monotonic() >= next_sample:
                rss.append((round(time.monotonic() - start, 1), rss_mb(pid) if pid else None))
                load.append(round(os.getloadavg()[0], 2))
                next_sample += 1.0
        harness.publishing = False
        end = time.monotonic() + 3.0  # the last frames and a diagnostics message come in
        while time.monotonic() < end:
            rclpy.spin_once(harness.node, timeout_sec=0.05)
        drops = udp_receive_buffer_errors() - drops_before
    finally:
        stop_session(process, harness, process_group=True)
    answered = [stamp for stamp, _ in harness.labels]
    sent = set(harness.sent)
    latency = [(arrival - stamp) / 1e6 for stamp, arrival in harness.labels if stamp in sent]
    warm = [m for t, m in rss if t >= WARM_UP_SECONDS and m is not None]
    slope = float(np.polyfit([t for t, m in rss if t >= WARM_UP_SECONDS and m is not None], warm, 1)[0]) * 60 \
        if len(warm) >= 3 else None
    received = {s: harness.values(s).get("messages_received") for s in TOPICS}
    inference = harness.values("inference")
    frames = len(harness.sent)
    report = {
        "camera_frames_sent": frames,
        "labels_received": len(answered),
        "answered_fraction": round(len(set(answered) & sent) / frames, 4) if frames else None,
        "duplicate_labels": len(answered) - len(set(answered)),
        "labels_in_order": answered == sorted(answered),
        "latency_stamp_to_labels_ms": percentiles(latency),
        "frames_replaced_while_busy": inference.get("frames_replaced_while_busy"),
        "model_latency_p50_ms": inference.get("latency_p50_ms"),
        "messages_received_by_node": received,
        "messages_sent_per_sensor": frames,
        "udp_receive_buffer_errors_machine_wide": drops,
        "rss_mb": {"samples_t_s_mb": rss, "after_warm_up_first": warm[0] if warm else None,
                   "after_warm_up_last": warm[-1] if warm else None,
                   "slope_mb_per_min_after_warm_up": None if slope is None else round(slope, 2)},
        "load_average_1min_during": load,
        "exit_code_after_sigint": process.returncode,  # the node's, or the launch service's with --launcher launch
        "log_errors": log_errors(log),
        "node_log_tail": log.read_text().splitlines()[-15:],
    }
    return report


LIFECYCLE_PHASES = (("active", None), ("inactive", "deactivate"), ("unconfigured", "cleanup"))


def lifecycle_cpu(args: argparse.Namespace) -> dict[str, Any]:
    """CPU of the node's process and labels published in each lifecycle state, sensors publishing throughout."""
    process, log, harness = start_session(args, "process", None, "mlesam_lifecycle_cpu_")
    phases: dict[str, Any] = {}
    try:
        client = LifecycleClient(harness.node, f"/{NODE_NAME}")
        bring_up("process", client, process, log, harness.spin)
        harness.publishing = True
        harness.spin(WARM_UP_SECONDS)
        for state, transition in LIFECYCLE_PHASES:
            if transition is not None and not client.change(transition):
                raise SystemExit(f"{transition} refused:\n{log.read_text()}")
            harness.spin(2.0)  # the transition and the frames in flight settle
            labels, cpu, start = len(harness.labels), cpu_seconds(process.pid), time.monotonic()
            harness.spin(args.seconds)
            wall = time.monotonic() - start
            phases[state] = {"state_reported": client.state(), "seconds": round(wall, 1),
                             "cpu_percent_of_one_core": round(100.0 * (cpu_seconds(process.pid) - cpu) / wall, 1),
                             "labels_published": len(harness.labels) - labels}
        harness.publishing = False
    finally:
        stop_session(process, harness, process_group=False)
    return {"phases": phases, "camera_frames_sent": len(harness.sent), "exit_code_after_sigint": process.returncode,
            "log_errors": log_errors(log)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ros_soak", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--launcher", choices=("process", "launch"), default="process")
    parser.add_argument("--prefix", type=Path, default=REPO_ROOT / "build" / "colcon_ws" / "install",
                        help="colcon install prefix (--launcher launch)")
    parser.add_argument("--dds", choices=tuple(DDS_PROFILES), default="localhost",
                        help="Fast DDS profile: the tests' loopback UDP one, or the same-host shared-memory one")
    parser.add_argument("--lifecycle-cpu", action="store_true",
                        help="CPU of the node in each lifecycle state (active, inactive, unconfigured), --seconds each")
    parser.add_argument("--out", type=Path, help="JSON report (default: benchmarks/results/ros_soak_<...>.json)")
    args = parser.parse_args(argv)
    h, w = args.size
    if args.lifecycle_cpu:
        out = args.out or RESULTS_DIR / f"ros_lifecycle_cpu_{h}x{w}_{args.dds}.json"
        report = {"command": command_line(), "python": sys.version.split()[0],
                  "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count(),
                  "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                  "settings": {"size": [h, w], "seconds_per_state": args.seconds, "rate_hz": args.rate,
                               "dds_profile": DDS_PROFILES[args.dds],
                               "model": "config/model/mlesam_tiny.yaml (random)"},
                  **lifecycle_cpu(args), "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["phases"]))
        print(f"wrote {out}")
        return
    out = args.out or RESULTS_DIR / f"ros_soak_{h}x{w}_{args.launcher}_{args.dds}.json"
    header = {"command": command_line(), "python": sys.version.split()[0],
              "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu_count": os.cpu_count(),
              "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
              "settings": {"size": [h, w], "seconds": args.seconds, "rate_hz": args.rate, "launcher": args.launcher,
                           "dds_profile": DDS_PROFILES[args.dds], "model": "config/model/mlesam_tiny.yaml (random)",
                           "environment": "no OMP_WAIT_POLICY/OMP_NUM_THREADS/GOMP_SPINCOUNT (stock)"}}
    report = {**header, **run(args)}
    target_met = report["answered_fraction"] is not None and report["answered_fraction"] >= 0.95
    report["targets"] = {"answered_95pct_at_128": {
        "status": ("met" if target_met else "missed") if (h, w) == (128, 128) else "n/a (target is for 128x128)",
        "figure": f"{report['answered_fraction']} of camera frames answered"}}
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("answered_fraction", "latency_stamp_to_labels_ms",
                                             "frames_replaced_while_busy", "messages_received_by_node",
                                             "udp_receive_buffer_errors_machine_wide", "rss_mb",
                                             "load_average_at_start", "load_average_at_end")}, default=str)[:2000])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
