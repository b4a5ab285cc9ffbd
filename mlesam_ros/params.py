"""Typed configuration of the segmentation pipeline, shared by the node (ROS parameters) and the replay (YAML).

`config/segment.yaml` is a ROS 2 parameters file (`mlesam_segmenter: ros__parameters: ...`); the replay
reads it with `load_segment_config`, the node declares one ROS parameter per leaf of `SegmentConfig`
(dotted names, descriptions from the field metadata) and rebuilds the same dataclass from their values,
so both validate it the same way (`ConfigError` naming the dotted key).
"""

from __future__ import annotations

import dataclasses
import difflib
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
# parameters of earlier versions -> what to write instead: a file that still sets one is refused with this
REMOVED_PARAMETERS = {
    "lidar.input": "the LiDAR input is chosen as every sensor's: sensors.lidar.type (sensor_msgs/msg/PointCloud2 for "
                   "a point cloud; empty or sensor_msgs/msg/Image for a projected image) and sensors.lidar.topic",
    "lidar.points_topic": "write the PointCloud2 topic as sensors.lidar.topic, with sensors.lidar.type: "
                          "sensor_msgs/msg/PointCloud2",
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
    """Which outputs to produce."""

    labels: bool = doc_field(True, "publish /mlesam/labels (mono8 class ids, 255 = unlabeled)")
    labels_color: bool = doc_field(True, "publish /mlesam/labels_color (rgb8, class palette)")
    confidence: bool = doc_field(True, "publish /mlesam/confidence (32FC1); off, its softmax is not computed either")
    routing: bool = doc_field(True, "publish /mlesam/routing (Float32MultiArray level x modality)")


@dataclass
class QosParams:
    """Quality of service of inputs and outputs."""

    input_reliability: Literal["best_effort", "reliable"] = doc_field("best_effort", "input QoS (sensor data)")
    input_depth: int = doc_field(5, "input queue depth")
    output_reliability: Literal["best_effort", "reliable"] = doc_field("reliable", "output QoS reliability")
    output_depth: int = doc_field(2, "output queue depth")


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
    diagnostics_period: float = doc_field(1.0, "seconds between /diagnostics messages")
    log_period: float = doc_field(5.0, "the same input problem is logged at most once per this many seconds")
    outputs: OutputParams = field(default_factory=OutputParams)
    qos: QosParams = field(default_factory=QosParams)
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
    """SegmentConfig from a ROS 2 parameters file (or defaults) plus `dotted.key=value` overrides. Unknown keys
    are refused naming them (the node refuses the same file the same way: `unknown_parameters_error`); rclpy's own
    node parameters (use_sim_time) are accepted and left out."""
    data = parameters_section(load_yaml(path), str(path)) if path is not None else {}
    data = {key: value for key, value in data.items() if key not in ROS_NODE_PARAMETERS}
    removed = removed_parameters_error(_dotted_names(data), str(path) if path else "")
    if removed is not None:
        raise removed
    return from_dict(SegmentConfig, apply_overrides(data, overrides), source=str(path) if path else None)


def removed_parameters_error(names: Iterable[str], source: str = "") -> ConfigError | None:
    """The error for parameters of earlier versions among `names` (REMOVED_PARAMETERS), saying what to write
    instead; None when there are none."""
    removed = [name for name in names if name in REMOVED_PARAMETERS]
    if not removed:
        return None
    return ConfigError(f"{source + ': ' if source else ''}"
                       + "; ".join(f"{name}: no longer a parameter: {REMOVED_PARAMETERS[name]}" for name in removed))


def _dotted_names(data: Any, prefix: str = "") -> Iterator[str]:
    """The dotted key of every leaf and mapping in a nested parameters mapping."""
    for key, value in data.items() if isinstance(data, dict) else ():
        yield f"{prefix}{key}"
        yield from _dotted_names(value, f"{prefix}{key}.")


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


__all__ = ["NODE_NAME", "ROS_NODE_PARAMETERS", "REMOVED_PARAMETERS", "LIDAR_TO_OPTICAL", "IMAGE_TYPE",
           "COMPRESSED_TYPE", "POINTCLOUD_TYPE", "EVENT_PACKET_TYPE", "accepted_types", "image_transport_base",
           "ModelParams", "SensorConfig", "SyncParams", "DepthParams", "LidarParams", "EventParams", "CameraParams",
           "OutputParams", "QosParams", "SegmentConfig", "resolve_path", "parameters_section", "load_segment_config",
           "removed_parameters_error", "unknown_parameters_error", "iter_parameters", "nest"]
