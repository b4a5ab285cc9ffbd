"""The segmentation node: thin rclpy wiring around `SegmentationPipeline` (Humble and Jazzy APIs only).

Subscriptions feed the synchroniser on the executor thread; complete frames go to a single-slot mailbox
that a worker thread drains (a newer frame replaces one still waiting, so latency stays bounded while
inference is busy). The worker thread also loads the model, so every torch operation runs on that one thread:
torch's CPU thread team is per calling thread, and with a second team (the model built on the executor thread)
libgomp sees more threads than cores and stops spinning between operations (`python -m benchmarks.inference_thread`
measures the cost). A timer flushes frames whose auxiliaries never came and publishes /diagnostics, also when every
sensor is silent.
"""

from __future__ import annotations

import os
import sys

# libgomp (torch's CPU thread pool) reads OMP_WAIT_POLICY once, when the imports below load torch. Its default
# lets idle pool threads spin between operators, and on a small CPU shared with the executor, DDS and other nodes
# the spinning threads take the cores those need (the launched node then lost most camera frames:
# benchmarks/ros_soak.py). So the node's default, passive, is in place before torch loads; another value of the
# `omp_wait_policy` parameter restarts the process once with it (`main`). None: torch was imported before this
# module (in-process use), the policy it loaded with is unknown.
_OMP_POLICY_AT_LOAD = None if "torch" in sys.modules else os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE").upper()

import logging
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, get_args

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import InvalidParameterTypeException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import String

from mlesam_core.config_io import ConfigError, from_dict
from mlesam_core.host_memory import retain_freed_memory
from mlesam_ros.mailbox import Mailbox
from mlesam_ros.messages import MessageKit
from mlesam_ros.outputs import (
    CLASS_NAMES_TOPIC,
    DIAGNOSTICS_TOPIC,
    LABEL_INFO_TOPIC,
    OUTPUT_TOPICS,
    OUTPUT_TYPES,
    class_names_json,
    enabled_outputs,
    output_messages,
)
from mlesam_ros.params import NODE_NAME, POINTCLOUD_TYPE, SegmentConfig, iter_parameters, nest, unknown_parameters_error
from mlesam_ros.pipeline import SegmentationPipeline, load_segmenter
from mlesam_ros.sync import SyncedFrame
from mlesam_ros.transforms import transform_matrix

FLUSH_PERIOD = 0.02  # seconds between synchroniser flushes on the node's clock
_ARRAY_TYPES = {float: Parameter.Type.DOUBLE_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
                str: Parameter.Type.STRING_ARRAY}
_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


class RosLogHandler(logging.Handler):
    """Forwards Python logging records of the library to the node's ROS logger."""

    def __init__(self, ros_logger: Any) -> None:
        """Handler writing to `ros_logger`."""
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record at the matching ROS severity."""
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self.ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self.ros_logger.warning(text)
        else:
            self.ros_logger.info(text)


class Tf2Lookup:
    """The decoder's transform lookup (`mlesam_ros.transforms.TransformLookup`) answered by a tf2_ros Buffer."""

    def __init__(self, buffer: Any) -> None:
        """Lookups in `buffer` (filled by a tf2_ros TransformListener)."""
        self.buffer = buffer

    def available(self) -> bool:
        """Whether tf2 knows any frame yet."""
        return bool(self.buffer.all_frames_as_string().strip())

    def lookup(self, target: str, source: str) -> Any:
        """4x4 target <- source at the newest common time, None when tf2 cannot connect them."""
        try:
            stamped = self.buffer.lookup_transform(target, source, Time())
        except Exception:  # noqa: BLE001 -- tf2's LookupException, ConnectivityException, ExtrapolationException
            return None
        return transform_matrix(stamped.transform.translation, stamped.transform.rotation)


class SegmentationNode(Node):
    """Synchronised multi-sensor segmentation: sensor topics in, labels/colour/confidence/routing out."""

    def __init__(self) -> None:
        """Declare parameters, load the model, wire topics, start the worker."""
        super().__init__(NODE_NAME)
        self._log_handler = RosLogHandler(self.get_logger())
        logging.getLogger("mlesam_ros").addHandler(self._log_handler)
        logging.getLogger("mlesam_ros").setLevel(logging.INFO)
        config = self._declare_config()
        self._check_overrides()
        self._apply_wait_policy(config.omp_wait_policy)
        self.kit = MessageKit.rclpy()
        self._mailbox: Mailbox[SyncedFrame] = Mailbox()
        self._publishing = threading.Lock()  # held while the worker publishes; `stop` takes it to end publishing
        self._stopping = False
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._worker = threading.Thread(target=self._work, args=(config,), name="mlesam_inference", daemon=True)
        self._worker.start()
        self._loaded.wait()  # the worker loads the model (see the module docstring)
        if self._load_error is not None:
            raise self._load_error
        self._wire(config)
        # on the steady clock, as the synchroniser's flush: with use_sim_time, ROS-time timers stop while /clock is
        # silent or after it jumps back (a bag loop)
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(FLUSH_PERIOD, self._flush, clock=steady)
        self.create_timer(config.diagnostics_period, self._publish_diagnostics, clock=steady)
        self.get_logger().info(f"segmenting {', '.join(config.modalities)} (primary {config.primary}); outputs: "
                               f"{', '.join(enabled_outputs(config.outputs))}")

    def _share_dirs(self) -> list[Path]:
        try:
            from ament_index_python.packages import get_package_share_directory
            return [Path(get_package_share_directory("mlesam_ros"))]
        except Exception:  # noqa: BLE001 - ament_index raises its own lookup errors
            # not in an ament workspace (a source checkout): the repository root is searched
            return []

    def _declare_config(self) -> SegmentConfig:
        """Declare one read-only parameter per config leaf and build the validated SegmentConfig."""
        defaults = SegmentConfig()
        first = {"modalities": list(defaults.modalities), "primary": defaults.primary}
        for name, default in first.items():
            first[name] = self._declare(name, default, SegmentConfig.__dataclass_fields__[name].metadata["doc"],
                                        type(default))
        template = from_dict(SegmentConfig, first)
        flat: dict[str, Any] = dict(first)
        for name, default, doc, hint in iter_parameters(template):
            if name in flat:
                continue
            value = self._declare(name, default, doc, hint)
            if value is not None:
                flat[name] = value
        return from_dict(SegmentConfig, nest(flat), source="parameters")

    def _check_overrides(self) -> None:
        """Refuse parameters given to the node (params file, -p) that it does not declare, as the replay refuses
        unknown keys: a typo would otherwise leave the default in place silently."""
        overrides = getattr(self, "_parameter_overrides", {})  # what rclpy parsed for this node (Humble, Jazzy)
        unknown = [name for name in overrides if not self.has_parameter(name)]
        if unknown:
            raise unknown_parameters_error(unknown, self.list_parameters([], 0).names)

    def _apply_wait_policy(self, policy: str) -> None:
        """Restart with `policy` when torch's thread pool was loaded with another (see the top of this module)."""
        wanted = policy.upper()
        if _OMP_POLICY_AT_LOAD is None:
            self.get_logger().warning(f"omp_wait_policy: torch was loaded before the node module; its OpenMP wait "
                                      f"policy stays as it was (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")
        elif wanted != _OMP_POLICY_AT_LOAD:
            raise RestartWithWaitPolicy(wanted)
        else:
            self.get_logger().info(f"OpenMP wait policy {wanted} (omp_wait_policy)")

    def _declare(self, name: str, default: Any, doc: str, hint: Any) -> Any:
        """Declare one parameter; returns its value, or None when an empty-list default stays unset."""
        constraints = ""
        if get_args(hint) and all(isinstance(a, str) for a in get_args(hint)):  # Literal choices
            constraints = "one of: " + ", ".join(get_args(hint))
        descriptor = ParameterDescriptor(description=doc, read_only=True, additional_constraints=constraints)
        if isinstance(default, tuple) and not default:
            element = next((a for a in get_args(hint) if a is not Ellipsis), float)
            value: Any = _ARRAY_TYPES[element]  # typed but unset: ROS cannot infer a type from []
        else:
            value = list(default) if isinstance(default, (tuple, list)) else default
        try:
            return self.declare_parameter(name, value, descriptor).value
        except InvalidParameterTypeException as exc:
            raise ConfigError(f"{name}: wrong parameter type ({exc})") from None

    def _wire(self, config: SegmentConfig) -> None:
        sensor_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.qos.input_depth,
                                reliability=_RELIABILITY[config.qos.input_reliability],
                                durability=DurabilityPolicy.VOLATILE)
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=config.qos.output_depth,
                                reliability=_RELIABILITY[config.qos.output_reliability])
        for sensor in config.modalities:
            type_name, topic = config.input_type(sensor), config.input_topic(sensor)
            try:
                msg_type = self.kit.resolve(type_name)
            except (ImportError, AttributeError) as exc:  # e.g. event_camera_msgs not installed on this machine
                self.get_logger().error(f"{sensor}: cannot subscribe to {topic}: message type {type_name} is not "
                                        f"importable ({exc}); {sensor} stays absent (install its message package, "
                                        f"or set sensors.{sensor}.type)")
                continue
            self.get_logger().info(f"{sensor}: {topic} ({type_name})")
            self.create_subscription(msg_type, topic, partial(self._on_message, sensor), sensor_qos)
        self.create_subscription(CameraInfo, config.camera_info_topic, self.pipeline.set_camera_info, sensor_qos)
        if "lidar" in config.modalities and config.input_type("lidar") == POINTCLOUD_TYPE:
            self._wire_transforms()
        self.publishers_by_output = {
            name: self.create_publisher(self.kit.resolve(OUTPUT_TYPES[name]), OUTPUT_TOPICS[name], output_qos)
            for name in enabled_outputs(config.outputs)}
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.class_names_pub = self.create_publisher(String, CLASS_NAMES_TOPIC, latched)
        self.class_names_pub.publish(String(data=class_names_json(self.pipeline.class_table)))
        try:  # the vision_msgs convention for label ids, where the package is installed
            label_info = self.kit.label_info(self.pipeline.class_table.names, self.kit.header(0, ""))
        except (ImportError, AttributeError, LookupError) as exc:
            self.get_logger().info(f"vision_msgs not available ({exc}): class names only on {CLASS_NAMES_TOPIC}")
        else:
            self.label_info_pub = self.create_publisher(type(label_info), LABEL_INFO_TOPIC, latched)
            self.label_info_pub.publish(label_info)

    def _wire_transforms(self) -> None:
        """camera <- LiDAR: tf2_ros where importable (/tf and /tf_static), else /tf_static into the pipeline's own
        tree where tf2_msgs is importable, else only the lidar.cam_from_lidar parameter; the log says which."""
        try:
            import tf2_ros
        except ImportError:
            tf2_ros = None
        if tf2_ros is not None:
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
            self.pipeline.set_transform_lookup(Tf2Lookup(self._tf_buffer))
            self.get_logger().info("camera <- LiDAR from tf2_ros (/tf, /tf_static); lidar.cam_from_lidar until a "
                                   "transform arrives")
            return
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.get_logger().warning("camera <- LiDAR from the lidar.cam_from_lidar parameter: neither tf2_ros nor "
                                      "tf2_msgs is importable, /tf_static is not read")
            return
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(TFMessage, "/tf_static", self.pipeline.add_transforms, latched)
        self.get_logger().info("camera <- LiDAR from /tf_static (tf2_msgs; tf2_ros is not importable); "
                               "lidar.cam_from_lidar until a transform arrives")

    def _on_message(self, sensor: str, msg: Any) -> None:
        for frame in self.pipeline.add(sensor, msg, received=time.monotonic()):
            self._post(frame)

    def _flush(self) -> None:
        for frame in self.pipeline.tick(time.monotonic()):
            self._post(frame)

    def _post(self, frame: SyncedFrame) -> None:
        """Put a frame in the mailbox, replacing one the worker has not taken yet."""
        if self._mailbox.put(frame):
            self.pipeline.frame_replaced()

    def _work(self, config: SegmentConfig) -> None:
        """The inference thread: load the model, then segment and publish each frame the mailbox hands over."""
        try:
            segmenter = load_segmenter(config, self._share_dirs())
            self.pipeline = SegmentationPipeline(config, segmenter, log=logging.getLogger("mlesam_ros.node"))
        except BaseException as exc:  # noqa: BLE001 -- raised by __init__: the node does not start
            self._load_error = exc
        self._loaded.set()
        if self._load_error is not None:
            return
        while (frame := self._mailbox.take()) is not None:
            try:
                result = self.pipeline.process(frame, now=time.monotonic())
                messages = output_messages(self.kit, self.pipeline, result)
                with self._publishing:
                    if self._stopping:  # shutting down: the context may already be gone
                        return
                    for name, msg in messages.items():
                        self.publishers_by_output[name].publish(msg)
            except Exception:  # noqa: BLE001 -- the thread must outlive any one frame; logged with its traceback
                logging.getLogger("mlesam_ros.node").exception("frame %.3f could not be processed", frame.stamp)

    def _publish_diagnostics(self) -> None:
        header = self.kit.header(self.get_clock().now().nanoseconds, "")
        entries = self.pipeline.diagnostics(time.monotonic())
        self.diagnostics_pub.publish(self.kit.diagnostic_array(entries, header))

    def stop(self) -> None:
        """Stop the worker thread (no publishing once this returns) and detach the log handler."""
        with self._publishing:
            self._stopping = True
        self._mailbox.close()
        self._worker.join(timeout=10.0)
        logging.getLogger("mlesam_ros").removeHandler(self._log_handler)


class RestartWithWaitPolicy(Exception):  # noqa: N818 - a request, not an error
    """The node must restart its process with OMP_WAIT_POLICY set to `args[0]` (before torch loads)."""


class _StopRequest:
    """Set by SIGINT/SIGTERM; the spin loop in `main` polls it.

    The handler only records the signal: an exception raised from a Python signal handler lands wherever the main
    thread is, and inside rclpy's pybind11 calls (taking a message converts it through Python) pybind11 turns it
    into "RuntimeError: Unable to convert call argument" and the node dies with a traceback.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        for ignored in (signal.SIGINT, signal.SIGTERM):  # a second signal while stopping is not an error
            signal.signal(ignored, signal.SIG_IGN)
        self.signal_name = signal.Signals(signum).name


# How long the spin loop waits for work before it looks at the stop request again: the delay of a clean stop.
_STOP_POLL_S = 0.1


def main(args: list[str] | None = None) -> int:
    """Entry point `segment_node`: spin the node until SIGINT/SIGTERM, then stop in order.

    rclpy's own signal handlers would shut the context down at once, while the inference worker may still be
    publishing a frame ("publisher's context is invalid"); here a signal ends spinning, the worker is stopped,
    then the node and the context go.
    """
    try:
        retain_freed_memory()  # before rclpy's and the worker's threads start (mlesam_core.host_memory)
    except ValueError as exc:  # a bad MLESAM_HOST_MEMORY
        print(f"[{NODE_NAME}] cannot start: {exc}", file=sys.stderr)
        return 2
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop_request = _StopRequest()
    signal.signal(signal.SIGINT, stop_request)
    signal.signal(signal.SIGTERM, stop_request)
    node = None
    code = 0
    restart = None
    executor = SingleThreadedExecutor()
    try:
        node = SegmentationNode()
        executor.add_node(node)
        while stop_request.signal_name is None and rclpy.ok():
            executor.spin_once(timeout_sec=_STOP_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RestartWithWaitPolicy as request:
        restart = request.args[0]
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        code = 2
    finally:
        if node is not None:
            node.stop()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        if rclpy.ok():
            rclpy.shutdown()
    if restart is not None:  # the same command line, torch loading with the wanted policy
        print(f"[{NODE_NAME}] restarting with OMP_WAIT_POLICY={restart} (parameter omp_wait_policy)", file=sys.stderr,
              flush=True)
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "OMP_WAIT_POLICY": restart})
    return code


if __name__ == "__main__":
    sys.exit(main())
