"""The class list in the vision_msgs convention (LabelInfo), built for any message library that has the type."""

from __future__ import annotations

import pytest
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from mlesam_core.data.classes import DELIVER
from mlesam_ros.messages import MessageKit

# vision_msgs (ROS 2 Humble/Jazzy) definitions: not installable here, so they are registered from their text
VISION_CLASS = "uint16 class_id\nstring class_name\n"
LABEL_INFO = "std_msgs/Header header\nvision_msgs/VisionClass[] class_map\nfloat32 threshold\n"


def vision_typestore():
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = {}
    types.update(get_types_from_msg(VISION_CLASS, "vision_msgs/msg/VisionClass"))
    types.update(get_types_from_msg(LABEL_INFO, "vision_msgs/msg/LabelInfo"))
    store.register(types)
    return store


def test_label_info_maps_every_class_id_to_its_name_and_survives_cdr():
    store = vision_typestore()
    kit = MessageKit.rosbags(store)
    msg = kit.label_info(DELIVER.names, kit.header(0, ""))
    raw = store.serialize_cdr(msg, "vision_msgs/msg/LabelInfo")
    back = store.deserialize_cdr(raw, "vision_msgs/msg/LabelInfo")
    assert [(c.class_id, c.class_name) for c in back.class_map] == list(enumerate(DELIVER.names))
    assert back.threshold == 0.0


def test_label_info_is_unavailable_without_vision_msgs():
    kit = MessageKit.rosbags(get_typestore(Stores.ROS2_HUMBLE))
    with pytest.raises(KeyError):
        kit.label_info(DELIVER.names, kit.header(0, ""))
