"""Typed configuration of the segmentation pipeline, shared by the node (ROS parameters) and the replay (YAML).

`config/segment.yaml` is a ROS 2 parameters file (`mlesam_segmenter: ros__parameters: ...`); the replay
reads it with `load_segment_config` (flattened to dotted names as ROS 2 parses it), the node declares one ROS
parameter per leaf of `SegmentConfig` (dotted names, descriptions from the field metadata), and both build the
dataclass from the dotted values with `config_from_parameters`: one validation of types (integers taken where
numbers are expected), ranges, unknown and removed names and QoS overrides, with `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

from mlesam_core.config_io import ConfigError, apply_overrides, check, doc_field, from_dict, load_yaml, resolve_path
from mlesam_core.data.classes import CLASS_TABLES
from mlesam_core.inference_options import InferenceOptions
from mlesam_core.modalities import check_modalities, get_modality
from mlesam_ros.sync import SensorTiming

NODE_NAME = "mlesam_segmenter"
# parameters rclpy declares on every node (Humble, Jazzy): valid in a params file, no part of SegmentConfig
ROS_NODE_PARAMETERS = ("use_sim_time", "start_type_description_service")
# rclpy's QoS override parameters (`qos_overrides.<topic>.publisher|subscription.<policy>`, QoSOverridingOptions):
# the node's topics take them; the replay, which has no topics to subscribe to, ignores them
QOS_OVERRIDES = "qos_overrides"
# When the node takes a parameter change (docs/robot.md, "Changing parameters"): LIVE_PARAMETERS in any lifecycle
# state, applied to the next frame; READ_ONLY_PARAMETERS only at process start; every other one is read at
# configure, so it changes while the node is unconfigured (a new model: cleanup, set model.*, configure)
LIVE_PARAMETERS = ("outputs.*", "diagnostics.*", "log_period", "sync.primary_timeout", "sync.use_stale",
                   "sensors.*.slop", "sensors.*.stale_after", "sensors.*.max_delay", "events.window")
READ_ONLY_PARAMETERS = ("omp_wait_policy",)
# parameters of earlier versions -> what to write instead: a file that still sets one is refused with this
REMOVED_PARAMETERS = {
    "lidar.input": "the LiDAR input is chosen as every sensor's: sensors.lidar.type (sensor_msgs/msg/PointCloud2 for "
                   "a point cloud; empty or sensor_msgs/msg/Image for a projected image) and sensors.lidar.topic",
    "lidar.points_topic": "write the PointCloud2 topic as sensors.lidar.topic, with sensors.lidar.type: "
                          "sensor_msgs/msg/PointCloud2",
    "diagnostics_period": "write diagnostics.period",
    **{f"qos.{key}": "QoS is set with ROS 2's own qos_overrides.<topic>.publisher|subscription.<policy> parameters "
                     "(docs/robot.md, QoS)" for key in ("input_reliability", "input_depth", "output_reliability",
                                                        "output_depth")},
}
# LiDAR frame (x forward, y left, z up) -> camera optical frame (x right, y down, z forward), same origin.
LIDAR_TO_OPTICAL = (0.0, -1.0, 0.0, 0.0,
                    0.0, 0.0, -1.0, 0.0,
                    1.0, 0.0, 0.0, 0.0,
                    0.0, 0.0, 0.0, 1.0)


@dataclass
class ModelParams(InferenceOptions):
    """Which model to run, and how (`InferenceOptions`: device, precision, compile, cuda_graphs, merge_lora,
    threads, validated there)."""

    config: str = doc_field("config/model/mlesam_hiera_b+.yaml",
                            "model config YAML (relative: cwd, repo, package share)")
    sam2_checkpoint: str = doc_field("", "official SAM2 checkpoint (.pt); empty = none")
    adapters: str = doc_field("", "trained adapters (.safetensors); empty = none")
    allow_random_init: bool = doc_field(False, "no SAM2 checkpoint: seeded random frozen backbone (only adapters "
                                               "trained on that same random backbone make sense: tests, CPU demo)")
    verify_adapters: bool = doc_field(True, "check the adapters file's content hash (false only for files made "
                                            "elsewhere, which carry none)")
    onnx_dir: str = doc_field("", "backend onnxruntime: the folder python -m training.export wrote (manifest.json "
                                  "and one graph per sensor subset); checked against config, adapters and modalities")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.backend == "torch" or bool(self.onnx_dir), "onnx_dir",
              "backend onnxruntime needs the export folder (python -m training.export --out DIR)")


IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
POINTCLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
EVENT_PACKET_TYPE = "event_camera_msgs/msg/EventPacket"
# message types each modality accepts besides Image and CompressedImage (every modality takes those two)
EXTRA_INPUT_TYPES = {"lidar": (POINTCLOUD_TYPE,), "event": (EVENT_PACKET_TYPE,)}
# image_transport's transport topics (`<base>/<transport>`): their suffix names the CompressedImage transports
COMPRESSED_TRANSPORTS = ("compressed", "compressedDepth")


@dataclass
class SensorConfig(SensorTiming):
    """One input sensor: its topic, message type and synchronisation timing."""

    topic: str = doc_field("", "input topic (may be an image_transport topic such as /camera/image_raw/compressed); "
                               "empty = the modality's default topic")
    type: str = doc_field("", f"message type on the topic: {IMAGE_TYPE}, {COMPRESSED_TYPE} (image_transport "
                              f"compressed or compressedDepth), {POINTCLOUD_TYPE} (lidar) or {EVENT_PACKET_TYPE} "
                              f"(event); empty = from the topic (.../compressed, .../compressedDepth: "
                              f"CompressedImage), else Image")


def accepted_types(sensor: str) -> tuple[str, ...]:
    """The message types the pipeline decodes for `sensor`."""
    return (IMAGE_TYPE, COMPRESSED_TYPE, *EXTRA_INPUT_TYPES.get(sensor, ()))


def image_transport_base(topic: str) -> str:
    """The image topic of an image_transport topic (`/camera/image_raw/compressed` -> `/camera/image_raw`)."""
    base, _, last = topic.rstrip("/").rpartition("/")
    return base if last in COMPRESSED_TRANSPORTS and base else topic


@dataclass
class SyncParams:
    """Synchroniser settings shared by all sensors."""

    primary_timeout: float = doc_field(0.3, "primary silent this long (data time) -> the next sensor drives")
    use_stale: bool = doc_field(True, "use a stale auxiliary message (older than slop, within stale_after)")
    buffer_size: int = doc_field(16, "messages kept per sensor and frames waiting, at most")

    def __post_init__(self) -> None:
        check(self.primary_timeout > 0, "primary_timeout", f"must be > 0, got {self.primary_timeout}")
        check(self.buffer_size >= 1, "buffer_size", f"must be >= 1, got {self.buffer_size}")


@dataclass
class DepthParams:
    """How depth messages become the model's depth image."""

    encoding: Literal["hha", "depth"] = doc_field("hha", "the model's depth input: hha (needs intrinsics) or depth")
    camera_height: float = doc_field(1.5, "camera height above ground in metres (HHA height channel)")
    min_valid_fraction: float = doc_field(0.01, "depth frames with fewer valid pixels count as invalid")

    def __post_init__(self) -> None:
        check(0.0 <= self.min_valid_fraction <= 1.0, "min_valid_fraction",
              f"must lie in [0, 1], got {self.min_valid_fraction}")


@dataclass
class LidarParams:
    """How a LiDAR PointCloud2 (sensors.lidar.type) is projected into the camera."""

    cam_from_lidar: tuple[float, ...] = doc_field(LIDAR_TO_OPTICAL, "4x4 camera<-LiDAR extrinsic, row-major")

    def __post_init__(self) -> None:
        check(len(self.cam_from_lidar) == 16, "cam_from_lidar", f"needs 16 values, got {len(self.cam_from_lidar)}")


@dataclass
class EventParams:
    """Event input as event_camera_msgs/EventPacket: how a frame's event image is rendered from the events."""

    window: float = doc_field(0.03, "a frame at t renders the events with time in (t - window, t] (seconds; "
                                    "MUSES: 30 ms)")
    count_scale: float = doc_field(32.0, "event-frame value per event, as in the frames the model was trained on: "
                                         "32 for the procedural (DELIVER-format) data, 1 for MUSES (plain counts)")

    def __post_init__(self) -> None:
        check(self.window > 0, "window", f"must be > 0 seconds, got {self.window}")
        check(self.count_scale > 0, "count_scale", f"must be > 0, got {self.count_scale}")


@dataclass
class CameraParams:
    """Camera model used for HHA depth and LiDAR projection, and the expected image size."""

    info_topic: str = doc_field("", "CameraInfo of the primary camera (depth registered to it); empty = "
                                    "image_transport's convention, camera_info next to the primary's image topic "
                                    "(/camera/image_raw and /camera/image_raw/compressed: /camera/camera_info)")
    intrinsics: tuple[float, ...] = doc_field((), "3x3 K row-major; empty = from camera_info")
    image_size: tuple[int, ...] = doc_field((), "expected [H, W] of every input (a driving image of another size is "
                                                "refused), and the size of a frame a PointCloud2 drives; empty = "
                                                "each frame's driving image's size")

    def __post_init__(self) -> None:
        check(len(self.intrinsics) in (0, 9), "intrinsics", f"needs 9 values or none, got {len(self.intrinsics)}")
        check(len(self.image_size) in (0, 2) and all(v > 0 for v in self.image_size), "image_size",
              f"needs [H, W] > 0 or nothing, got {list(self.image_size)}")


@dataclass
class OutputParams:
    """Which outputs to produce. The node computes an output that is on only while something subscribes to it
    (labels always); the replay writes every output that is on."""

    labels: bool = doc_field(True, "publish /mlesam/labels (mono8 class ids, 255 = unlabeled)")
    labels_color: bool = doc_field(True, "publish /mlesam/labels_color (rgb8, class palette)")
    confidence: bool = doc_field(True, "publish /mlesam/confidence (32FC1); off, its softmax is not computed either")
    overlay: bool = doc_field(True, "publish /mlesam/overlay (rgb8: the rgb camera image blended with the palette)")
    overlay_alpha: float = doc_field(0.5, "overlay: weight of the class colour against the camera image, in [0, 1]")
    routing: bool = doc_field(True, "publish /mlesam/routing (Float32MultiArray level x modality)")

    def __post_init__(self) -> None:
        check(0.0 <= self.overlay_alpha <= 1.0, "overlay_alpha", f"must lie in [0, 1], got {self.overlay_alpha}")


@dataclass
class DiagnosticsParams:
    """/diagnostics: how often, and the processing-time and rate thresholds of the node's processing status."""

    period: float = doc_field(1.0, "seconds between /diagnostics messages")
    max_processing_time_ms: float = doc_field(0.0, "a frame whose processing (decoding, model, outputs) takes "
                                                   "longer is late; 0 = no limit")
    late_frames_warn: int = doc_field(3, "this many late frames in a row: processing WARN")
    late_frames_error: int = doc_field(10, "this many late frames in a row: processing ERROR")
    expected_rate_hz: float = doc_field(0.0, "expected rate of segmented frames; 0 = not checked")
    rate_tolerance: float = doc_field(0.2, "rate below expected_rate_hz x (1 - rate_tolerance): WARN")

    def __post_init__(self) -> None:
        check(self.period > 0, "period", f"must be > 0 seconds, got {self.period}")
        check(self.max_processing_time_ms >= 0, "max_processing_time_ms",
              f"must be >= 0 (0 = no limit), got {self.max_processing_time_ms}")
        check(self.late_frames_warn >= 1, "late_frames_warn", f"must be >= 1, got {self.late_frames_warn}")
        check(self.late_frames_error >= self.late_frames_warn, "late_frames_error",
              f"must be >= late_frames_warn ({self.late_frames_warn}), got {self.late_frames_error}")
        check(self.expected_rate_hz >= 0, "expected_rate_hz",
              f"must be >= 0 (0 = not checked), got {self.expected_rate_hz}")
        check(0.0 <= self.rate_tolerance < 1.0, "rate_tolerance", f"must lie in [0, 1), got {self.rate_tolerance}")


@dataclass
class SegmentConfig:
    """Everything the segmentation node and the replay need besides the model weights."""

    model: ModelParams = field(default_factory=ModelParams)
    modalities: tuple[str, ...] = doc_field(("rgb", "depth", "event", "lidar"),
                                                    "sensors to use, in fallback-driver order (subset of the model's)")
    primary: str = doc_field("rgb", "the sensor whose frames drive the output")
    classes: str = doc_field("", "class table of the labels (deliver, muses, mcubes); empty = the model's")
    sensors: dict[str, SensorConfig] = field(default_factory=dict)
    sync: SyncParams = field(default_factory=SyncParams)
    depth: DepthParams = field(default_factory=DepthParams)
    lidar: LidarParams = field(default_factory=LidarParams)
    events: EventParams = field(default_factory=EventParams)
    camera: CameraParams = field(default_factory=CameraParams)
    diagnostics: DiagnosticsParams = field(default_factory=DiagnosticsParams)
    log_period: float = doc_field(5.0, "the same input problem is logged at most once per this many seconds")
    outputs: OutputParams = field(default_factory=OutputParams)
    omp_wait_policy: Literal["passive", "active"] = doc_field(
        "passive", "OpenMP wait policy of the node's torch thread pool, whatever OMP_WAIT_POLICY the caller's "
                   "environment has: passive (idle pool threads sleep, leaving the cores to the executor, DDS and "
                   "other nodes) or active (they spin: lower latency on cores nothing else needs); the node restarts "
                   "itself once to apply it (torch reads it when it loads); the offline replay keeps its "
                   "environment's")

    def __post_init__(self) -> None:
        try:
            check_modalities(self.modalities)
        except ValueError as exc:
            raise ConfigError(f"modalities: {exc}") from None
        check(not self.classes or self.classes in CLASS_TABLES, "classes",
              f"unknown class table {self.classes!r} (known: {', '.join(CLASS_TABLES)})")
        check(self.primary in self.modalities, "primary",
              f"{self.primary!r} is not one of the modalities {list(self.modalities)}")
        check(self.log_period >= 0, "log_period", f"must be >= 0 seconds, got {self.log_period}")
        unknown = sorted(set(self.sensors) - set(self.modalities))
        check(not unknown, f"sensors.{unknown[0] if unknown else ''}", "is not one of the configured modalities")
        for name in self.modalities:
            sensor = self.sensors.setdefault(name, SensorConfig())
            if not sensor.topic:
                sensor.topic = get_modality(name).topic
            check(not sensor.type or sensor.type in accepted_types(name), f"sensors.{name}.type",
                  f"{sensor.type!r} is not a message type the {name} input takes (one of: "
                  f"{', '.join(accepted_types(name))}; empty = from the topic)")

    @property
    def priority(self) -> tuple[str, ...]:
        """Sensors in driving order: the primary, then the others as configured."""
        return (self.primary,) + tuple(m for m in self.modalities if m != self.primary)

    def input_topic(self, sensor: str) -> str:
        """The topic a sensor's messages come from: `sensors.<sensor>.topic`."""
        return self.sensors[sensor].topic

    def input_type(self, sensor: str) -> str:
        """The message type the node subscribes with for `sensor`: `sensors.<sensor>.type`, else from the topic."""
        configured = self.sensors[sensor].type
        if configured:
            return configured
        topic = self.input_topic(sensor)
        return COMPRESSED_TYPE if image_transport_base(topic) != topic else IMAGE_TYPE

    @property
    def camera_info_topic(self) -> str:
        """`camera.info_topic`, else camera_info beside the primary's image topic (image_transport's layout)."""
        if self.camera.info_topic:
            return self.camera.info_topic
        image_topic = image_transport_base(self.input_topic(self.primary))
        namespace = image_topic.rstrip("/").rpartition("/")[0]
        return f"{namespace}/camera_info"


def parameters_section(data: dict, source: str = "") -> dict:
    """The `ros__parameters` mapping of our node in a ROS 2 parameters file (node name or /** root)."""
    for root in (NODE_NAME, f"/{NODE_NAME}", "/**"):
        section = data.get(root)
        if isinstance(section, dict) and "ros__parameters" in section:
            return section["ros__parameters"] or {}
    raise ConfigError(f"{source or 'parameters'}: no '{NODE_NAME}: ros__parameters:' section "
                      f"(found: {', '.join(map(str, data)) or 'nothing'})")


def load_segment_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> SegmentConfig:
    """SegmentConfig from a ROS 2 parameters file (or defaults) plus `dotted.key=value` overrides, through the
    node's own validation (`config_from_parameters`): the file is read as ROS 2 reads a parameters file (one
    parameter per leaf, dotted), so that the node and the replay accept and refuse the same files."""
    source = str(path) if path is not None else ""
    data = parameters_section(load_yaml(path), source) if path is not None else {}
    return config_from_parameters(flatten_parameters(apply_overrides(data, overrides), source), source)


def flatten_parameters(data: dict, source: str = "", prefix: str = "") -> dict[str, Any]:
    """The parameters of a `ros__parameters` mapping by dotted name, as ROS 2 parses a parameters file: nested
    mappings are namespaces; a list holds values of one type (ROS 2 refuses `[1, 0.5]`: no such parameter type);
    an empty list sets nothing (None: the default stays). A null is refused (ROS 2 reads `~` as the text "~")."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, source, f"{name}."))
            continue
        if value is None:
            raise ConfigError(f"{source + ': ' if source else ''}{name}: no value (leave the parameter out for its "
                              f"default)")
        if isinstance(value, list):
            kinds = {_parameter_kind(item) for item in value}
            if len(kinds) > 1 or "mapping or list" in kinds:
                raise ConfigError(f"{source + ': ' if source else ''}{name}: a ROS 2 parameter list holds values of "
                                  f"one type (integers, numbers with a decimal point, strings or booleans), got "
                                  f"{value!r}: write every number as a decimal (1.0) or every one as an integer")
        flat[name] = value if value != [] else None
    return flat


def _parameter_kind(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "mapping or list"
    return "integer" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__


# ROS 2's QoS override parameters, qos_overrides.<topic>.publisher|subscription.<policy> (rclpy's
# QoSOverridingOptions): the values each policy takes (enum names, any case; durations in nanoseconds)
QOS_POLICY_CHOICES = {"history": ("keep_last", "keep_all", "system_default"),
                      "reliability": ("reliable", "best_effort", "system_default", "best_available"),
                      "durability": ("volatile", "transient_local", "system_default", "best_available"),
                      "liveliness": ("automatic", "manual_by_topic", "system_default", "best_available")}
QOS_DURATIONS = ("deadline", "lifespan", "liveliness_lease_duration")


def check_qos_override(name: str, value: Any) -> None:
    """Refuse a `qos_overrides.<topic>.publisher|subscription.<policy>` parameter that rclpy would fail on when the
    node creates the topic (after the model has loaded): ConfigError naming it."""
    parts = name.split(".")
    if len(parts) != 4 or parts[2].split("_", 1)[0] not in ("publisher", "subscription"):
        raise ConfigError(f"{name}: expected {QOS_OVERRIDES}.<topic>.publisher|subscription.<policy>")
    policy = parts[3]
    if policy in QOS_POLICY_CHOICES:
        choices = QOS_POLICY_CHOICES[policy]
        check(isinstance(value, str) and value.lower() in choices, name,
              f"must be one of {', '.join(choices)}, got {value!r}")
    elif policy == "depth":
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name,
              f"must be an integer >= 1 (messages kept), got {value!r}")
    elif policy in QOS_DURATIONS:
        check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name,
              f"must be an integer >= 0 (nanoseconds), got {value!r}")
    elif policy == "avoid_ros_namespace_conventions":
        check(isinstance(value, bool), name, f"expected true or false, got {value!r}")
    else:
        raise ConfigError(f"{name}: unknown QoS policy {policy!r} (known: "
                          f"{', '.join([*QOS_POLICY_CHOICES, 'depth', *QOS_DURATIONS])})")


def declared_parameters(values: dict[str, Any]) -> dict[str, tuple[Any, str, Any]]:
    """The node's parameters for these values of `modalities` and `primary` (the sensors.<m>.* names depend on
    them): dotted name -> (default, description, type hint)."""
    first = {name: values[name] for name in ("modalities", "primary") if name in values}
    template = from_dict(SegmentConfig, first)
    return {name: (default, doc, hint) for name, default, doc, hint in iter_parameters(template)}


def config_from_parameters(values: dict[str, Any], source: str = "") -> SegmentConfig:
    """The one validation of the node's parameters, used by the node (its ROS parameter values) and the replay
    (a parameters file, flattened): SegmentConfig from dotted names -> values, refusing with ConfigError naming the
    parameter: a parameter of an earlier version, an unknown one, a bad QoS override, a wrong type (integers are
    taken where numbers are expected) and a value out of range. rclpy's own node parameters are left out; ROS 2
    QoS overrides are checked here and applied by rclpy when the node creates its topics."""
    prefix = f"{source}: " if source else ""
    values = {name: value for name, value in values.items() if name not in ROS_NODE_PARAMETERS}
    try:
        removed = removed_parameters_error(values)
        if removed is not None:
            raise removed
        for name, value in values.items():
            if name.startswith(f"{QOS_OVERRIDES}."):
                check_qos_override(name, value)
        values = {name: value for name, value in values.items() if not name.startswith(f"{QOS_OVERRIDES}.")}
        declared = declared_parameters(values)
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise unknown_parameters_error(unknown, declared)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    unset = [name for name, value in values.items() if value is None]  # NOT_SET (an empty list): the default stays
    return from_dict(SegmentConfig, nest({n: v for n, v in values.items() if n not in unset}), source=source or None)


def removed_parameters_error(names: Iterable[str], source: str = "") -> ConfigError | None:
    """The error for parameters of earlier versions among `names` (REMOVED_PARAMETERS), saying what to write
    instead; None when there are none."""
    removed = [name for name in names if name in REMOVED_PARAMETERS]
    if not removed:
        return None
    return ConfigError(f"{source + ': ' if source else ''}"
                       + "; ".join(f"{name}: no longer a parameter: {REMOVED_PARAMETERS[name]}" for name in removed))


def parameter_change(name: str) -> Literal["live", "configure", "read_only"]:
    """When the node takes a change of parameter `name` (LIVE_PARAMETERS, READ_ONLY_PARAMETERS, else at configure)."""
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in LIVE_PARAMETERS):
        return "live"
    return "read_only" if name in READ_ONLY_PARAMETERS else "configure"


def unknown_parameters_error(unknown: Iterable[str], known: Iterable[str]) -> ConfigError:
    """The error for parameter names the node does not declare (typos such as `primay`, `sensor.rgb.topic`), each
    with the nearest declared name; parameters of earlier versions are named with what replaces them."""
    unknown = sorted(unknown)
    removed = removed_parameters_error(unknown)
    if removed is not None:
        return removed
    known = sorted(known)
    described = []
    for name in unknown:
        near = difflib.get_close_matches(name, known, n=1)
        described.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return ConfigError(f"{described[0].split(' ')[0]}: unknown parameter{'s' if len(described) > 1 else ''} of "
                       f"{NODE_NAME}: {', '.join(described)}")


def iter_parameters(config: Any, prefix: str = "") -> Iterator[tuple[str, Any, str, Any]]:
    """(dotted name, value, description, type hint) for every leaf of a config dataclass."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        name = f"{prefix}{f.name}"
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_parameters(value, f"{name}.")
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from iter_parameters(item, f"{name}.{key}.")
        else:
            yield name, value, f.metadata.get("doc", ""), hints[f.name]


def nest(flat: dict[str, Any]) -> dict:
    """{'a.b': 1} -> {'a': {'b': 1}} (ROS parameter names to the nested mapping of the YAML)."""
    nested: dict = {}
    for name, value in flat.items():
        node = nested
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return nested


__all__ = ["NODE_NAME", "ROS_NODE_PARAMETERS", "QOS_OVERRIDES", "LIVE_PARAMETERS", "READ_ONLY_PARAMETERS",
           "REMOVED_PARAMETERS", "LIDAR_TO_OPTICAL", "IMAGE_TYPE", "COMPRESSED_TYPE", "POINTCLOUD_TYPE",
           "EVENT_PACKET_TYPE", "accepted_types", "image_transport_base", "ModelParams", "SensorConfig", "SyncParams",
           "DepthParams", "LidarParams", "EventParams", "CameraParams", "OutputParams", "DiagnosticsParams",
           "SegmentConfig", "resolve_path", "parameters_section", "load_segment_config", "flatten_parameters",
           "check_qos_override", "declared_parameters", "config_from_parameters", "removed_parameters_error",
           "parameter_change", "unknown_parameters_error", "iter_parameters", "nest"]
