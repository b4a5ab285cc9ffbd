"""The node's output topics and how a FrameResult becomes their messages (shared by the node and the replay).

Topic names are relative, so a node namespace applies to them; the replay writes them under '/'. The node asks
only for the outputs somebody subscribes to (`wanted`); `OutputCounts` records what was built, so that a test or
/diagnostics can tell what the node computed.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Collection
from typing import Any

import numpy as np

from mlesam_core.data.classes import ClassTable
from mlesam_ros.image_conversion import ImageConversionError, to_rgb8
from mlesam_ros.messages import MessageKit
from mlesam_ros.model_inputs import message_array
from mlesam_ros.params import OutputParams
from mlesam_ros.pipeline import FrameResult, SegmentationPipeline

OUTPUT_TOPICS = {
    "labels": "mlesam/labels",  # mono8 class ids, 255 = unlabeled
    "labels_color": "mlesam/labels_color",  # rgb8, class table palette
    "confidence": "mlesam/confidence",  # 32FC1, probability of the chosen class
    "overlay": "mlesam/overlay",  # rgb8, the rgb camera image blended with the palette
    "routing": "mlesam/routing",  # Float32MultiArray [level, modality]
}
OUTPUT_TYPES = {"labels": "sensor_msgs/msg/Image", "labels_color": "sensor_msgs/msg/Image",
                "confidence": "sensor_msgs/msg/Image", "overlay": "sensor_msgs/msg/Image",
                "routing": "std_msgs/msg/Float32MultiArray"}
# the outputs computed whether or not anybody subscribes: what the replay records and downstream nodes consume
ALWAYS_COMPUTED = ("labels",)
# image_transport's pairing: the primary camera's CameraInfo beside the image outputs, with their header
CAMERA_INFO_TOPIC = "mlesam/camera_info"
# per frame: std_msgs/Float64MultiArray, one dimension labelled `timing=<TIMING_FIELDS joined by ','>`
TIMING_TOPIC = "mlesam/timing"
TIMING_FIELDS = ("stamp_sec", "stamp_nanosec", "latency_ms", "processing_ms", "model_ms")
CLASS_NAMES_TOPIC = "mlesam/class_names"  # std_msgs/String JSON, transient-local (always)
LABEL_INFO_TOPIC = "mlesam/label_info"  # vision_msgs/LabelInfo, transient-local (when vision_msgs is installed)
DIAGNOSTICS_TOPIC = "/diagnostics"


def enabled_outputs(outputs: OutputParams) -> list[str]:
    """Names of the outputs switched on (keys of OUTPUT_TOPICS)."""
    return [name for name in OUTPUT_TOPICS if getattr(outputs, name)]


class OutputCounts:
    """How many messages of each output were built (thread-safe: the worker counts, diagnostics read)."""

    def __init__(self) -> None:
        """All counts zero."""
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, names: Collection[str]) -> None:
        """One message of each output in `names` was built."""
        with self._lock:
            self._counts.update(names)

    def snapshot(self) -> dict[str, int]:
        """Count per output name (every name of OUTPUT_TOPICS, 0 when never built)."""
        with self._lock:
            return {name: self._counts[name] for name in OUTPUT_TOPICS}


def overlay_image(camera: np.ndarray, labels: np.ndarray, table: ClassTable, alpha: float) -> np.ndarray:
    """rgb8 camera image with each labelled pixel blended towards its class colour by `alpha` (unlabeled pixels,
    the table's ignore id, keep the camera's colour)."""
    colours = table.colorize(labels).astype(np.float32)
    blended = np.rint((1.0 - alpha) * camera.astype(np.float32) + alpha * colours).astype(np.uint8)
    return np.where((labels == table.ignore_index)[:, :, None], camera, blended)


def camera_rgb(msg: Any) -> np.ndarray | None:
    """The camera message as an HxWx3 rgb8 array (Image or CompressedImage), None when it is no colour image."""
    try:
        array, encoding = message_array(msg)
        return to_rgb8(array, encoding)
    except (ImageConversionError, ValueError):
        return None


def output_messages(kit: MessageKit, pipeline: SegmentationPipeline, result: FrameResult,
                    wanted: Collection[str] | None = None, camera: Any = None,
                    counts: OutputCounts | None = None) -> dict[str, Any]:
    """Messages of the enabled outputs for one result (empty when inference produced nothing).

    `wanted`: the outputs to build (None: every enabled one); `camera`: the frame's rgb camera message, which the
    overlay needs (without it, or when it is not a colour image of the labels' size, there is no overlay);
    `counts` records what was built.
    """
    if result.labels is None:
        return {}
    config = pipeline.config.outputs
    names = [name for name in enabled_outputs(config) if wanted is None or name in wanted]
    messages = {}
    if "labels" in names:
        messages["labels"] = kit.image(result.labels, "mono8", result.header)
    if "labels_color" in names:
        messages["labels_color"] = kit.image(pipeline.class_table.colorize(result.labels), "rgb8", result.header)
    if "confidence" in names and result.confidence is not None:
        messages["confidence"] = kit.image(result.confidence, "32FC1", result.header)
    if "overlay" in names and camera is not None:
        image = camera_rgb(camera)
        if image is not None and image.shape[:2] == result.labels.shape:
            messages["overlay"] = kit.image(
                overlay_image(image, result.labels, pipeline.class_table, config.overlay_alpha), "rgb8",
                result.header)
    if "routing" in names and result.routing is not None:
        routing = result.routing
        messages["routing"] = kit.multi_array(
            routing.weights, [f"level={','.join(routing.levels)}", f"modality={','.join(routing.modalities)}"])
    if counts is not None:
        counts.add(list(messages))
    return messages


def restamped_camera_info(info: Any, header: Any) -> Any:
    """A copy of a CameraInfo with `header` (the outputs' frame and stamp), as image_transport pairs them."""
    paired = copy.copy(info)
    paired.header = header
    return paired


def timing_message(kit: MessageKit, header: Any, latency_ms: float, processing_ms: float,
                   model_ms: float | None) -> Any:
    """std_msgs/Float64MultiArray of one frame's TIMING_FIELDS (model_ms NaN when the model did not run)."""
    values = [float(header.stamp.sec), float(header.stamp.nanosec), latency_ms, processing_ms,
              float("nan") if model_ms is None else model_ms]
    dim = kit.resolve("std_msgs/msg/MultiArrayDimension")(label=f"timing={','.join(TIMING_FIELDS)}",
                                                          size=len(values), stride=len(values))
    layout = kit.resolve("std_msgs/msg/MultiArrayLayout")(dim=[dim], data_offset=0)
    return kit.resolve("std_msgs/msg/Float64MultiArray")(layout=layout, data=values)


def class_names_json(table: ClassTable) -> str:
    """The class list for /mlesam/class_names: id -> name, palette and ignore id, as JSON."""
    return json.dumps({"dataset": table.dataset, "names": list(table.names),
                       "palette": [list(c) for c in table.palette], "ignore_index": table.ignore_index})


__all__ = ["OUTPUT_TOPICS", "OUTPUT_TYPES", "ALWAYS_COMPUTED", "CAMERA_INFO_TOPIC", "TIMING_TOPIC", "TIMING_FIELDS",
           "CLASS_NAMES_TOPIC", "LABEL_INFO_TOPIC", "DIAGNOSTICS_TOPIC", "enabled_outputs", "OutputCounts",
           "overlay_image", "camera_rgb", "output_messages", "restamped_camera_info", "timing_message",
           "class_names_json"]
