"""The node's output topics and how a FrameResult becomes their messages (shared by the node and the replay).

Topic names are relative, so a node namespace applies to them; the replay writes them under '/'.
"""

from __future__ import annotations

import json
from typing import Any

from mlesam_core.data.classes import ClassTable
from mlesam_ros.messages import MessageKit
from mlesam_ros.params import OutputParams
from mlesam_ros.pipeline import FrameResult, SegmentationPipeline

OUTPUT_TOPICS = {
    "labels": "mlesam/labels",  # mono8 class ids, 255 = unlabeled
    "labels_color": "mlesam/labels_color",  # rgb8, class table palette
    "confidence": "mlesam/confidence",  # 32FC1, probability of the chosen class
    "routing": "mlesam/routing",  # Float32MultiArray [level, modality]
}
OUTPUT_TYPES = {"labels": "sensor_msgs/msg/Image", "labels_color": "sensor_msgs/msg/Image",
                "confidence": "sensor_msgs/msg/Image", "routing": "std_msgs/msg/Float32MultiArray"}
CLASS_NAMES_TOPIC = "mlesam/class_names"  # std_msgs/String JSON, transient-local (always)
LABEL_INFO_TOPIC = "mlesam/label_info"  # vision_msgs/LabelInfo, transient-local (when vision_msgs is installed)
DIAGNOSTICS_TOPIC = "/diagnostics"


def enabled_outputs(outputs: OutputParams) -> list[str]:
    """Names of the outputs switched on (keys of OUTPUT_TOPICS)."""
    return [name for name in OUTPUT_TOPICS if getattr(outputs, name)]


def output_messages(kit: MessageKit, pipeline: SegmentationPipeline, result: FrameResult) -> dict[str, Any]:
    """Messages of the enabled outputs for one result (empty when inference produced nothing)."""
    if result.labels is None:
        return {}
    names = enabled_outputs(pipeline.config.outputs)
    messages = {}
    if "labels" in names:
        messages["labels"] = kit.image(result.labels, "mono8", result.header)
    if "labels_color" in names:
        messages["labels_color"] = kit.image(pipeline.class_table.colorize(result.labels), "rgb8", result.header)
    if "confidence" in names and result.confidence is not None:
        messages["confidence"] = kit.image(result.confidence, "32FC1", result.header)
    if "routing" in names and result.routing is not None:
        routing = result.routing
        messages["routing"] = kit.multi_array(
            routing.weights, [f"level={','.join(routing.levels)}", f"modality={','.join(routing.modalities)}"])
    return messages


def class_names_json(table: ClassTable) -> str:
    """The class list for /mlesam/class_names: id -> name, palette and ignore id, as JSON."""
    return json.dumps({"dataset": table.dataset, "names": list(table.names),
                       "palette": [list(c) for c in table.palette], "ignore_index": table.ignore_index})


__all__ = ["OUTPUT_TOPICS", "OUTPUT_TYPES", "CLASS_NAMES_TOPIC", "LABEL_INFO_TOPIC", "DIAGNOSTICS_TOPIC",
           "enabled_outputs",
           "output_messages", "class_names_json"]
