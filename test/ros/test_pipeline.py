"""The ROS-free pipeline with the real tiny Segmenter: dropped sensors, bad input, outputs, health."""

import logging

import numpy as np
import pytest

from mlesam_ros.health import ERROR, OK, WARN
from mlesam_ros.outputs import output_messages
from mlesam_ros.params import load_segment_config
from mlesam_ros.pipeline import SegmentationPipeline

H, W = 48, 64
K = np.array([[32.0, 0, 32.0], [0, 32.0, 24.0], [0, 0, 1]])


class Rig:
    """Makes the four DELIVER sensors' messages (rosbags types) at a stamp."""

    def __init__(self, kit, seed=0):
        self.kit = kit
        self.rng = np.random.default_rng(seed)

    def header(self, t, frame="camera"):
        return self.kit.header(int(round(t * 1e9)), frame)

    def rgb(self, t):
        return self.kit.image(self.rng.integers(0, 256, (H, W, 3), dtype=np.uint8), "rgb8", self.header(t))

    def depth(self, t, values=None):
        depth = values if values is not None else self.rng.uniform(2, 40, (H, W)).astype(np.float32)
        return self.kit.image(depth, "32FC1", self.header(t))

    def event(self, t):
        return self.kit.image(self.rng.integers(0, 4, (H, W, 2), dtype=np.uint8), "8UC2", self.header(t))

    def lidar(self, t):
        image = np.zeros((H, W, 3), np.uint8)
        image[::4, ::3] = self.rng.integers(1, 256, (len(range(0, H, 4)), len(range(0, W, 3)), 3))
        return self.kit.image(image, "rgb8", self.header(t))

    def camera_info(self, t=0.0):
        return self.kit.camera_info(K, (H, W), self.header(t))

    def message(self, sensor, t):
        return getattr(self, sensor)(t)


def make_pipeline(segmenter, *overrides):
    config = load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver", *overrides])
    return SegmentationPipeline(config, segmenter, clock=lambda: 0.0)


def run(pipeline, rig, duration=1.0, silent=(), corrupt=None, rate=10.0):
    """Feed all sensors (minus `silent`) at `rate`; `corrupt(sensor, t, msg)` may replace messages."""
    pipeline.set_camera_info(rig.camera_info())
    results = []
    for i in range(round(duration * rate)):
        t = 100.0 + i / rate
        for sensor in pipeline.config.modalities:
            if sensor in silent:
                continue
            msg = rig.message(sensor, t)
            if corrupt is not None:
                msg = corrupt(sensor, t, msg)
            for frame in pipeline.add(sensor, msg, received=t):
                results.append(pipeline.process(frame, now=t))
    return results + [pipeline.process(f, now=t) for f in pipeline.drain()]


@pytest.fixture
def rig(rosbags_kit):
    return Rig(rosbags_kit)


def test_every_primary_frame_is_segmented_with_all_four_sensors(tiny_segmenter, rig):
    results = run(make_pipeline(tiny_segmenter), rig, duration=0.5)
    assert [r.stamp for r in results] == pytest.approx([100.0 + i / 10 for i in range(5)])
    for result in results:
        assert result.used == ("rgb", "depth", "event", "lidar")
        assert result.labels.shape == (H, W) and result.labels.dtype == np.uint8
        assert result.labels.max() < 25
        assert result.confidence.shape == (H, W) and result.confidence.dtype == np.float32
        assert result.latency > 0
        assert result.header.frame_id == "camera"


def test_dropped_depth_keeps_segmenting_with_the_other_sensors(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter)
    results = run(pipeline, rig, duration=1.0, silent=("depth",))
    assert len(results) == 10 and all(r.labels is not None for r in results)
    assert all(r.used == ("rgb", "event", "lidar") and r.status["depth"] == "missing" for r in results)
    assert all((r.routing.weights[:, r.routing.modalities.index("depth")] == 0.0).all() for r in results)
    level, message = pipeline.health.sensor_level("depth", 101.0)
    assert level == ERROR and message == "no message received"


def test_only_present_modalities_reach_the_model(tiny_segmenter, rig, decode_message):
    pipeline = make_pipeline(tiny_segmenter)
    pipeline.set_camera_info(rig.camera_info())
    frames = [f for s in ("rgb", "depth", "event") for f in pipeline.add(s, rig.message(s, 1.0), received=1.0)]
    frames += pipeline.drain()
    [frame] = frames
    result = pipeline.process(frame)
    assert result.used == ("rgb", "depth", "event") and result.status["lidar"] == "missing"
    expected = tiny_segmenter.predict({s: decode_message(pipeline.decoder, s, frame.messages[s].msg, (H, W))
                                       for s in result.used})
    np.testing.assert_array_equal(result.labels, expected.labels)
    assert (result.routing.weights[:, result.routing.modalities.index("lidar")] == 0.0).all()


def _model_input(segmenter, modality, image):
    images, _, _ = segmenter.preprocess({modality: image})
    return images[0, segmenter.modalities.index(modality)]


@pytest.mark.parametrize("modality, array, encoding, overrides, expected", [
    # a 3-channel event frame: the counts of both polarities, the third channel zero whatever the message holds
    ("event", np.full((H, W, 3), (3, 200, 9), np.uint8), "8UC3", (), np.full((H, W, 3), (3, 200, 0), np.uint8)),
    # 16-bit counts saturate at 255
    ("event", np.full((H, W, 2), (7, 999), np.uint16), "16UC2", (), np.full((H, W, 3), (7, 255, 0), np.uint8)),
    # the linear depth image is one channel, repeated (20 m of max_depth 100 m -> 51)
    ("depth", np.full((H, W), 20.0, np.float32), "32FC1", ("depth.encoding=depth",), np.full((H, W, 3), 51, np.uint8)),
    # generic 4-channel float data on the 0-255 scale: alpha dropped
    ("rgb", np.full((H, W, 4), (1.5, 2.5, 3.5, 99.0), np.float32), "32FC4", (),
     np.full((H, W, 3), (1.5, 2.5, 3.5), np.float32)),
])
def test_decoded_inputs_become_the_three_channel_model_input(tiny_segmenter, rig, decode_message, modality, array,
                                                              encoding, overrides, expected):
    """The decoder leaves 1- and 2-channel images as they are (no host copy); what reaches the model is the
    3-channel mapping of the modality table."""
    pipeline = make_pipeline(tiny_segmenter, *overrides)
    pipeline.set_camera_info(rig.camera_info())
    decoded = decode_message(pipeline.decoder, modality, rig.kit.image(array, encoding, rig.header(1.0)), (H, W))
    assert decoded.shape[:2] == (H, W) and decoded.dtype == expected.dtype
    np.testing.assert_array_equal(_model_input(tiny_segmenter, modality, decoded),
                                  _model_input(tiny_segmenter, modality, expected))


@pytest.mark.parametrize("bad, problem", [
    (lambda rig, t: rig.kit.image(np.zeros((H, W), np.uint8), "mono8", rig.header(t)), "2 or 3 channels"),
    (lambda rig, t: rig.kit.image(np.zeros((H // 2, W, 2), np.uint8), "8UC2", rig.header(t)),
     f"size {W}x{H // 2} differs from the frame's {W}x{H} (the driving rgb image)"),
    (lambda rig, t: rig.kit.image_from_fields(rig.header(t), height=H, width=W, encoding="8UC2", is_bigendian=0,
                                              step=2 * W, data=b"\x00" * 10), "data holds 10 bytes"),
])
def test_unusable_event_frames_make_event_absent_and_are_logged_with_the_topic(tiny_segmenter, rig, caplog, bad,
                                                                              problem):
    pipeline = make_pipeline(tiny_segmenter)
    corrupt = lambda sensor, t, msg: bad(rig, t) if sensor == "event" else msg  # noqa: E731
    with caplog.at_level(logging.WARNING):
        results = run(pipeline, rig, duration=0.3, corrupt=corrupt)
    assert len(results) == 3 and all(r.labels is not None for r in results)
    assert all(r.status["event"] == "invalid" and "event" not in r.used for r in results)
    assert problem in results[0].errors["event"]
    warnings = [r.getMessage() for r in caplog.records if "/event/image_raw" in r.getMessage()]
    assert len(warnings) == 1 and problem in warnings[0]  # throttled: one report per log_period
    assert pipeline.health.sensor_level("event", 100.2)[0] == WARN


def test_all_invalid_depth_is_absent_but_partly_invalid_depth_is_used(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter)
    holes = rig.rng.uniform(2, 40, (H, W)).astype(np.float32)
    holes[: H // 2] = np.nan
    holes[H // 2:, :5] = np.inf
    nothing = np.full((H, W), -np.inf, np.float32)
    depths = iter([holes, nothing])
    corrupt = lambda sensor, t, msg: rig.depth(t, next(depths)) if sensor == "depth" else msg  # noqa: E731
    first, second = run(pipeline, rig, duration=0.2, corrupt=corrupt)
    assert "depth" in first.used
    assert "depth" not in second.used and "valid" in second.errors["depth"]


def test_hha_depth_waits_for_intrinsics_and_depth_image_mode_does_not(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter)
    frame = None
    for sensor in pipeline.config.modalities:
        frame = pipeline.add(sensor, rig.message(sensor, 5.0), received=5.0) or frame
    result = pipeline.process(pipeline.drain()[0] if frame is None else frame[0])
    assert "no camera intrinsics yet" in result.errors["depth"]
    pipeline = make_pipeline(tiny_segmenter, "depth.encoding=depth")
    for sensor in pipeline.config.modalities:
        frames = pipeline.add(sensor, rig.message(sensor, 5.0), received=5.0)
    assert "depth" in pipeline.process(frames[0]).used


def test_lidar_point_clouds_are_projected_and_empty_clouds_are_absent(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter, "sensors.lidar.type=sensor_msgs/msg/PointCloud2")
    n = 300
    points = np.zeros(n, dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32),
                                ("intensity", np.float32)])
    points["x"], points["y"] = rig.rng.uniform(3, 30, n), rig.rng.uniform(-8, 8, n)
    points["z"], points["intensity"] = rig.rng.uniform(-1.4, 2, n), 100.0
    clouds = iter([points, points[:0]])
    corrupt = lambda sensor, t, msg: (rig.kit.pointcloud(next(clouds), rig.header(t, "lidar"))  # noqa: E731
                                      if sensor == "lidar" else msg)
    first, second = run(pipeline, rig, duration=0.2, corrupt=corrupt)
    assert "lidar" in first.used
    assert "lidar" not in second.used and "empty point cloud" in second.errors["lidar"]


def test_stamps_going_backwards_are_logged_and_that_sensor_is_absent(tiny_segmenter, rig, caplog):
    pipeline = make_pipeline(tiny_segmenter)
    back = lambda sensor, t, msg: rig.lidar(t - 5.0) if sensor == "lidar" and t > 100.25 else msg  # noqa: E731
    with caplog.at_level(logging.WARNING):
        results = run(pipeline, rig, duration=1.0, corrupt=back)
    assert len(results) == 10 and all(r.labels is not None for r in results)
    assert any("stamp went backwards" in r.getMessage() and "/lidar/image_raw" in r.getMessage()
               for r in caplog.records)
    assert [r.status["lidar"] for r in results][-1] == "missing"


def test_silent_primary_hands_driving_to_depth(tiny_segmenter, rig):
    results = run(make_pipeline(tiny_segmenter), rig, duration=1.0, silent=("rgb",))
    assert len(results) == 10
    assert all(r.driver == "depth" and r.used == ("depth", "event", "lidar") for r in results)


def test_model_compile_on_a_cpu_encodes_depth_with_the_compiled_hha(tiny_segmenter, rig, decode_message):
    from mlesam_core.sensors import CompiledHHA

    plain, compiled = make_pipeline(tiny_segmenter), make_pipeline(tiny_segmenter, "model.compile=true")
    assert isinstance(compiled.decoder.hha, CompiledHHA) and not isinstance(plain.decoder.hha, CompiledHHA)
    for pipeline in (plain, compiled):
        pipeline.set_camera_info(rig.camera_info())
    msg = rig.depth(1.0)
    expected, got = (decode_message(pipeline.decoder, "depth", msg, (H, W)) for pipeline in (plain, compiled))
    assert np.abs(expected.astype(int) - got.astype(int)).max() <= 1
    assert compiled.decoder.hha._compiled is not None


def test_a_decoder_failure_costs_that_sensor_only(tiny_segmenter, rig, monkeypatch, caplog):
    pipeline = make_pipeline(tiny_segmenter)
    depth_decoder = pipeline.decoder._decoders["depth"]
    calls = []

    def fails_once(array, encoding, frame):
        calls.append(array)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return depth_decoder(array, encoding, frame)

    monkeypatch.setitem(pipeline.decoder._decoders, "depth", fails_once)
    with caplog.at_level(logging.WARNING):
        first, second = run(pipeline, rig, duration=0.2)
    assert first.status["depth"] == "invalid" and first.used == ("rgb", "event", "lidar")
    assert first.errors["depth"] == "decoding failed: RuntimeError: CUDA out of memory"
    assert first.labels is not None and "CUDA out of memory" in caplog.text
    assert second.status["depth"] == "ok" and "depth" in second.used  # the next frame uses it again


def test_model_failure_is_reported_not_raised(tiny_segmenter, rig, monkeypatch, caplog):
    pipeline = make_pipeline(tiny_segmenter)

    def broken(images, confidence=True, size=None):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(pipeline.segmenter, "predict", broken)
    with caplog.at_level(logging.ERROR):
        results = run(pipeline, rig, duration=0.2)
    assert len(results) == 2 and all(r.labels is None for r in results)
    assert results[0].errors["inference"] == "RuntimeError: CUDA out of memory"
    assert pipeline.diagnostics(100.2)[-1].level == ERROR


def test_outputs_carry_the_primary_header_palette_confidence_and_labelled_routing(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter)
    [result] = run(pipeline, rig, duration=0.1, silent=("event",))
    messages = output_messages(rig.kit, pipeline, result)
    assert set(messages) == {"labels", "labels_color", "confidence", "routing"}
    labels, color, confidence = messages["labels"], messages["labels_color"], messages["confidence"]
    assert (labels.encoding, color.encoding, confidence.encoding) == ("mono8", "rgb8", "32FC1")
    assert labels.header.stamp.sec == 100 and labels.header.stamp.nanosec == 0
    np.testing.assert_array_equal(labels.data.reshape(H, W), result.labels)
    palette = np.asarray(pipeline.class_table.palette, np.uint8)
    np.testing.assert_array_equal(color.data.reshape(H, W, 3), palette[result.labels])
    routing = messages["routing"]
    levels = routing.layout.dim[0].label.split("=")[1].split(",")
    assert routing.layout.dim[1].label == "modality=rgb,depth,event,lidar"
    assert [d.size for d in routing.layout.dim] == [len(levels), 4]
    weights = routing.data.reshape(len(levels), 4)
    assert (weights[:, 2] == 0).all()  # event absent
    np.testing.assert_array_equal(weights, result.routing.weights)
    assert levels == list(result.routing.levels)


def test_switched_off_outputs_are_not_built(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter, "outputs.labels_color=false", "outputs.routing=false")
    [result] = run(pipeline, rig, duration=0.1)
    assert set(output_messages(rig.kit, pipeline, result)) == {"labels", "confidence"}


def test_confidence_is_not_computed_when_its_output_is_off(tiny_segmenter, rig):
    [full] = run(make_pipeline(tiny_segmenter), Rig(rig.kit, seed=3), duration=0.1)
    pipeline = make_pipeline(tiny_segmenter, "outputs.confidence=false")
    [result] = run(pipeline, Rig(rig.kit, seed=3), duration=0.1)  # the same messages
    assert result.confidence is None and full.confidence is not None
    np.testing.assert_array_equal(result.labels, full.labels)
    assert set(output_messages(rig.kit, pipeline, result)) == {"labels", "labels_color", "routing"}


def test_health_reports_ok_sensors_and_the_inference_latency(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter)
    run(pipeline, rig, duration=1.0)
    entries = {e.hardware_id: e for e in pipeline.diagnostics(101.0)}
    assert [entries[s].level for s in ("rgb", "depth", "event", "lidar")] == [OK] * 4
    assert float(entries["rgb"].values["rate_hz"]) == pytest.approx(10.0)
    assert entries["depth"].values["frames_ok"] == "10"
    assert entries["lidar"].values["messages_received"] == "10"  # against what was sent: drops on the way
    assert entries["inference"].level == OK and float(entries["inference"].values["latency_p50_ms"]) > 0
    assert pipeline.diagnostics(103.0)[0].level == ERROR  # 2 s later every sensor is silent


def test_modalities_the_model_lacks_are_refused(tiny_segmenter):
    with pytest.raises(ValueError, match="the model has no 'nir' expert"):
        make_pipeline(tiny_segmenter, "modalities=[rgb,nir]")


def test_the_models_class_table_is_used_when_no_classes_parameter_is_set(tiny_segmenter):
    pipeline = make_pipeline(tiny_segmenter, 'classes=""')
    assert pipeline.class_table is tiny_segmenter.class_table


def test_a_class_table_that_does_not_fit_the_model_is_refused(tiny_segmenter):
    with pytest.raises(ValueError, match="classes: 'muses' has 19 classes, the model predicts 25"):
        make_pipeline(tiny_segmenter, "classes=muses")


def test_an_empty_camera_frame_without_camera_info_costs_only_the_camera(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter, "depth.encoding=depth")  # no camera_info: nothing sets the size
    results = []
    for i in range(3):
        t = 100.0 + i / 10
        empty = rig.kit.image_from_fields(rig.header(t), height=0, width=0, encoding="rgb8", is_bigendian=0,
                                          step=0, data=b"")
        for sensor in ("depth", "event", "lidar"):
            results += [pipeline.process(f, now=t) for f in pipeline.add(sensor, rig.message(sensor, t), received=t)]
        results += [pipeline.process(f, now=t) for f in pipeline.add("rgb", empty, received=t)]
    results += [pipeline.process(f) for f in pipeline.drain()]
    assert len(results) == 3
    for result in results:
        assert result.status["rgb"] == "invalid" and "empty image (0x0" in result.errors["rgb"]
        assert result.used == ("depth", "event", "lidar") and result.labels.shape == (H, W)


def test_a_depth_image_on_the_camera_topic_is_refused_naming_its_encoding(tiny_segmenter, rig):
    pipeline = make_pipeline(tiny_segmenter)
    metres = lambda sensor, t, msg: rig.depth(t) if sensor == "rgb" else msg  # noqa: E731
    results = run(pipeline, rig, duration=0.3, corrupt=metres)
    assert len(results) == 3
    for result in results:
        assert result.status["rgb"] == "invalid" and "32FC1" in result.errors["rgb"]
        assert result.used == ("depth", "event", "lidar")
