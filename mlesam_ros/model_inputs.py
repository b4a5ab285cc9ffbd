"""Sensor messages -> the model's input image of each modality (uint8, or float32 on the 0-255 scale).

Every image input may be a sensor_msgs/Image or a CompressedImage (image_transport's compressed or
compressedDepth, `mlesam_ros.compressed`). Colour cameras give RGB; depth (16UC1 mm / 32FC1 m) becomes HHA or
a depth image with the shared `mlesam_core.sensors` encodings (a 3-channel 8-bit depth message is taken as
already encoded); event frames give their two count channels (positive, negative); LiDAR arrives as a projected
image (8-bit, already encoded, or 32FC3 range/intensity/height) or as a PointCloud2 projected with the camera
model. Images with one or two channels stay that way: the Segmenter maps them to three
(`modalities.channel_sources`) on the model's device, so the host makes no 3-channel copy. Every problem raises
`InputError` naming it; the pipeline then treats that modality as absent for the frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mlesam_core.data.base import resize_to
from mlesam_core.sensors import DepthEncoding, depth_to_image, hha_encoder, lidar_image_to_uint8, render_event_frame
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
from mlesam_ros.params import COMPRESSED_TYPE, POINTCLOUD_TYPE, SegmentConfig
from mlesam_ros.pointcloud import PointCloudError, pointcloud_to_lidar_image
from mlesam_ros.transforms import TransformLookup, TransformTree

logger = logging.getLogger(__name__)

ModelImage = np.ndarray | torch.Tensor  # what Segmenter.predict takes per modality


class InputError(ValueError):
    """A sensor message cannot become a model input; the message names the problem."""


@dataclass
class CameraModel:
    """Intrinsics K (3x3), the projection P (3x4, rectified; None when camera_info leaves it 0), the image size
    (H, W) they belong to and the camera's frame."""

    k: np.ndarray
    size: tuple[int, int]
    p: np.ndarray | None = None
    frame_id: str = ""


def camera_model_from_info(msg: Any) -> CameraModel:
    """CameraModel from a sensor_msgs/CameraInfo (rclpy or rosbags)."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise InputError(f"camera_info: K is not a valid camera matrix: {k.reshape(-1).tolist()}")
    p = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
    usable_p = bool(np.isfinite(p).all() and p[0, 0] > 0 and p[1, 1] > 0)
    return CameraModel(k, (int(msg.height), int(msg.width)), p if usable_p else None, str(msg.header.frame_id))


class InputDecoder:
    """Turns the messages of one synchronised frame into model images, one modality at a time."""

    def __init__(self, config: SegmentConfig, event_count_scale: float = 1.0) -> None:
        """Decoder following `config` (depth encoding, LiDAR input mode, camera settings); event windows are
        rendered at the model's `event_count_scale` (mlesam_core.sensors.event_count_scale)."""
        self.config = config
        self.event_count_scale = event_count_scale
        self.depth_encoding = DepthEncoding(camera_height=config.depth.camera_height)
        self.cam_from_lidar = np.asarray(config.lidar.cam_from_lidar, dtype=np.float64).reshape(4, 4)
        fixed_k = config.camera.intrinsics
        self.fixed_k = np.asarray(fixed_k, dtype=np.float64).reshape(3, 3) if fixed_k else None
        self.camera_info: CameraModel | None = None
        # camera <- LiDAR: from these transforms (/tf_static) when any are known, else lidar.cam_from_lidar
        self.transforms: TransformLookup = TransformTree()
        self.primary_frame = ""  # the primary's header frame_id, the camera frame when camera_info names none
        self._extrinsic_source = ""
        # HHA where the model runs: on its GPU (handed over there), else numpy or, with model.compile, compiled
        self.hha = hha_encoder(config.model.device, config.model.compile)
        self._decoders: dict[str, Callable[[np.ndarray, str], ModelImage]] = {
            "rgb": self._rgb, "depth": self._depth, "event": self._event, "lidar": self._lidar}

    def set_camera_info(self, msg: Any) -> None:
        """Take the newest CameraInfo (intrinsics for HHA and LiDAR projection; expected size)."""
        self.camera_info = camera_model_from_info(msg)

    def reference_size(self) -> tuple[int, int] | None:
        """Expected (H, W) of every input: the image_size parameter, else camera_info; None: the pipeline takes
        the driving sensor's decoded size."""
        if self.config.camera.image_size:
            height, width = self.config.camera.image_size
            return height, width
        if self.camera_info is not None:
            return self.camera_info.size
        return None

    def intrinsics(self) -> np.ndarray:
        """K from the `camera.intrinsics` parameter or the newest camera_info."""
        if self.fixed_k is not None:
            return self.fixed_k
        if self.camera_info is None:
            raise InputError(f"no camera intrinsics yet (nothing on {self.config.camera_info_topic} "
                             f"and camera.intrinsics is empty)")
        return self.camera_info.k

    def projection(self) -> np.ndarray:
        """What projects camera points to pixels: P of camera_info (rectified, as image_geometry's
        project3dToPixel) when it has one, else K."""
        if self.fixed_k is None and self.camera_info is not None and self.camera_info.p is not None:
            return self.camera_info.p
        return self.intrinsics()

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

    def decode(self, modality: str, msg: Any, size: tuple[int, int] | None) -> ModelImage:
        """The model image of `modality` from its message, as `Segmenter.predict` takes it: HxW or HxWxC
        (C 1-3), uint8, or float32 on the 0-255 scale for generic float input; a numpy array, or for HHA with
        the model on a GPU a tensor there; `size` is the expected (H, W) (None: not checked)."""
        image: ModelImage
        try:
            if isinstance(msg, EventWindow):
                image = self._event_window(msg, size)
            elif modality == "lidar" and message_type(msg) == POINTCLOUD_TYPE:
                if size is None:
                    raise InputError("a PointCloud2 needs the image size (camera_info, camera.image_size or a "
                                     "decodable driving image)")
                image = pointcloud_to_lidar_image(msg, self.lidar_extrinsic(str(msg.header.frame_id)),
                                                  self.projection(), size)
            else:
                if modality == self.config.primary:
                    self.primary_frame = str(msg.header.frame_id)
                array, encoding = message_array(msg)
                image = self._decoders.get(modality, self._color)(array, encoding)
        except (ImageConversionError, PointCloudError) as exc:
            raise InputError(str(exc)) from None
        if size is not None and image.shape[:2] != tuple(size):
            raise InputError(f"size {image.shape[1]}x{image.shape[0]} does not match the expected "
                             f"{size[1]}x{size[0]}")
        return image

    def _rgb(self, array: np.ndarray, encoding: str) -> np.ndarray:
        info = encoding_info(encoding)
        if info.order is None and info.channels in (1, 2) and (info.dtype.kind == "f" or info.channels == 2):
            # a depth image (32FC1) or two-channel data on the camera topic: not a picture the rgb expert takes
            raise InputError(f"the rgb camera takes colour or grey images (rgb8, bgr8, rgba8, bgra8, mono8, their "
                             f"16-bit forms, 8UC1/3/4, 3/4-channel float on the 0-255 scale), got {encoding} "
                             f"(another sensor's image on its topic?)")
        return self._color(array, encoding)

    def _color(self, array: np.ndarray, encoding: str) -> np.ndarray:
        info = encoding_info(encoding)
        if info.order is None and info.dtype.kind == "f":
            array = array.astype(np.float32, copy=False)  # generic float data on the 0-255 scale
            return array[:, :, :3] if array.ndim == 3 else array  # alpha dropped
        if info.order is None and info.channels == 2:
            return _to_uint8(array, encoding)  # generic 2-channel (e.g. AoLP sin/cos)
        return to_rgb8(array, encoding)

    def _depth(self, array: np.ndarray, encoding: str) -> ModelImage:
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
        return self.hha(metres, self.intrinsics(), self.depth_encoding)

    def _event(self, array: np.ndarray, encoding: str) -> np.ndarray:
        info = encoding_info(encoding)
        if info.channels not in (2, 3) or info.dtype not in (np.uint8, np.uint16):
            raise InputError(f"an event frame needs 2 or 3 channels of 8/16-bit counts (positive, negative), "
                             f"got {encoding}")
        # the counts of both polarities; the third channel of an event frame is 0 by convention (the Segmenter
        # adds it), so a third channel in the message is dropped (a view, no copy)
        return _to_uint8(array, encoding, saturate=True)[:, :, :2]

    def _event_window(self, window: EventWindow, size: tuple[int, int] | None) -> np.ndarray:
        """The window's events rendered as the model's event frame (render_event_frame at the model's count
        scale) at the sensor's size, resized as the data set loaders resize event images (nearest) when the
        camera's size differs."""
        frame = render_event_frame(window.x, window.y, window.polarity, window.sensor_size, self.event_count_scale)
        if size is not None and tuple(size) != window.sensor_size:
            frame = resize_to(frame, (size[0], size[1]), "event")
        return frame[:, :, :2]

    def _lidar(self, array: np.ndarray, encoding: str) -> np.ndarray:
        info = encoding_info(encoding)
        if info.channels == 3 and info.dtype == np.uint8:
            return array  # already encoded (range, intensity, height)
        if info.channels == 3 and info.dtype.kind == "f":
            return lidar_image_to_uint8(np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0))
        raise InputError(f"a LiDAR image needs 3 channels (8-bit encoded or 32FC3 range/intensity/height), "
                         f"got {encoding}")


def message_array(msg: Any) -> tuple[np.ndarray, str]:
    """(array, encoding of the array) of a sensor_msgs/Image or CompressedImage (compressed or compressedDepth)."""
    if message_type(msg) == COMPRESSED_TYPE:
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


__all__ = ["InputError", "CameraModel", "camera_model_from_info", "InputDecoder", "message_array"]
