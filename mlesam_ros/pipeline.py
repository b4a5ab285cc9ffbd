"""The ROS-free segmentation pipeline: messages -> synchronised frames -> model inputs -> Segmenter -> results.

The node and the replay both run it: `add` takes each sensor message (cheap: its type is read once, event packets
are decoded in arrival order, the rest is synchronisation) and returns the frames that became complete, each
with its event windows cut; `process` (heavy: decoding and inference) turns one frame into a `FrameResult`.
A message that cannot be used (wrong encoding or size, invalid depth, empty cloud, stamp going backwards) is
logged, throttled, with its topic and problem, and that modality is absent for the frame; inference runs on
whatever is present. Nothing here raises on bad input. The node talks to it through its methods only.

Sizes: the driving image's size is the frame's; a frame far larger than the model's input (more than
`preprocess.FAR_BEYOND_MODEL_PIXELS` times its pixels) is decoded at the model's size (`model_inputs.FrameSize`)
and its labels come back upsampled (nearest) to the frame's size. What each sensor's size costs is logged on its
first frame at that size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mlesam_core.config_io import ConfigError
from mlesam_core.data.classes import ClassTable, get_class_table
from mlesam_core.preprocess import FAR_BEYOND_MODEL_PIXELS
from mlesam_ros.events import EventDecodeError, EventStream, EventWindow
from mlesam_ros.health import DiagnosticEntry, HealthMonitor, ProblemLog
from mlesam_ros.messages import header_seconds, stamp_to_ns
from mlesam_ros.model_inputs import FrameSize, InputDecoder, InputError, ModelImage, RawImage, SensorMessage
from mlesam_ros.params import EVENT_PACKET_TYPE, NODE_NAME, POINTCLOUD_TYPE, SegmentConfig, resolve_path
from mlesam_ros.sync import ApproximateSync, StampError, SyncedFrame
from mlesam_ros.transforms import TransformLookup, TransformTree

if TYPE_CHECKING:  # the predictor (torch, sam2) loads in load_segmenter, after the parameters were validated
    from mlesam_core.predictor import RoutingWeights, Segmenter

logger = logging.getLogger(__name__)

Frame = SyncedFrame[SensorMessage, EventWindow]  # what `add` returns and `process` takes
T = TypeVar("T")


@dataclass
class FrameResult:
    """The outcome of one synchronised frame."""

    stamp: float  # header stamp of the driving message (seconds)
    header: Any  # the driving message's header, reused for every output
    driver: str
    status: dict[str, str]  # per sensor: ok, stale, missing (from the synchroniser) or invalid (unusable)
    used: tuple[str, ...]  # modalities given to the model
    labels: np.ndarray | None = None  # HxW uint8 class ids at the frame's size (at most 255 classes)
    confidence: np.ndarray | None = None  # HxW float32 (computed only when asked for)
    routing: RoutingWeights | None = None  # [levels, modalities] with their names, as the model gives them
    latency: float | None = None  # seconds spent in Segmenter.predict
    errors: dict[str, str] = field(default_factory=dict)  # sensor (or "inference") -> problem


def load_segmenter(config: SegmentConfig, search: Sequence[Path] = ()) -> Segmenter:
    """The `Segmenter` that `config.model` describes (model config path searched in `search` too), warmed up on
    every sensor subset of `config.modalities` (so none builds when a sensor drops out mid-run). Backend torch:
    the model in PyTorch; onnxruntime: the exported graphs of `model.onnx_dir`, refused (ConfigError naming
    model.onnx_dir and the mismatch) unless they were exported from that model config and adapters at its size,
    with a graph for every subset. Call it on the thread that will run inference: `model.threads` is set for the
    calling thread (torch's thread count is per thread)."""
    from mlesam_core.evaluation import all_subsets
    from mlesam_core.predictor import Segmenter  # torch loads here, after the parameters were validated

    model = config.model
    try:  # a device this machine lacks, named as the parameter the node and the replay read it from
        model.torch_device()
    except ConfigError as exc:
        raise ConfigError(f"model.{exc}") from None
    path = resolve_path(model.config, search)
    subsets = all_subsets(config.modalities)
    segmenter: Segmenter
    if model.backend == "onnxruntime":
        from mlesam_core.exported import ExportedSegmenter
        from mlesam_core.model.config import load_model_config

        onnx_dir = resolve_path(model.onnx_dir, search)
        logger.info("loading exported graphs %s (model %s)", onnx_dir, path)
        try:
            segmenter = ExportedSegmenter.from_dir(onnx_dir, options=model, config=load_model_config(path),
                                                   subsets=subsets, adapters=model.adapters or None)
        except ConfigError as exc:  # named as the parameter: model.providers, else the export folder's problem
            prefix = "model." if str(exc).startswith("providers:") else "model.onnx_dir: "
            raise ConfigError(f"{prefix}{exc}") from None
    else:
        logger.info("loading model %s on %s (%s)", path, model.device, model.precision)
        segmenter = Segmenter.from_files(path, sam2_checkpoint=model.sam2_checkpoint or None,
                                         adapters=model.adapters or None, options=model,
                                         allow_random_init=model.allow_random_init,
                                         verify_adapters=model.verify_adapters)
    logger.info("warming up %d sensor subsets", len(subsets))
    segmenter.warm_up(subsets)
    return segmenter


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
        self.sync: ApproximateSync[SensorMessage] = ApproximateSync(
            config.priority, {m: config.sensors[m] for m in config.modalities},
            primary_timeout=config.sync.primary_timeout, use_stale=config.sync.use_stale,
            buffer_size=config.sync.buffer_size)
        self.decoder = InputDecoder(config, segmenter.size)
        self.event_streams: dict[str, EventStream] = {}
        self.topics = {m: config.input_topic(m) for m in config.modalities}
        self.health = HealthMonitor(self.topics, {m: config.sensors[m].stale_after for m in config.modalities},
                                    node_name=NODE_NAME)
        self.problems = ProblemLog(log or logger, config.log_period)
        self._sizes_told: set[tuple[str, tuple[int, int], tuple[int, int]]] = set()  # (sensor, its size, work)
        height, width = segmenter.size
        self.problems.logger.info(
            "model input %dx%d: a sensor image of more than %d pixels (%dx the model's) is resized to it on input, "
            "its labels upsampled (nearest); smaller ones are decoded at their own size (each sensor's first frame "
            "says which)", width, height, FAR_BEYOND_MODEL_PIXELS * height * width, FAR_BEYOND_MODEL_PIXELS)
        if any(config.input_type(m) == EVENT_PACKET_TYPE for m in config.modalities):
            self.problems.logger.info("event packets rendered at %g per event (events.count_scale)",
                                      config.events.count_scale)

    # -------------------------------------------------------------------------------------------- messages
    def add(self, sensor: str, msg: Any, received: float | None = None) -> list[Frame]:
        """Take one sensor message; returns the frames that are ready to `process`.

        An EventPacket is decoded here, in arrival order (the decoder's state runs across packets), and stands
        in the synchroniser at the time of its last event, so that a frame at t waits (up to max_delay) until
        the events up to t have arrived; each frame returned carries the `EventWindow` of each event sensor.
        """
        now = self.clock() if received is None else received
        self.health.message(sensor, now)
        message = SensorMessage.of(msg)
        stamp = header_seconds(msg)
        if message.type == EVENT_PACKET_TYPE:
            try:
                stamp = self._event_stream(sensor).add(msg) / 1e9
            except EventDecodeError as exc:
                self._problem(sensor, "input", str(exc), now)
                return []
        try:
            return self._cut_event_windows(self.sync.add(sensor, stamp, message, received=now))
        except StampError as exc:
            self._problem(sensor, "stamp", str(exc), now)
            return []

    def tick(self, now: float | None = None) -> list[Frame]:
        """Frames that waited long enough on the arrival clock (call periodically when live)."""
        return self._cut_event_windows(self.sync.tick(self.clock() if now is None else now))

    def drain(self) -> list[Frame]:
        """Every waiting frame (end of a bag)."""
        return self._cut_event_windows(self.sync.drain())

    def set_camera_info(self, msg: Any) -> None:
        """Take the newest CameraInfo (one whose K cannot be used is logged, saying what is wrong with it)."""
        try:
            self.decoder.set_camera_info(msg)
        except InputError as exc:
            self.problems.warn(("camera_info", "k"), f"{self.config.camera_info_topic}: CameraInfo not used: {exc}",
                               self.clock())

    def set_transform_lookup(self, lookup: TransformLookup) -> None:
        """Take camera <- LiDAR from `lookup` (the node's tf2_ros buffer) instead of the pipeline's own tree."""
        self.decoder.transforms = lookup

    def add_transforms(self, msg: Any) -> None:
        """Take a tf2_msgs/TFMessage of static transforms (camera <- LiDAR for point clouds) into the pipeline's
        own tree; an unusable transform is logged and skipped (ignored under `set_transform_lookup`)."""
        tree = self.decoder.transforms
        if not isinstance(tree, TransformTree):
            return
        try:
            tree.add_message(msg)
        except ValueError as exc:
            self.problems.warn(("tf_static", "transform"), f"/tf_static: {exc}", self.clock())

    def update_live(self, config: SegmentConfig) -> None:
        """Take the live settings of `config` (params.LIVE_PARAMETERS) while running; call it on the thread that
        calls `add` and `tick`. Changed synchronisation timing or event window restarts the synchroniser and the
        event streams (the frames and events waiting are dropped)."""
        timing = (config.sync, config.events, [config.sensors[m] for m in config.modalities])
        restart = timing != (self.config.sync, self.config.events,
                             [self.config.sensors[m] for m in self.config.modalities])
        self.config = config
        self.problems.period = config.log_period
        for sensor, health in self.health.sensors.items():
            health.stale_after = config.sensors[sensor].stale_after
        if restart:
            self.sync = ApproximateSync(config.priority, {m: config.sensors[m] for m in config.modalities},
                                        primary_timeout=config.sync.primary_timeout, use_stale=config.sync.use_stale,
                                        buffer_size=config.sync.buffer_size)
            self.event_streams = {}

    def frame_replaced(self) -> None:
        """Record that a waiting frame was replaced by a newer one while inference was busy."""
        self.health.replaced()

    def diagnostics(self, now: float) -> list[DiagnosticEntry]:
        """Health of every sensor and of inference at `now` (the clock of `add`)."""
        return self.health.entries(now)

    def _event_stream(self, sensor: str) -> EventStream:
        stream = self.event_streams.get(sensor)
        if stream is None:
            timing = self.config.sensors[sensor]
            retain = self.config.events.window + timing.stale_after + timing.max_delay
            stream = self.event_streams[sensor] = EventStream(self.config.events.window, retain)
            self.sync.never_drives(sensor)  # packets come at no frame rate: they are matched to frames only
        return stream

    def _cut_event_windows(self, frames: list[Frame]) -> list[Frame]:
        """Each frame's matched EventPackets give way to the events of its window (cut now: later packets move
        on), in `frame.events`. Event sensors never drive, so the window ends at the driving message's stamp."""
        for frame in frames:
            for sensor, stream in self.event_streams.items():
                message = frame.messages.get(sensor)
                if message is None or message.type != EVENT_PACKET_TYPE:
                    continue
                del frame.messages[sensor]
                frame.events[sensor] = stream.window(stamp_to_ns(frame.messages[frame.driver].msg.header.stamp))
        return frames

    # ------------------------------------------------------------------------------------------- inference
    def process(self, frame: Frame, now: float | None = None, confidence: bool | None = None) -> FrameResult:
        """Decode the frame's inputs, run the model on the present modalities, record health. `confidence`:
        whether to compute the confidence output (None: `outputs.confidence`; the node passes whether anybody
        subscribes to it)."""
        now = self.clock() if now is None else now
        status: dict[str, str] = dict(frame.status)
        errors: dict[str, str] = {}
        size, images = self._decode(frame, status, errors, now)
        self.health.frame(status, frame.driver)
        result = FrameResult(stamp=frame.stamp, header=frame.messages[frame.driver].msg.header, driver=frame.driver,
                             status=status, used=tuple(images), errors=errors)
        if size is None or not images:
            result.errors["inference"] = "no usable input in this frame"
            self.health.inference(None, error=result.errors["inference"])
            return result
        start = time.perf_counter()
        try:
            prediction = self.segmenter.predict(
                images, confidence=self.config.outputs.confidence if confidence is None else confidence,
                size=size.sensor)
        except Exception as exc:  # a model failure must not take the node down; it is reported and logged
            result.errors["inference"] = f"{type(exc).__name__}: {exc}"
            self.health.inference(None, error=result.errors["inference"])
            self.problems.logger.exception("inference failed on frame %.3f", frame.stamp)
            return result
        result.latency = time.perf_counter() - start
        result.labels = prediction.labels
        result.confidence = prediction.confidence
        result.routing = prediction.routing
        self.health.inference(result.latency)
        return result

    def _decode(self, frame: Frame, status: dict[str, str], errors: dict[str, str],
                now: float) -> tuple[FrameSize | None, dict[str, ModelImage]]:
        """The frame's size and each usable input decoded at it (configured order); each unusable one is marked
        invalid in `status` with its problem in `errors`. The driver is read first: its image sets the size."""
        order = (frame.driver, *(m for m in self.config.modalities if m != frame.driver))
        raws: dict[str, RawImage] = {}
        for sensor in order:
            message = frame.messages.get(sensor)
            if message is not None and message.is_image:
                raw = self._attempt(sensor, partial(self.decoder.read, sensor, message), status, errors, frame, now)
                if raw is not None:
                    raws[sensor] = raw
        first = next(iter(raws), None)
        source = (f"the driving {first} image" if first == frame.driver
                  else f"the {first} image (the driving {frame.driver} unreadable)")
        size: FrameSize | None = None
        try:
            size = self.decoder.frame_size(raws[first].size if first else None, source)
        except InputError as exc:
            for sensor in order:  # nothing without a size: every input not refused already says why
                if (sensor in frame.messages or sensor in frame.events) and sensor not in errors:
                    status[sensor], errors[sensor] = "invalid", str(exc)
                    self._problem(sensor, "input", str(exc), now)
            return None, {}
        images: dict[str, ModelImage] = {}
        for sensor in order:
            decode = self._decoding(sensor, frame, raws, size)
            image = None if decode is None else self._attempt(sensor, decode, status, errors, frame, now)
            if image is not None:
                images[sensor] = image
        return size, {m: images[m] for m in self.config.modalities if m in images}

    def _decoding(self, sensor: str, frame: Frame, raws: dict[str, RawImage],
                  size: FrameSize) -> Callable[[], ModelImage] | None:
        """How `sensor`'s input of `frame` becomes its model image at `size` (None: it has none to decode); tells
        what its size costs on its first frame at that size."""
        if sensor in raws:
            self._tell_size(sensor, raws[sensor].size, size, "resized on input")
            return partial(self.decoder.decode_image, sensor, raws[sensor], size)
        if sensor in frame.events:
            window = frame.events[sensor]
            self._tell_size(sensor, window.sensor_size, size, "events rendered, then resized")
            return partial(self.decoder.render_events, sensor, window, size)
        message = frame.messages.get(sensor)
        if message is not None and message.type == POINTCLOUD_TYPE:
            return partial(self.decoder.project_cloud, message, size)
        return None

    def _attempt(self, sensor: str, step: Callable[[], T], status: dict[str, str], errors: dict[str, str],
                 frame: Frame, now: float) -> T | None:
        """One sensor's decoding step; a failure makes that sensor invalid for the frame, logged (None)."""
        try:
            return step()
        except InputError as exc:
            status[sensor], errors[sensor] = "invalid", str(exc)
            self._problem(sensor, "input", str(exc), now)
        except Exception as exc:  # e.g. the HHA encoding on a GPU out of memory: that sensor only, logged
            status[sensor], errors[sensor] = "invalid", f"decoding failed: {type(exc).__name__}: {exc}"
            self._problem(sensor, "decode", errors[sensor], now)
            self.problems.logger.debug("decoding %s failed on frame %.3f", sensor, frame.stamp, exc_info=True)
        return None

    def _tell_size(self, sensor: str, own: tuple[int, int], size: FrameSize, resized: str) -> None:
        """Log, once per sensor and size, what that size costs: resized to the model's size on input (labels
        upsampled), or at the sensors' size (the model's device resizes; labels from the logits)."""
        key = (sensor, own, size.work)
        if key in self._sizes_told:
            return
        self._sizes_told.add(key)
        model = f"{self.decoder.model_size[1]}x{self.decoder.model_size[0]}"
        if size.resized:
            how = (f"{resized} to the model's size (more than {FAR_BEYOND_MODEL_PIXELS}x its pixels: per-pixel work "
                   f"at {model}, labels upsampled to {size.sensor[1]}x{size.sensor[0]}, nearest)")
        else:
            how = (f"decoded at {size.work[1]}x{size.work[0]}, resized on the model's device; labels from the "
                   f"logits at {size.sensor[1]}x{size.sensor[0]}")
        self.problems.logger.info("%s %dx%d -> model %s: %s", sensor, own[1], own[0], model, how)

    def _problem(self, sensor: str, kind: str, problem: str, now: float) -> None:
        self.health.error(sensor, problem, now)
        self.problems.warn((sensor, kind), f"{self.topics[sensor]} ({sensor}): {problem}; {sensor} absent", now)


__all__ = ["Frame", "FrameResult", "SegmentationPipeline", "load_segmenter", "class_table_for"]
