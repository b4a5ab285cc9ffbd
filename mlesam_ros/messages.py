"""Build ROS messages from numpy data for rclpy and rosbags alike.

rclpy message classes and rosbags' typestore dataclasses share field names but differ in a few Python
types (byte fields, numeric arrays); a `MessageKit` hides that, so the node, the replay and the
dataset-to-bag converter build the same messages with the same code.
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlesam_ros.health import DiagnosticEntry
from mlesam_ros.image_conversion import array_to_image_fields
from mlesam_ros.pointcloud import array_to_pointcloud_fields
from mlesam_ros.transforms import rotation_quaternion


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def message_type(msg: Any) -> str:
    """The 'pkg/msg/Type' name of an rclpy or rosbags message."""
    name = getattr(msg, "__msgtype__", None)  # rosbags dataclasses
    if name:
        return str(name)
    cls = type(msg)  # rclpy: class Type in module pkg.msg._type
    return f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"


def header_seconds(msg: Any) -> float:
    """A message's header stamp in seconds (float)."""
    return stamp_to_ns(msg.header.stamp) / 1e9


class MessageKit:
    """Constructs messages of one library: `MessageKit.rclpy()` or `MessageKit.rosbags(typestore)`."""

    def __init__(self, resolve: Callable[[str], type], as_byte: Callable[[int], Any],
                 as_uint8: Callable[[bytes], Any], as_float32: Callable[[np.ndarray], Any]) -> None:
        """`resolve` maps 'pkg/msg/Type' to a class; the others convert field values."""
        self.resolve = resolve
        self._as_byte = as_byte
        self._as_uint8 = as_uint8
        self._as_float32 = as_float32

    @classmethod
    def rclpy(cls) -> MessageKit:
        """Kit for rclpy message classes (imported lazily)."""
        def resolve(name: str) -> type:
            package, kind, type_name = name.split("/")
            return getattr(importlib.import_module(f"{package}.{kind}"), type_name)

        return cls(resolve, lambda value: bytes([value]), lambda data: data,
                   lambda values: array.array("f", np.ascontiguousarray(values, dtype=np.float32).tobytes()))

    @classmethod
    def rosbags(cls, typestore: Any) -> MessageKit:
        """Kit for a rosbags typestore's dataclasses."""
        return cls(lambda name: typestore.types[name], int, lambda data: np.frombuffer(data, dtype=np.uint8),
                   lambda values: np.ascontiguousarray(values, dtype=np.float32).reshape(-1))

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        """std_msgs/Header at `stamp_ns` nanoseconds."""
        time_cls = self.resolve("builtin_interfaces/msg/Time")
        stamp = time_cls(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
        return self.resolve("std_msgs/msg/Header")(stamp=stamp, frame_id=frame_id)

    def image(self, image: np.ndarray, encoding: str, header: Any) -> Any:
        """sensor_msgs/Image of `image` with `encoding` (dtype and channels must match it)."""
        fields = array_to_image_fields(image, encoding)
        fields["data"] = self._as_uint8(fields["data"])
        return self.resolve("sensor_msgs/msg/Image")(header=header, **fields)

    def image_from_fields(self, header: Any, **fields: Any) -> Any:
        """sensor_msgs/Image from raw fields (for deliberately malformed test data)."""
        fields["data"] = self._as_uint8(bytes(fields["data"]))
        return self.resolve("sensor_msgs/msg/Image")(header=header, **fields)

    def compressed_image(self, fmt: str, data: bytes, header: Any) -> Any:
        """sensor_msgs/CompressedImage with `format` and encoded `data`."""
        return self.resolve("sensor_msgs/msg/CompressedImage")(header=header, format=fmt,
                                                               data=self._as_uint8(bytes(data)))

    def pointcloud(self, points: np.ndarray, header: Any) -> Any:
        """sensor_msgs/PointCloud2 of a structured array (unorganised)."""
        fields = array_to_pointcloud_fields(points)
        field_cls = self.resolve("sensor_msgs/msg/PointField")
        fields["fields"] = [field_cls(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]]
        fields["data"] = self._as_uint8(fields["data"])
        return self.resolve("sensor_msgs/msg/PointCloud2")(header=header, **fields)

    def event_packet(self, encoding: str, events: bytes, sensor_size: tuple[int, int], header: Any, seq: int = 0,
                     time_base: int = 0) -> Any:
        """event_camera_msgs/EventPacket of encoded `events` from a sensor of size (H, W)."""
        return self.resolve("event_camera_msgs/msg/EventPacket")(
            header=header, height=int(sensor_size[0]), width=int(sensor_size[1]), seq=int(seq),
            time_base=int(time_base), encoding=encoding, is_bigendian=False, events=self._as_uint8(bytes(events)))

    def tf_message(self, transforms: Sequence[tuple[str, str, np.ndarray]], stamp_ns: int = 0) -> Any:
        """tf2_msgs/TFMessage of (parent frame, child frame, 4x4 parent <- child) transforms."""
        vector = self.resolve("geometry_msgs/msg/Vector3")
        quaternion = self.resolve("geometry_msgs/msg/Quaternion")
        stamped = []
        for parent, child, matrix in transforms:
            matrix = np.asarray(matrix, dtype=np.float64)
            x, y, z, w = rotation_quaternion(matrix[:3, :3])
            transform = self.resolve("geometry_msgs/msg/Transform")(
                translation=vector(x=float(matrix[0, 3]), y=float(matrix[1, 3]), z=float(matrix[2, 3])),
                rotation=quaternion(x=x, y=y, z=z, w=w))
            stamped.append(self.resolve("geometry_msgs/msg/TransformStamped")(
                header=self.header(stamp_ns, parent), child_frame_id=child, transform=transform))
        return self.resolve("tf2_msgs/msg/TFMessage")(transforms=stamped)

    def camera_info(self, k: np.ndarray, size: tuple[int, int], header: Any) -> Any:
        """sensor_msgs/CameraInfo of a distortion-free pinhole camera with intrinsics `k` and size (H, W)."""
        k = np.asarray(k, dtype=np.float64).reshape(3, 3)
        p = np.concatenate([k, np.zeros((3, 1))], axis=1)
        roi = self.resolve("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0,
                                                               do_rectify=False)
        return self.resolve("sensor_msgs/msg/CameraInfo")(
            header=header, height=int(size[0]), width=int(size[1]), distortion_model="plumb_bob",
            d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0,
            roi=roi)

    def multi_array(self, values: np.ndarray, labels: Sequence[str]) -> Any:
        """std_msgs/Float32MultiArray of a C-order array, one labelled dimension per axis."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        dim_cls = self.resolve("std_msgs/msg/MultiArrayDimension")
        strides = [int(np.prod(values.shape[i:])) for i in range(values.ndim)]
        dims = [dim_cls(label=label, size=int(size), stride=stride)
                for label, size, stride in zip(labels, values.shape, strides, strict=True)]
        layout = self.resolve("std_msgs/msg/MultiArrayLayout")(dim=dims, data_offset=0)
        return self.resolve("std_msgs/msg/Float32MultiArray")(layout=layout, data=self._as_float32(values))

    def diagnostic_array(self, entries: Sequence[DiagnosticEntry], header: Any) -> Any:
        """diagnostic_msgs/DiagnosticArray with one status per entry."""
        key_value = self.resolve("diagnostic_msgs/msg/KeyValue")
        status_cls = self.resolve("diagnostic_msgs/msg/DiagnosticStatus")
        statuses = [status_cls(level=self._as_byte(e.level), name=e.name, message=e.message,
                               hardware_id=e.hardware_id,
                               values=[key_value(key=k, value=v) for k, v in e.values.items()])
                    for e in entries]
        return self.resolve("diagnostic_msgs/msg/DiagnosticArray")(header=header, status=statuses)

    def string(self, text: str) -> Any:
        """std_msgs/String."""
        return self.resolve("std_msgs/msg/String")(data=text)

    def label_info(self, names: Sequence[str], header: Any, threshold: float = 0.0) -> Any:
        """vision_msgs/LabelInfo: class id -> name (raises LookupError/ImportError when vision_msgs is absent)."""
        vision_class = self.resolve("vision_msgs/msg/VisionClass")
        class_map = [vision_class(class_id=i, class_name=name) for i, name in enumerate(names)]
        return self.resolve("vision_msgs/msg/LabelInfo")(header=header, class_map=class_map,
                                                         threshold=float(threshold))


def diagnostic_level(status: Any) -> int:
    """DiagnosticStatus.level as an int (rclpy gives bytes, rosbags an int)."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)


__all__ = ["MessageKit", "message_type", "stamp_to_ns", "header_seconds", "diagnostic_level"]
