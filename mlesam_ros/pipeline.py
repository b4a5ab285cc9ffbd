"""The ROS-free segmentation pipeline: messages -> synchronised frames -> model inputs -> Segmenter -> results.

The node and the replay both run it: `add` takes each sensor message (cheap: synchronisation only) and
returns the frames that became complete; `process` (heavy: decoding and inference) turns one frame into a
`FrameResult`. A message that cannot be used (wrong encoding or size, invalid depth, empty cloud, stamp
going backwards) is logged, throttled, with its topic and problem, and that modality is absent for the
frame; inference runs on whatever is present. Nothing here raises on bad input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlesam_core.config_io import ConfigError
from mlesam_core.data.classes import ClassTable, get_class_table
from mlesam_core.sensors import event_count_scale
from mlesam_ros.events import EVENT_PACKET_TYPE, EventDecodeError, EventStream
from mlesam_ros.health import HealthMonitor, ProblemLog
from mlesam_ros.messages import header_seconds, message_type, stamp_to_ns
from mlesam_ros.model_inputs import InputDecoder, InputError
from mlesam_ros.params import NODE_NAME, SegmentConfig, resolve_path
from mlesam_ros.sync import ApproximateSync, StampError, SyncedFrame
from mlesam_ros.transforms import TransformTree

if TYPE_CHECKING:  # the predictor (torch, sam2) loads in load_segmenter, after the parameters were validated
    from mlesam_core.predictor import Segmenter

logger = logging.getLogger(__name__)


@dataclass
class FrameResult:
    """The outcome of one synchronised frame."""

    stamp: float  # header stamp of the driving message (seconds)
    header: Any  # the driving message's header, reused for every output
    driver: str
    status: dict[str, str]  # per sensor: ok, stale, missing (from the synchroniser) or invalid (unusable)
    used: tuple[str, ...]  # modalities given to the model
    labels: np.ndarray | None = None  # HxW uint8 class ids (model configs have at most 255 classes)
    confidence: np.ndarray | None = None  # HxW float32 (computed only when the confidence output is on)
    routing: dict[str, dict[str, float]] = field(default_factory=dict)  # level -> modality -> weight
    latency: float | None = None  # seconds spent in Segmenter.predict
    errors: dict[str, str] = field(default_factory=dict)  # sensor (or "inference") -> problem


def load_segmenter(config: SegmentConfig, search: Sequence[Path] = ()) -> Segmenter:
    """The `Segmenter` that `config.model` describes (model config path searched in `search` too). Call it on the
    thread that will run inference: `model.threads` is set for the calling thread (torch's thread count is
    per thread)."""
    from mlesam_core.predictor import Segmenter  # torch loads here, after the parameters were validated

    model = config.model
    try:  # a device this machine lacks, named as the parameter the node and the replay read it from
        model.torch_device()
    except ConfigError as exc:
        raise ConfigError(f"model.{exc}") from None
    path = resolve_path(model.config, search)
    logger.info("loading model %s on %s (%s)", path, model.device, model.precision)
    return Segmenter.from_files(path, sam2_checkpoint=model.sam2_checkpoint or None, adapters=model.adapters or None,
                                options=model, allow_random_init=model.allow_random_init,
                                verify_adapters=model.verify_adapters)


def class_table_for(config: SegmentConfig, segmenter: Segmenter) -> ClassTable:
    """The `classes` parameter's table, else the model's; it must have as many classes as the model predicts."""
    table = get_class_table(config.classes) if config.classes else getattr(segmenter, "class_table", None)
    if table is None:
        raise ValueError("classes: the model carries no class table; set this parameter (deliver, muses, mcubes)")
    if table.num_classes != segmenter.config.num_classes:
        raise ValueError(f"classes: {table.dataset!r} has {table.num_classes} classes, the model predicts "
                         f"{segmenter.config.num_classes}")
    return table


class SegmentationPipeline:
    """Synchroniser + input decoding + Segmenter + health, independent of rclpy."""

    def __init__(self, config: SegmentConfig, segmenter: Segmenter, clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None) -> None:
        """Pipeline for `config` around a loaded `Segmenter`; `clock` gives arrival times (seconds)."""
        unknown = [m for m in config.modalities if m not in segmenter.modalities]
        if unknown:
            raise ValueError(f"modalities: the model has no {unknown[0]!r} expert "
                             f"(model modalities: {', '.join(segmenter.modalities)})")
        self.config = config
        self.segmenter = segmenter
        self.clock = clock
        self.class_table = class_table_for(config, segmenter)
        self.sync = ApproximateSync(config.priority, {m: config.sensors[m] for m in config.modalities},
                                    primary_timeout=config.sync.primary_timeout, use_stale=config.sync.use_stale,
                                    buffer_size=config.sync.buffer_size)
        self.decoder = InputDecoder(config, event_count_scale=event_count_scale(getattr(segmenter.config, "classes",
                                                                                        None)))
        self.event_streams: dict[str, EventStream] = {}
        self.topics = {m: config.input_topic(m) for m in config.modalities}
        self.health = HealthMonitor(self.topics, {m: config.sensors[m].stale_after for m in config.modalities},
                                    node_name=NODE_NAME)
        self.problems = ProblemLog(log or logger, config.log_period)

    def add(self, sensor: str, msg: Any, received: float | None = None) -> list[SyncedFrame]:
        """Take one sensor message; returns the frames that are ready to `process`.

        An EventPacket is decoded here, in arrival order (the decoder's state runs across packets), and stands
        in the synchroniser at the time of its last event, so that a frame at t waits (up to max_delay) until
        the events up to t have arrived; the frames returned carry each frame's `EventWindow` instead.
        """
        now = self.clock() if received is None else received
        self.health.message(sensor, now)
        stamp = header_seconds(msg)
        if message_type(msg) == EVENT_PACKET_TYPE:
            try:
                stamp = self._event_stream(sensor).add(msg) / 1e9
            except EventDecodeError as exc:
                self._problem(sensor, "input", str(exc), now)
                return []
        try:
            return self._with_event_windows(self.sync.add(sensor, stamp, msg, received=now))
        except StampError as exc:
            self._problem(sensor, "stamp", str(exc), now)
            return []

    def _event_stream(self, sensor: str) -> EventStream:
        stream = self.event_streams.get(sensor)
        if stream is None:
            timing = self.config.sensors[sensor]
            retain = self.config.events.window + timing.stale_after + timing.max_delay
            stream = self.event_streams[sensor] = EventStream(self.config.events.window, retain)
            self.sync.never_drives(sensor)  # packets come at no frame rate: they are matched to frames only
        return stream

    def _with_event_windows(self, frames: list[SyncedFrame]) -> list[SyncedFrame]:
        """Each frame's EventPackets replaced by the events of its window (taken now: later packets move on)."""
        for frame in frames:
            for sensor, stream in self.event_streams.items():
                msg = frame.messages.get(sensor)
                if msg is None or message_type(msg) != EVENT_PACKET_TYPE:
                    continue
                driver = frame.messages[frame.driver]
                end_ns = round(frame.stamp * 1e9) if frame.driver == sensor else stamp_to_ns(driver.header.stamp)
                frame.messages[sensor] = stream.window(end_ns)
        return frames

    def set_camera_info(self, msg: Any) -> None:
        """Take the newest CameraInfo (ignored, with a log, when its K is unusable)."""
        try:
            self.decoder.set_camera_info(msg)
        except InputError as exc:
            self.problems.warn(("camera_info", "k"), f"{self.config.camera_info_topic}: {exc}", self.clock())

    def add_transforms(self, msg: Any) -> None:
        """Take a tf2_msgs/TFMessage of static transforms (camera <- LiDAR for point clouds); an unusable
        transform is logged and skipped."""
        tree = self.decoder.transforms
        if not isinstance(tree, TransformTree):  # tf2_ros's buffer (the node) takes the transforms itself
            return
        try:
            tree.add_message(msg)
        except ValueError as exc:
            self.problems.warn(("tf_static", "transform"), f"/tf_static: {exc}", self.clock())

    def tick(self, now: float | None = None) -> list[SyncedFrame]:
        """Frames that waited long enough on the arrival clock (call periodically when live)."""
        return self._with_event_windows(self.sync.tick(self.clock() if now is None else now))

    def drain(self) -> list[SyncedFrame]:
        """Every waiting frame (end of a bag)."""
        return self._with_event_windows(self.sync.drain())

    def process(self, frame: SyncedFrame, now: float | None = None) -> FrameResult:
        """Decode the frame's messages, run the model on the present modalities, record health."""
        now = self.clock() if now is None else now
        size = self.decoder.reference_size()
        status: dict[str, str] = dict(frame.status)
        images, errors = {}, {}
        # the driver first: without camera_info or camera.image_size its decoded size is what the others must match
        for sensor in (frame.driver, *(m for m in self.config.modalities if m != frame.driver)):
            msg = frame.messages.get(sensor)
            if msg is None:
                continue
            try:
                images[sensor] = self.decoder.decode(sensor, msg, size)
                size = size or tuple(images[sensor].shape[:2])
            except InputError as exc:
                status[sensor], errors[sensor] = "invalid", str(exc)
                self._problem(sensor, "input", str(exc), now)
            except Exception as exc:  # e.g. the HHA encoding on a GPU out of memory: that sensor only, logged
                status[sensor], errors[sensor] = "invalid", f"decoding failed: {type(exc).__name__}: {exc}"
                self._problem(sensor, "decode", errors[sensor], now)
                self.problems.logger.debug("decoding %s failed on frame %.3f", sensor, frame.stamp, exc_info=True)
        images = {m: images[m] for m in self.config.modalities if m in images}  # the configured order
        self.health.frame(status, frame.driver)
        result = FrameResult(stamp=frame.stamp, header=frame.messages[frame.driver].header, driver=frame.driver,
                             status=status, used=tuple(images), errors=errors)
        if not images:
            result.errors["inference"] = "no usable input in this frame"
            self.health.inference(None, error=result.errors["inference"])
            return result
        start = time.perf_counter()
        try:
            prediction = self.segmenter.predict(images, confidence=self.config.outputs.confidence)
        except Exception as exc:  # a model failure must not take the node down; it is reported and logged
            result.errors["inference"] = f"{type(exc).__name__}: {exc}"
            self.health.inference(None, error=result.errors["inference"])
            self.problems.logger.exception("inference failed on frame %.3f", frame.stamp)
            return result
        result.latency = time.perf_counter() - start
        result.labels = prediction.labels
        if prediction.confidence is not None:
            result.confidence = np.asarray(prediction.confidence, dtype=np.float32)
        result.routing = {level: {m: float(w) for m, w in weights.items()}
                          for level, weights in prediction.routing.items()}
        self.health.inference(result.latency)
        return result

    def routing_matrix(self, result: FrameResult) -> tuple[np.ndarray, tuple[str, ...]]:
        """Routing weights as a [levels, modalities] array (configured modality order, absent = 0) and the
        level names."""
        levels = tuple(result.routing)
        matrix = np.zeros((len(levels), len(self.config.modalities)), dtype=np.float32)
        for i, level in enumerate(levels):
            for j, modality in enumerate(self.config.modalities):
                matrix[i, j] = result.routing[level].get(modality, 0.0)
        return matrix, levels

    def _problem(self, sensor: str, kind: str, problem: str, now: float) -> None:
        self.health.error(sensor, problem, now)
        self.problems.warn((sensor, kind), f"{self.topics[sensor]} ({sensor}): {problem}; {sensor} absent", now)


__all__ = ["FrameResult", "SegmentationPipeline", "load_segmenter", "class_table_for"]
