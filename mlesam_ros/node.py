"""The segmentation node: a ROS 2 managed (lifecycle) node, thin rclpy wiring around `SegmentationPipeline`.

Lifecycle (rclpy.lifecycle, driven by `ros2 lifecycle set`, launch_ros or a system manager):

- unconfigured: parameters declared, nothing loaded; every parameter except the read-only ones can be set;
- configure: the parameters are validated into a `SegmentConfig` (an invalid one: FAILURE naming the key), the
  model is loaded and warmed up on the inference thread (a model that does not load: ERROR, then error
  processing releases what was built and the node is unconfigured again, the reason logged and on /diagnostics),
  the publishers are created (lifecycle publishers: silent until active);
- activate: subscriptions and timers are created, the publishers enabled;
- deactivate: subscriptions and timers are destroyed (no inference, no timer: an idle process);
- cleanup / shutdown: the model is released; a later configure may load another model (set model.* first).

Subscriptions feed the synchroniser on the executor thread; complete frames go to a single-slot mailbox that a
worker thread drains (a newer frame replaces one still waiting, so latency stays bounded while inference is
busy). The worker thread also loads the model, so every torch operation runs on that one thread: torch's CPU
thread team is per calling thread, and with a second team (the model built on the executor thread) libgomp sees
more threads than cores and stops spinning between operations (`python -m benchmarks.inference_thread` measures
the cost). An output is computed only while it has subscribers (labels always). Parameters in
`params.LIVE_PARAMETERS` change while the node runs; the others are read at configure.
"""

from __future__ import annotations

import os
import sys

# libgomp (torch's CPU thread pool) reads OMP_WAIT_POLICY once, when torch loads. Its default lets idle pool
# threads spin between operators, and on a small CPU shared with the executor, DDS and other nodes the spinning
# threads take the cores those need (the launched node then lost most camera frames: benchmarks/ros_soak.py). So
# the node's default, passive, is in place before torch loads; another value of the `omp_wait_policy` parameter
# restarts the process once with it (`main`). None: torch was imported before this module (in-process use), the
# policy it loaded with is unknown.
_OMP_POLICY_AT_LOAD = None if "torch" in sys.modules else os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE").upper()

import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from functools import partial, wraps
from pathlib import Path
from typing import Any, get_args, get_type_hints

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import String

from mlesam_core.config_io import ConfigError, from_dict
from mlesam_core.host_memory import retain_freed_memory
from mlesam_ros.health import ERROR, OK, DiagnosticEntry, ProcessingMonitor
from mlesam_ros.mailbox import Mailbox
from mlesam_ros.messages import MessageKit, stamp_to_ns
from mlesam_ros.outputs import (
    ALWAYS_COMPUTED,
    CAMERA_INFO_TOPIC,
    CLASS_NAMES_TOPIC,
    DIAGNOSTICS_TOPIC,
    LABEL_INFO_TOPIC,
    OUTPUT_TOPICS,
    OUTPUT_TYPES,
    TIMING_TOPIC,
    OutputCounts,
    class_names_json,
    enabled_outputs,
    output_messages,
    restamped_camera_info,
    timing_message,
)
from mlesam_ros.params import (
    NODE_NAME,
    POINTCLOUD_TYPE,
    QOS_OVERRIDES,
    SegmentConfig,
    config_from_parameters,
    iter_parameters,
    parameter_change,
    unknown_parameters_error,
)
from mlesam_ros.pipeline import SegmentationPipeline, load_segmenter
from mlesam_ros.sync import SyncedFrame
from mlesam_ros.transforms import transform_matrix

FLUSH_PERIOD = 0.02  # seconds between synchroniser flushes on the node's clock
CAMERA = "rgb"  # the modality whose image the overlay blends
# what a parameter's description says about when a change takes effect (params.parameter_change)
_CHANGE_NOTES = {"live": "live: a change applies to the next frame",
                 "configure": "read at configure: set it while the node is unconfigured",
                 "read_only": "read-only: read at process start"}
# every publisher and subscription takes ROS 2's qos_overrides.<topic>.<publisher|subscription>.<policy>
_QOS_OVERRIDES = QoSOverridingOptions.with_default_policies()
_OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
_LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)


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


def _transition(name: str) -> Callable[[Callable[..., TransitionCallbackReturn]],
                                       Callable[..., TransitionCallbackReturn]]:
    """A transition callback whose unexpected exception is logged with its traceback and kept as the node's last
    error before the transition ends in ERROR (rclpy turns it into ERROR silently)."""
    def wrap(method: Callable[..., TransitionCallbackReturn]) -> Callable[..., TransitionCallbackReturn]:
        @wraps(method)
        def run(self: SegmentationNode, state: LifecycleState) -> TransitionCallbackReturn:
            try:
                return method(self, state)
            except Exception as exc:  # noqa: BLE001 -- reported, then error processing
                self._last_error = f"{name} failed: {type(exc).__name__}: {exc}"
                logging.getLogger("mlesam_ros.node").error(self._last_error, exc_info=True)
                return TransitionCallbackReturn.ERROR
        return run
    return wrap


class SegmentationNode(LifecycleNode):
    """Synchronised multi-sensor segmentation as a managed node: sensor topics in, labels and friends out."""

    def __init__(self, **node_options: Any) -> None:
        """Declare the parameters; nothing is loaded until configure. `node_options`: rclpy's (context, cli_args),
        for a node built in-process."""
        super().__init__(NODE_NAME, **node_options)
        self._log_handler = RosLogHandler(self.get_logger())
        logging.getLogger("mlesam_ros").addHandler(self._log_handler)
        logging.getLogger("mlesam_ros").setLevel(logging.INFO)
        self.kit = MessageKit.rclpy()
        self._config_names = self._declare_parameters()
        self._check_overrides()
        self._apply_wait_policy(self.get_parameter("omp_wait_policy").value)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._refuse_unavailable_transitions()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        # a plain publisher: the lifecycle status (a failed configure, say) is reported in every state
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10,
                                                     qos_overriding_options=_QOS_OVERRIDES)
        self._publishing = threading.Lock()  # held while the worker publishes; transitions take it
        self._last_error = ""
        self.config: SegmentConfig | None = None
        self.pipeline: SegmentationPipeline | None = None
        self._worker: threading.Thread | None = None
        self._mailbox: Mailbox[SyncedFrame] = Mailbox()
        self._camera_info: Any = None
        self.publishers_by_output: dict[str, Any] = {}
        self._lifecycle_publishers: list[Any] = []
        self._active_entities: list[Any] = []  # subscriptions and timers, created at activate
        self._diagnostics_timer: Any = None
        self._tf_listener: Any = None
        self.counts = OutputCounts()
        self.processing: ProcessingMonitor | None = None
        self.get_logger().info(f"unconfigured: configure and activate it (ros2 lifecycle set "
                               f"{self.get_fully_qualified_name()} configure, then activate)")

    # --- parameters ---

    def _declare_parameters(self) -> list[str]:
        """Declare one parameter per config leaf (the sensors.* of the configured modalities); their names."""
        defaults = SegmentConfig()
        modalities = self._declare("modalities", list(defaults.modalities),
                                   SegmentConfig.__dataclass_fields__["modalities"].metadata["doc"], tuple[str, ...])
        # the sensors.<m>.* parameters follow the modalities: `modalities` is read-only
        template = from_dict(SegmentConfig, {"modalities": modalities, "primary": modalities[0]},
                             source="parameters")
        names = ["modalities"]
        for name, default, doc, hint in iter_parameters(template):
            if name != "modalities":
                self._declare(name, default, doc, hint)
                names.append(name)
        return names

    def _declare(self, name: str, default: Any, doc: str, hint: Any) -> Any:
        """Declare one parameter, its descriptor saying when a change applies; returns its value."""
        constraints = ""
        if get_args(hint) and all(isinstance(a, str) for a in get_args(hint)):  # Literal choices
            constraints = "one of: " + ", ".join(get_args(hint))
        change = "read_only" if name == "modalities" else parameter_change(name)
        # dynamic typing: ROS's own check would refuse an integer where the default is a double (`period: 1`), which
        # the replay takes; types and ranges are checked by params.config_from_parameters, for node and replay alike
        descriptor = ParameterDescriptor(description=f"{doc} [{_CHANGE_NOTES[change]}]",
                                         read_only=change == "read_only", additional_constraints=constraints,
                                         dynamic_typing=True)
        value = (list(default) or None) if isinstance(default, (tuple, list)) else default  # None: unset
        return self.declare_parameter(name, value, descriptor).value

    def _check_overrides(self) -> None:
        """Refuse parameters given to the node (params file, -p) that it does not declare, as the replay refuses
        unknown keys: a typo would otherwise leave the default in place silently. QoS overrides are checked at
        configure, when the topics they name exist."""
        overrides = getattr(self, "_parameter_overrides", {})  # what rclpy parsed for this node (Humble, Jazzy)
        unknown = [name for name in overrides
                   if not self.has_parameter(name) and not name.startswith(f"{QOS_OVERRIDES}.")]
        if unknown:
            raise unknown_parameters_error(unknown, self.list_parameters([], 0).names)

    def _check_qos_overrides(self, config: SegmentConfig) -> None:
        """Refuse qos_overrides.* that name none of the node's publishers and subscriptions (a typo would leave
        the default QoS in place silently)."""
        published = [*OUTPUT_TOPICS.values(), CAMERA_INFO_TOPIC, TIMING_TOPIC, CLASS_NAMES_TOPIC, LABEL_INFO_TOPIC,
                     DIAGNOSTICS_TOPIC]
        subscribed = [*(config.input_topic(m) for m in config.modalities), config.camera_info_topic, "/tf_static"]
        entities = [f"{self.resolve_topic_name(t)}.publisher." for t in published] + \
            [f"{self.resolve_topic_name(t)}.subscription." for t in subscribed]
        unknown = [name for name in getattr(self, "_parameter_overrides", {}) if name.startswith(f"{QOS_OVERRIDES}.")
                   and not name.startswith(tuple(f"{QOS_OVERRIDES}.{e}" for e in entities))]
        if unknown:
            raise ConfigError(f"{unknown[0]}: no publisher or subscription of {NODE_NAME} takes this QoS override "
                              f"(qos_overrides.<topic>.publisher|subscription.<policy>; topics: "
                              f"{', '.join(e.rstrip('.') for e in entities)})")

    def _apply_wait_policy(self, policy: str) -> None:
        """Restart with `policy` when torch's thread pool was loaded with another (see the top of this module)."""
        choices = get_args(get_type_hints(SegmentConfig)["omp_wait_policy"])
        if policy not in choices:
            raise ConfigError(f"omp_wait_policy: must be one of {', '.join(choices)}, got {policy!r}")
        wanted = policy.upper()
        if _OMP_POLICY_AT_LOAD is None:
            self.get_logger().warning(f"omp_wait_policy: torch was loaded before the node module; its OpenMP wait "
                                      f"policy stays as it was (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")
        elif wanted != _OMP_POLICY_AT_LOAD:
            raise RestartWithWaitPolicy(wanted)
        else:
            self.get_logger().info(f"OpenMP wait policy {wanted} (omp_wait_policy)")

    def _read_config(self, changes: dict[str, Any] | None = None) -> SegmentConfig:
        """The validated SegmentConfig of the parameters' values with `changes` (ConfigError names the key)."""
        flat = {name: self._value(name) for name in self._config_names}
        flat.update(changes or {})
        qos = {name: p.value for name, p in getattr(self, "_parameter_overrides", {}).items()
               if name.startswith(f"{QOS_OVERRIDES}.")}  # checked before anything loads; rclpy applies them
        return config_from_parameters({**flat, **qos}, source="parameters")

    def _value(self, name: str) -> Any:
        """A parameter's value; None for a typed array left unset (camera.intrinsics)."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    @property
    def _pipeline(self) -> SegmentationPipeline:
        """The pipeline of the configured node (from configure to cleanup)."""
        if self.pipeline is None:
            raise RuntimeError("the segmentation pipeline is used while the node is unconfigured")
        return self.pipeline

    def _state_label(self) -> str:
        return str(self._state_machine.current_state[1])

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Accept a change of a live parameter in any state and of a configure-time one while unconfigured, when
        the resulting config validates; otherwise refuse it with the reason, keeping the old value."""
        changes = {p.name: p.value for p in parameters if p.name in self._config_names}
        if not changes:  # rclpy's own parameters (use_sim_time, qos_overrides.* being declared)
            return SetParametersResult(successful=True)
        state = self._state_label()
        for name in changes:
            if parameter_change(name) == "configure" and state != "unconfigured":
                return SetParametersResult(successful=False, reason=(
                    f"{name}: read at configure and the node is {state}: deactivate and clean it up, set it, then "
                    f"configure (ros2 lifecycle set {self.get_fully_qualified_name()} cleanup)"))
        try:
            config = self._read_config(changes)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if self.config is not None:  # configured: apply now (no post-set callback in Humble's rclpy)
            self._apply_live(config)
        self.get_logger().info(f"parameters changed: {', '.join(f'{k}={v}' for k, v in changes.items())}")
        return SetParametersResult(successful=True)

    def _apply_live(self, config: SegmentConfig) -> None:
        """Take the live settings of `config` (called on the executor thread, as the synchroniser runs)."""
        period_changed = self.config is None or config.diagnostics.period != self.config.diagnostics.period
        self.config = config
        if self.pipeline is not None:
            self._pipeline.update_live(config)
        if self.processing is not None:
            self.processing.thresholds = config.diagnostics
        if period_changed and self._diagnostics_timer is not None:
            self._active_entities.remove(self._diagnostics_timer)
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = self._timer(config.diagnostics.period, self._publish_diagnostics)

    # --- lifecycle transitions ---

    def _refuse_unavailable_transitions(self) -> None:
        """Answer a ChangeState request for a transition the current state does not have with success=false (and a
        warning), as rclcpp does: rclpy's own service raises, which would end the node's spinning."""
        service = self._service_change_state
        take = service.callback

        def change_state(request: Any, response: Any) -> Any:
            available = [(t[0], t[1]) for t in self._state_machine.available_transitions]
            wanted = request.transition.label or request.transition.id
            if all(wanted not in pair for pair in available):
                self.get_logger().warning(
                    f"transition {wanted} is not available in state {self._state_label()} (available: "
                    f"{', '.join(label for _, label in available)})")
                response.success = False
                return response
            return take(request, response)

        service.callback = change_state

    @_transition("configure")
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters, load and warm up the model, create the (inactive) publishers."""
        try:
            config = self._read_config()
            self._check_qos_overrides(config)
        except ConfigError as exc:
            return self._failed("configure", str(exc), TransitionCallbackReturn.FAILURE)
        try:
            self._load(config)
            self._create_publishers()
        except Exception as exc:  # noqa: BLE001 -- a model that does not load: error processing, the node lives
            if isinstance(exc, (ConfigError, FileNotFoundError, ValueError)):  # bad parameters or files: named
                reason = str(exc)
            else:  # anything else with its traceback
                reason = f"{type(exc).__name__}: {exc}"
                logging.getLogger("mlesam_ros.node").error("loading the model failed", exc_info=True)
            return self._failed("configure", reason, TransitionCallbackReturn.ERROR)
        self.config = config
        self._last_error = ""
        self.get_logger().info(f"configured: {', '.join(config.modalities)} (primary {config.primary}); outputs "
                               f"{', '.join(enabled_outputs(config.outputs))}, each computed while subscribed "
                               f"(labels always)")
        self._report_state(OK, "inactive")
        return super().on_configure(state)

    @_transition("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe, start the timers, enable the publishers."""
        try:
            self._subscribe()
        except Exception as exc:  # noqa: BLE001 -- reported, then error processing
            return self._failed("activate", f"{type(exc).__name__}: {exc}", TransitionCallbackReturn.ERROR)
        with self._publishing:
            result = super().on_activate(state)
        self.class_names_pub.publish(String(data=class_names_json(self._pipeline.class_table)))
        if self.label_info_pub is not None:
            self.label_info_pub.publish(self._label_info)
        self.get_logger().info("active: segmenting")
        return result

    @_transition("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and stop the timers; a frame being segmented is not published."""
        self._unsubscribe()
        with self._publishing:
            result = super().on_deactivate(state)
        self._mailbox.take(timeout=0)  # a frame still waiting is dropped
        self.get_logger().info("inactive: no inference until activated again")
        self._report_state(OK, "inactive")
        return result

    @_transition("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model and the publishers."""
        self._release()
        self.get_logger().info("unconfigured: model released")
        self._report_state(OK, "unconfigured")
        return super().on_cleanup(state)

    @_transition("shutdown")
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop whatever runs and release the model (from any primary state)."""
        self._unsubscribe()
        self._release()
        self._report_state(OK, "finalized")
        return super().on_shutdown(state)

    @_transition("error")
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Error processing: release everything, back to unconfigured; the reason stays on /diagnostics."""
        self._unsubscribe()
        self._release()
        self.get_logger().error(f"error processing: released the model; unconfigured ({self._last_error})")
        self._report_state(ERROR, "unconfigured")
        return TransitionCallbackReturn.SUCCESS

    def _failed(self, transition: str, reason: str, result: TransitionCallbackReturn) -> TransitionCallbackReturn:
        """Log and report a failed transition (FAILURE: back to unconfigured, as only configure fails so; ERROR:
        on_error reports it after releasing)."""
        self._last_error = f"{transition} failed: {reason}"
        self.get_logger().error(self._last_error)
        if result == TransitionCallbackReturn.FAILURE:
            self._report_state(ERROR, "unconfigured")
        return result

    # --- configure: model, publishers ---

    def _share_dirs(self) -> list[Path]:
        try:
            from ament_index_python.packages import get_package_share_directory
            return [Path(get_package_share_directory("mlesam_ros"))]
        except Exception:  # noqa: BLE001 - ament_index raises its own lookup errors
            # not in an ament workspace (a source checkout): the repository root is searched
            return []

    def _load(self, config: SegmentConfig) -> None:
        """Start the inference thread, which loads the model; raises what loading raised."""
        loaded = threading.Event()
        failure: list[BaseException] = []
        self._mailbox = Mailbox()
        self._worker = threading.Thread(target=self._work, args=(config, self._mailbox, loaded, failure),
                                        name="mlesam_inference", daemon=True)
        self._worker.start()
        loaded.wait()
        if failure:
            self._worker.join()
            self._worker = None
            raise failure[0]
        self.processing = ProcessingMonitor(config.diagnostics, NODE_NAME)
        self.counts = OutputCounts()

    def _create_publishers(self) -> None:
        """Lifecycle publishers of every output (an output switched off is never computed), camera_info, timing
        and the latched class list; silent until activate."""
        self.publishers_by_output = {name: self._lifecycle_publisher(self.kit.resolve(OUTPUT_TYPES[name]), topic,
                                                                     _OUTPUT_QOS)
                                     for name, topic in OUTPUT_TOPICS.items()}
        self.camera_info_pub = self._lifecycle_publisher(CameraInfo, CAMERA_INFO_TOPIC, _OUTPUT_QOS)
        self.timing_pub = self._lifecycle_publisher(self.kit.resolve("std_msgs/msg/Float64MultiArray"), TIMING_TOPIC,
                                                    10)
        self.class_names_pub = self._lifecycle_publisher(String, CLASS_NAMES_TOPIC, _LATCHED_QOS)
        self.label_info_pub = None
        try:  # the vision_msgs convention for label ids, where the package is installed
            self._label_info = self.kit.label_info(self._pipeline.class_table.names, self.kit.header(0, ""))
        except (ImportError, AttributeError, LookupError) as exc:
            self.get_logger().info(f"vision_msgs not available ({exc}): class names only on {CLASS_NAMES_TOPIC}")
        else:
            self.label_info_pub = self._lifecycle_publisher(type(self._label_info), LABEL_INFO_TOPIC, _LATCHED_QOS)

    def _lifecycle_publisher(self, msg_type: Any, topic: str, qos: Any) -> Any:
        publisher = self.create_lifecycle_publisher(msg_type, topic, qos, qos_overriding_options=_QOS_OVERRIDES)
        self._lifecycle_publishers.append(publisher)
        return publisher

    def _release(self) -> None:
        """Stop the inference thread, destroy the publishers, drop the model (cleanup, shutdown, error)."""
        with self._publishing:
            self._mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None
        for publisher in self._lifecycle_publishers:
            self.destroy_lifecycle_publisher(publisher)
        self._lifecycle_publishers, self.publishers_by_output = [], {}
        self.pipeline, self.config, self.processing, self._camera_info = None, None, None, None
        gc.collect()  # the model's tensors go now, not at some later collection
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- activate: subscriptions, timers ---

    def _subscribe(self) -> None:
        config, pipeline = self.config, self.pipeline
        assert config is not None and pipeline is not None  # activate follows a successful configure
        sensor_qos = QoSProfile(history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
                                reliability=qos_profile_sensor_data.reliability,
                                durability=qos_profile_sensor_data.durability)
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
            self._subscription(msg_type, topic, partial(self._on_message, sensor), sensor_qos)
        self._subscription(CameraInfo, config.camera_info_topic, self._on_camera_info, sensor_qos)
        if "lidar" in config.modalities and config.input_type("lidar") == POINTCLOUD_TYPE:
            self._subscribe_transforms()
        # on the steady clock, as the synchroniser's flush: with use_sim_time, ROS-time timers stop while /clock is
        # silent or after it jumps back (a bag loop)
        self._timer(FLUSH_PERIOD, self._flush)
        self._diagnostics_timer = self._timer(config.diagnostics.period, self._publish_diagnostics)

    def _subscription(self, msg_type: Any, topic: str, callback: Any, qos: Any) -> None:
        self._active_entities.append(self.create_subscription(msg_type, topic, callback, qos,
                                                              qos_overriding_options=_QOS_OVERRIDES))

    def _timer(self, period: float, callback: Any) -> Any:
        timer = self.create_timer(period, callback, clock=self._steady)
        self._active_entities.append(timer)
        return timer

    def _unsubscribe(self) -> None:
        for entity in self._active_entities:
            if hasattr(entity, "timer_period_ns"):
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)
        self._active_entities, self._diagnostics_timer = [], None
        if self._tf_listener is not None:
            self._tf_listener.unregister()
            self._tf_listener = None

    def _subscribe_transforms(self) -> None:
        """camera <- LiDAR: tf2_ros where importable (/tf and /tf_static), else /tf_static into the pipeline's own
        tree where tf2_msgs is importable, else only the lidar.cam_from_lidar parameter; the log says which."""
        try:
            import tf2_ros
        except ImportError:
            tf2_ros = None
        if tf2_ros is not None:
            buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(buffer, self)
            self._pipeline.set_transform_lookup(Tf2Lookup(buffer))
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
        self._subscription(TFMessage, "/tf_static", self._pipeline.add_transforms, latched)
        self.get_logger().info("camera <- LiDAR from /tf_static (tf2_msgs; tf2_ros is not importable); "
                               "lidar.cam_from_lidar until a transform arrives")

    # --- running ---

    def _on_message(self, sensor: str, msg: Any) -> None:
        for frame in self._pipeline.add(sensor, msg, received=time.monotonic()):
            self._post(frame)

    def _on_camera_info(self, msg: Any) -> None:
        self._camera_info = msg  # republished beside the outputs
        self._pipeline.set_camera_info(msg)

    def _flush(self) -> None:
        for frame in self._pipeline.tick(time.monotonic()):
            self._post(frame)

    def _post(self, frame: SyncedFrame) -> None:
        """Put a frame in the mailbox, replacing one the worker has not taken yet."""
        if self._mailbox.put(frame):
            self._pipeline.frame_replaced()

    def _work(self, config: SegmentConfig, mailbox: Mailbox[SyncedFrame], loaded: threading.Event,
              failure: list[BaseException]) -> None:
        """The inference thread: load the model, then segment and publish each frame the mailbox hands over."""
        try:
            segmenter = load_segmenter(config, self._share_dirs())
            self.pipeline = SegmentationPipeline(config, segmenter, log=logging.getLogger("mlesam_ros.node"))
        except BaseException as exc:  # noqa: BLE001 -- configure reports it (error processing)
            failure.append(exc)
            loaded.set()
            return
        loaded.set()
        while (frame := mailbox.take()) is not None:
            try:
                self._segment(frame)
            except Exception:  # noqa: BLE001 -- the thread must outlive any one frame; logged with its traceback
                logging.getLogger("mlesam_ros.node").exception("frame %.3f could not be processed", frame.stamp)

    def _wanted_outputs(self) -> set[str]:
        """The outputs to compute for the next frame: labels, and the others somebody subscribes to."""
        return {name for name, publisher in self.publishers_by_output.items()
                if name in ALWAYS_COMPUTED or publisher.get_subscription_count() > 0}

    def _segment(self, frame: SyncedFrame) -> None:
        """Segment one frame and publish its outputs, camera_info and timing."""
        start = time.perf_counter()
        pipeline, config = self.pipeline, self.config
        if pipeline is None or config is None:  # released while the frame waited
            return
        wanted = self._wanted_outputs()
        result = pipeline.process(frame, now=time.monotonic(),
                                  confidence=config.outputs.confidence and "confidence" in wanted)
        camera = frame.messages.get(CAMERA)
        messages = output_messages(self.kit, pipeline, result, wanted, camera=camera.msg if camera else None,
                                   counts=self.counts)
        with self._publishing:
            if not self.publishers_by_output:  # released meanwhile: the publishers are gone
                return
            for name, msg in messages.items():
                self.publishers_by_output[name].publish(msg)
            if not messages:
                return
            info = self._camera_info
            if info is not None and self.camera_info_pub.get_subscription_count() > 0:
                self.camera_info_pub.publish(restamped_camera_info(info, result.header))
            processing_ms = (time.perf_counter() - start) * 1000.0
            model_ms = None if result.latency is None else result.latency * 1000.0
            if self.timing_pub.get_subscription_count() > 0:
                latency_ms = (self.get_clock().now().nanoseconds - stamp_to_ns(result.header.stamp)) / 1e6
                self.timing_pub.publish(timing_message(self.kit, result.header, latency_ms, processing_ms, model_ms))
        if self.processing is not None:
            self.processing.frame(processing_ms, model_ms, time.monotonic())

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        entries = self._pipeline.diagnostics(now)
        if self.processing is not None:
            entries.append(self.processing.entry(now))
        computed = self.counts.snapshot()
        entries.append(DiagnosticEntry(OK, f"{NODE_NAME}: outputs", "computed while subscribed (labels always)",
                                       "outputs", {f"computed_{name}": str(count)
                                                   for name, count in computed.items()}))
        entries.append(self._state_entry(OK, self._state_label()))
        self.diagnostics_pub.publish(self.kit.diagnostic_array(entries, self.kit.header(
            self.get_clock().now().nanoseconds, "")))

    def _state_entry(self, level: int, state: str) -> DiagnosticEntry:
        return DiagnosticEntry(level, f"{NODE_NAME}: lifecycle", self._last_error or state, "lifecycle",
                               {"state": state, "last_error": self._last_error})

    def _report_state(self, level: int, state: str) -> None:
        """One /diagnostics message with the lifecycle status (sent at transitions, also when unconfigured)."""
        self.diagnostics_pub.publish(self.kit.diagnostic_array(
            [self._state_entry(level, state)], self.kit.header(self.get_clock().now().nanoseconds, "")))

    def stop(self) -> None:
        """Stop subscriptions, timers and the worker (no publishing once this returns); detach the log handler."""
        self._unsubscribe()
        self._release()
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
    """Entry point `segment_node`: the managed node, unconfigured until a configure transition (the launch file
    configures and activates it unless `autostart:=false`); spins until SIGINT/SIGTERM, then stops in order.

    rclpy's own signal handlers would shut the context down at once, while the inference worker may still be
    publishing a frame ("publisher's context is invalid"); here a signal ends spinning, the worker is stopped,
    then the node and the context go.
    """
    try:
        retain_freed_memory()  # before rclpy's and the worker's threads start (mlesam_core.host_memory)
    except ValueError as exc:  # a bad MLESAM_HOST_MEMORY
        print(f"[{NODE_NAME}] cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except RuntimeError as exc:  # rcl's RCLError: e.g. a parameters file ROS cannot parse (a list of mixed types)
        print(f"[{NODE_NAME}] cannot start: {exc}", file=sys.stderr)
        return 2
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
