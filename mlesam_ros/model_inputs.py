"""Sensor messages -> the model's input image of each modality (uint8, or float32 on the 0-255 scale).

Every image input may be a sensor_msgs/Image or a CompressedImage (image_transport's compressed or
compressedDepth, `mlesam_ros.compressed`). Colour cameras give RGB; depth (16UC1 mm / 32FC1 m) becomes HHA or
a depth image with the shared `mlesam_core.sensors` encodings (a 3-channel 8-bit depth message is taken as
already encoded); event frames give their two count channels (positive, negative), and an event camera's
packets the frame rendered from the events of the frame's window; LiDAR arrives as a projected image (8-bit,
already encoded, or 32FC3 range/intensity/height) or as a PointCloud2 projected with the camera model. Images
with one or two channels stay that way: the Segmenter maps them to three (`modalities.channel_sources`) on the
model's device, so the host makes no 3-channel copy. Every problem raises `InputError` naming it; the pipeline
then treats that modality as absent for the frame.

Sizes (`FrameSize`): the driving image's own size is the frame's (or `camera.image_size` where set); every other
image must have it. A frame far larger than the model's input (`preprocess.beyond_model_size`) is decoded at the
model's size: each image is resized right after it is read (as the data set loaders resize, raw depth by nearest
neighbour), before its per-pixel work (colour conversion, HHA, LiDAR encoding); point clouds are projected at that
size. The camera model
of camera_info is used where it fits the frame: as is at the same size, scaled at another size of the same aspect
ratio, and not at all for another aspect ratio (HHA and point-cloud projection are then absent, each reported).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from mlesam_core.data.base import resize_to
from mlesam_core.preprocess import beyond_model_size
from mlesam_core.sensors import (
    DepthEncoding,
    depth_to_image,
    hha_encoder,
    lidar_image_to_uint8,
    render_event_frame,
    same_aspect,
    scale_camera_matrix,
)
from mlesam_ros.compressed import compressed_to_array
from mlesam_ros.events import EventWindow
from mlesam_ros.image_conversion import (
    ImageConversionError,
    depth_to_metres,
    encoding_info,
    image_msg_to_array,
    to_rgb8,
)
from mlesam_ros.messages import message_type
from mlesam_ros.params import COMPRESSED_TYPE, EVENT_PACKET_TYPE, POINTCLOUD_TYPE, SegmentConfig
from mlesam_ros.pointcloud import PointCloudError, pointcloud_to_lidar_image
from mlesam_ros.transforms import TransformLookup, TransformTree

logger = logging.getLogger(__name__)

ModelImage = np.ndarray | torch.Tensor  # what Segmenter.predict takes per modality


class InputError(ValueError):
    """A sensor message cannot become a model input; the message names the problem."""


@dataclass(frozen=True)
class SensorMessage:
    """A sensor message and its type, read once when it arrives; its decoding follows the type."""

    type: str  # 'pkg/msg/Type'
    msg: Any

    @classmethod
    def of(cls, msg: Any) -> SensorMessage:
        """`msg` with its type."""
        return cls(message_type(msg), msg)

    @property
    def is_image(self) -> bool:
        """An Image or CompressedImage (not a point cloud, not event packets)."""
        return self.type not in (POINTCLOUD_TYPE, EVENT_PACKET_TYPE)


@dataclass(frozen=True)
class RawImage:
    """An image message read into an array (as sent: no per-pixel work yet) and the encoding of the array."""

    array: np.ndarray
    encoding: str

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.array.shape[0]), int(self.array.shape[1])


@dataclass(frozen=True)
class FrameSize:
    """One frame's sizes (H, W): the sensors' (what labels come back at) and the one its inputs are decoded at
    (the model's when the sensors' has more pixels, else the sensors')."""

    sensor: tuple[int, int]
    work: tuple[int, int]
    source: str  # what set the sensors' size, for messages ("the driving rgb image", "camera.image_size")

    @property
    def resized(self) -> bool:
        """Whether the inputs are resized to the model's size on input."""
        return self.work != self.sensor


@dataclass
class CameraModel:
    """Intrinsics K (3x3), the projection P (3x4, rectified; None when camera_info leaves it 0), the image size
    (H, W) they belong to ((0, 0): not given) and the camera's frame."""

    k: np.ndarray
    size: tuple[int, int]
    p: np.ndarray | None = None
    frame_id: str = ""


def camera_model_from_info(msg: Any) -> CameraModel:
    """CameraModel from a sensor_msgs/CameraInfo (rclpy or rosbags); InputError saying what is wrong with K."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(k).all():
        raise InputError(f"its K has non-finite values: {k.reshape(-1).tolist()}")
    if not k.any():
        raise InputError("its K is all zeros (a driver that publishes no calibration: calibrate the camera, or set "
                         "camera.intrinsics)")
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InputError(f"its K has focal lengths fx {k[0, 0]:g}, fy {k[1, 1]:g} (both must be > 0): "
                         f"{k.reshape(-1).tolist()}")
    p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    usable_p = bool(np.isfinite(p).all() and p[0, 0] > 0 and p[1, 1] > 0)
    return CameraModel(k, (int(msg.height), int(msg.width)), p if usable_p else None, str(msg.header.frame_id))


class InputDecoder:
    """Turns the messages of one synchronised frame into model images, one modality at a time."""

    def __init__(self, config: SegmentConfig, model_size: tuple[int, int]) -> None:
        """Decoder following `config` (depth encoding, camera settings, event count scale) for a model whose input
        is `model_size` (H, W)."""
        self.config = config
        self.model_size = (int(model_size[0]), int(model_size[1]))
        self.event_count_scale = config.events.count_scale
        self.depth_encoding = DepthEncoding(camera_height=config.depth.camera_height)
        self.cam_from_lidar = np.asarray(config.lidar.cam_from_lidar, dtype=np.float64).reshape(4, 4)
        fixed_k = config.camera.intrinsics
        self.fixed_k = np.asarray(fixed_k, dtype=np.float64).reshape(3, 3) if fixed_k else None
        self.camera_info: CameraModel | None = None
        self.camera_info_problem = ""  # what was wrong with the newest CameraInfo ("" when it was taken)
        self._reported_sizes: set[tuple[tuple[int, int], tuple[int, int]]] = set()  # (camera_info, frame) sizes
        # camera <- LiDAR: from these transforms (/tf_static) when any are known, else lidar.cam_from_lidar
        self.transforms: TransformLookup = TransformTree()
        self.primary_frame = ""  # the primary's header frame_id, the camera frame when camera_info names none
        self._extrinsic_source = ""
        # HHA where the model runs: on its GPU (handed over there), else numpy or, with model.compile, compiled
        self.hha = hha_encoder(config.model.device, config.model.compile)
        self._decoders: dict[str, Callable[[np.ndarray, str, FrameSize], ModelImage]] = {
            "rgb": self._rgb, "depth": self._depth, "event": self._event, "lidar": self._lidar}

    def set_camera_info(self, msg: Any) -> None:
        """Take the newest CameraInfo (the camera model for HHA and point-cloud projection); InputError saying what
        is wrong with one that cannot be used (the camera model then is none until a usable one arrives)."""
        try:
            camera = camera_model_from_info(msg)
        except InputError as exc:
            self.camera_info, self.camera_info_problem = None, str(exc)
            raise
        self.camera_info, self.camera_info_problem = camera, ""

    def read(self, sensor: str, message: SensorMessage) -> RawImage:
        """An image message as its array (no per-pixel work, so its size is known before any is done)."""
        try:
            array, encoding = message_array(message.msg, message.type)
        except ImageConversionError as exc:
            raise InputError(str(exc)) from None
        if sensor == self.config.primary:
            self.primary_frame = str(message.msg.header.frame_id)
        return RawImage(array, encoding)

    def frame_size(self, size: tuple[int, int] | None, source: str) -> FrameSize:
        """The sizes of a frame whose first readable image (the driver's, unless it failed) has `size` (None: none
        has), set by `source`: `camera.image_size` where set, else that image's, else camera_info's (a frame of
        point clouds alone)."""
        if self.config.camera.image_size:
            height, width = self.config.camera.image_size
            sensor, source = (height, width), "camera.image_size"
        elif size is not None:
            sensor = size
        elif self.camera_info is not None and all(self.camera_info.size):
            sensor, source = self.camera_info.size, f"camera_info on {self.config.camera_info_topic}"
        else:
            raise InputError(f"no image in this frame gives its size (a PointCloud2 is projected at the camera's "
                             f"size: camera.image_size, or camera_info on {self.config.camera_info_topic})")
        work = self.model_size if beyond_model_size(sensor, self.model_size) else sensor
        return FrameSize(sensor, work, source)

    def decode_image(self, sensor: str, raw: RawImage, frame: FrameSize) -> ModelImage:
        """The model image of `sensor` from its read message, as `Segmenter.predict` takes it at `frame.work`:
        HxW or HxWxC (C 1-3), uint8, or float32 on the 0-255 scale for generic float input; a numpy array, or
        for HHA with the model on a GPU a tensor there."""
        if raw.size != frame.sensor:
            raise InputError(f"size {raw.size[1]}x{raw.size[0]} differs from the frame's {frame.sensor[1]}x"
                             f"{frame.sensor[0]} ({frame.source})")
        try:
            return self._decoders.get(sensor, self._color)(self._shrink(sensor, raw, frame), raw.encoding, frame)
        except ImageConversionError as exc:
            raise InputError(str(exc)) from None

    def project_cloud(self, message: SensorMessage, frame: FrameSize) -> np.ndarray:
        """A PointCloud2 as the projected LiDAR image at `frame.work` (the camera model scaled to it)."""
        msg = message.msg
        _, projection = self.camera(frame)
        try:
            return pointcloud_to_lidar_image(msg, self.lidar_extrinsic(str(msg.header.frame_id)), projection,
                                             frame.work)
        except PointCloudError as exc:
            raise InputError(str(exc)) from None

    def render_events(self, sensor: str, window: EventWindow, frame: FrameSize) -> np.ndarray:
        """The window's events rendered as the model's event frame (render_event_frame at events.count_scale) at
        the event sensor's size, resized as the data set loaders resize event images (nearest) to `frame.work`."""
        image = render_event_frame(window.x, window.y, window.polarity, window.sensor_size, self.event_count_scale)
        if window.sensor_size != frame.work:
            image = resize_to(image, frame.work, sensor)
        return image[:, :, :2]

    def camera(self, frame: FrameSize) -> tuple[np.ndarray, np.ndarray]:
        """(K, projection) for images of `frame.work`: from camera.intrinsics (K of the frame's sensor size), else
        the newest camera_info, as is at the frame's size, scaled at another size of the same aspect ratio (each
        size pair reported once); InputError for camera_info of another aspect ratio, a refused one, or none. The
        projection is camera_info's P (rectified, as image_geometry's project3dToPixel) when it has one, else K."""
        topic = self.config.camera_info_topic
        if self.fixed_k is not None:
            k = projection = self.fixed_k
            size = frame.sensor
        elif self.camera_info is not None:
            info = self.camera_info
            size = info.size if all(info.size) else frame.sensor
            if size != frame.sensor:
                self._report_sizes(size, frame)
                if not same_aspect(size, frame.sensor):
                    raise InputError(f"camera_info on {topic} is {size[1]}x{size[0]}, another aspect ratio than the "
                                     f"frame's {frame.sensor[1]}x{frame.sensor[0]} ({frame.source}): its camera "
                                     f"model does not fit these images")
            k, projection = info.k, info.p if info.p is not None else info.k
        elif self.camera_info_problem:
            raise InputError(f"no usable camera intrinsics: the CameraInfo on {topic} was refused "
                             f"({self.camera_info_problem}) and camera.intrinsics is empty")
        else:
            raise InputError(f"no camera intrinsics yet (nothing on {topic} and camera.intrinsics is empty)")
        if size != frame.work:
            k, projection = scale_camera_matrix(k, size, frame.work), scale_camera_matrix(projection, size, frame.work)
        return k, projection

    def _report_sizes(self, info_size: tuple[int, int], frame: FrameSize) -> None:
        """Say once per pair of sizes that camera_info disagrees with the images, and what is done about it."""
        if (info_size, frame.sensor) in self._reported_sizes:
            return
        self._reported_sizes.add((info_size, frame.sensor))
        what = ("the same aspect ratio: its camera model is scaled to the images" if same_aspect(info_size,
                                                                                                frame.sensor)
                else "another aspect ratio: its camera model is not used (HHA depth and point-cloud projection are "
                     "absent; the frame is labelled from the other inputs)")
        logger.warning("camera_info on %s is %dx%d, the images %dx%d (%s): %s", self.config.camera_info_topic,
                       info_size[1], info_size[0], frame.sensor[1], frame.sensor[0], frame.source, what)

    def lidar_extrinsic(self, cloud_frame: str) -> np.ndarray:
        """camera <- LiDAR for a cloud in `cloud_frame`: from the transforms when any are known (a cloud frame
        they do not connect to the camera is then an error), else the lidar.cam_from_lidar parameter. Logs the
        source whenever it changes."""
        if self.transforms.available():
            camera = (self.camera_info.frame_id if self.camera_info is not None else "") or self.primary_frame
            if not camera or not cloud_frame:
                raise InputError(f"cannot look up camera <- LiDAR: no {'camera' if not camera else 'cloud'} frame_id "
                                 f"(camera: camera_info or the {self.config.primary} header; cloud: its header)")
            matrix = self.transforms.lookup(camera, cloud_frame)
            if matrix is None:
                known = getattr(self.transforms, "frames", None)
                raise InputError(f"no transform {camera} <- {cloud_frame} in the transforms"
                                 + (f" (frames: {', '.join(known)})" if known else ""))
            source = f"transforms ({camera} <- {cloud_frame})"
        else:
            matrix, source = self.cam_from_lidar, "the lidar.cam_from_lidar parameter (no transforms received)"
        if source != self._extrinsic_source:
            logger.info("LiDAR extrinsic from %s", source)
            self._extrinsic_source = source
        return matrix

    def _shrink(self, sensor: str, raw: RawImage, frame: FrameSize) -> np.ndarray:
        """The read image at `frame.work`: as it is, or resized as the data set loaders resize (`resize_to`), raw
        depth by nearest neighbour (a reading is moved, never blended with its neighbours or the holes)."""
        if not frame.resized:
            return raw.array
        array = np.ascontiguousarray(raw.array)  # a padded row step (Image.step) is not what cv2 reads
        try:
            if sensor == "depth" and encoding_info(raw.encoding).channels == 1:
                height, width = frame.work
                return cv2.resize(array, (width, height), interpolation=cv2.INTER_NEAREST)
            return resize_to(array, frame.work, sensor)
        except cv2.error as exc:
            raise InputError(f"cannot resize {raw.encoding} to the model's size: {exc}") from None

    def _rgb(self, array: np.ndarray, encoding: str, frame: FrameSize) -> np.ndarray:
        info = encoding_info(encoding)
        if info.order is None and info.channels in (1, 2) and (info.dtype.kind == "f" or info.channels == 2):
            # a depth image (32FC1) or two-channel data on the camera topic: not a picture the rgb expert takes
            raise InputError(f"the rgb camera takes colour or grey images (rgb8, bgr8, rgba8, bgra8, mono8, their "
                             f"16-bit forms, 8UC1/3/4, 3/4-channel float on the 0-255 scale), got {encoding} "
                             f"(another sensor's image on its topic?)")
        return self._color(array, encoding, frame)

    def _color(self, array: np.ndarray, encoding: str, frame: FrameSize) -> np.ndarray:
        info = encoding_info(encoding)
        if info.order is None and info.dtype.kind == "f":
            array = array.astype(np.float32, copy=False)  # generic float data on the 0-255 scale
            return array[:, :, :3] if array.ndim == 3 else array  # alpha dropped
        if info.order is None and info.channels == 2:
            return _to_uint8(array, encoding)  # generic 2-channel (e.g. AoLP sin/cos)
        return to_rgb8(array, encoding)

    def _depth(self, array: np.ndarray, encoding: str, frame: FrameSize) -> ModelImage:
        info = encoding_info(encoding)
        if info.channels == 3 and info.dtype == np.uint8:
            return array  # already encoded (HHA or depth image)
        metres = depth_to_metres(array, encoding)
        valid = float(np.isfinite(metres).mean())
        if valid < self.config.depth.min_valid_fraction:
            raise InputError(f"only {valid:.1%} of depth pixels are valid (NaN/Inf/0 elsewhere); "
                             f"depth.min_valid_fraction is {self.config.depth.min_valid_fraction:.1%}")
        if self.config.depth.encoding == "depth":
            return depth_to_image(metres, self.depth_encoding)  # one channel, repeated on the device
        k, _ = self.camera(frame)
        return self.hha(metres, k, self.depth_encoding)

    def _event(self, array: np.ndarray, encoding: str, frame: FrameSize) -> np.ndarray:
        info = encoding_info(encoding)
        if info.channels not in (2, 3) or info.dtype not in (np.uint8, np.uint16):
            raise InputError(f"an event frame needs 2 or 3 channels of 8/16-bit counts (positive, negative), "
                             f"got {encoding}")
        # the counts of both polarities; the third channel of an event frame is 0 by convention (the Segmenter
        # adds it), so a third channel in the message is dropped (a view, no copy)
        return _to_uint8(array, encoding, saturate=True)[:, :, :2]

    def _lidar(self, array: np.ndarray, encoding: str, frame: FrameSize) -> np.ndarray:
        info = encoding_info(encoding)
        if info.channels == 3 and info.dtype == np.uint8:
            return array  # already encoded (range, intensity, height)
        if info.channels == 3 and info.dtype.kind == "f":
            return lidar_image_to_uint8(np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0))
        raise InputError(f"a LiDAR image needs 3 channels (8-bit encoded or 32FC3 range/intensity/height), "
                         f"got {encoding}")


def message_array(msg: Any, msg_type: str | None = None) -> tuple[np.ndarray, str]:
    """(array, encoding of the array) of a sensor_msgs/Image or CompressedImage (compressed or compressedDepth);
    `msg_type`: the message's type where the caller has read it."""
    if (msg_type or message_type(msg)) == COMPRESSED_TYPE:
        return compressed_to_array(msg)
    return image_msg_to_array(msg), str(msg.encoding)


def _to_uint8(array: np.ndarray, encoding: str, saturate: bool = False) -> np.ndarray:
    """8-bit data as is; 16-bit counts clipped (`saturate`) or scaled to 0-255."""
    info = encoding_info(encoding)
    if info.dtype == np.uint8:
        return array
    if info.dtype == np.uint16:
        scaled = array if saturate else np.rint(array.astype(np.float32) * (255.0 / 65535.0))
        return np.clip(scaled, 0, 255).astype(np.uint8)
    raise InputError(f"expected 8- or 16-bit unsigned data, got {encoding}")


__all__ = ["InputError", "SensorMessage", "RawImage", "FrameSize", "CameraModel", "camera_model_from_info",
           "InputDecoder", "message_array"]
