"""Frame sizes in the pipeline: the driving image's size is the frame's whatever camera_info says; camera_info is
used where it fits (scaled at the same aspect ratio); frames beyond the model's input are decoded at its size."""

import logging

import cv2
import numpy as np
import pytest

from mlesam_core.data.base import resize_label
from mlesam_core.sensors import DepthEncoding, depth_to_hha
from mlesam_ros.params import load_segment_config
from mlesam_ros.pipeline import SegmentationPipeline

TOPIC = "/camera/camera_info"


def make_pipeline(segmenter, *overrides):
    config = load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver",
                                        "modalities=[rgb,depth,event]", *overrides])
    return SegmentationPipeline(config, segmenter, clock=lambda: 0.0)


def intrinsics(size):
    """A pinhole K for an image of `size` (H, W): focal length the width, principal point the centre."""
    height, width = size
    return np.array([[float(width), 0.0, width / 2], [0.0, float(width), height / 2], [0.0, 0.0, 1.0]])


class Sensors:
    """rgb8 camera, 32FC1 depth and 8UC2 event frames of one size (rosbags messages)."""

    def __init__(self, kit, size, seed=0):
        self.kit, self.size = kit, size
        self.rng = np.random.default_rng(seed)

    def header(self, t):
        return self.kit.header(int(round(t * 1e9)), "camera")

    def frame(self, t):
        h, w = self.size
        self.depth_m = self.rng.uniform(2, 40, (h, w)).astype(np.float32)
        return {"rgb": self.kit.image(self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "rgb8", self.header(t)),
                "depth": self.kit.image(self.depth_m, "32FC1", self.header(t)),
                "event": self.kit.image(self.rng.integers(0, 4, (h, w, 2), dtype=np.uint8), "8UC2", self.header(t))}


def run(pipeline, sensors, frames, confidence=None, start=100.0):
    results = []
    for i in range(frames):
        t = start + i / 10
        for sensor, msg in sensors.frame(t).items():
            results += [pipeline.process(f, now=t, confidence=confidence)
                        for f in pipeline.add(sensor, msg, received=t)]
    return results + [pipeline.process(f, confidence=confidence) for f in pipeline.drain()]


def test_camera_info_of_another_aspect_ratio_leaves_every_frame_labelled_and_is_reported_once(
        tiny_segmenter, rosbags_kit, caplog):
    """A stale or reconfigured camera_info (640x480) with 64x64 images: the images define the frame, every frame
    is labelled; HHA depth, which needs a camera model that fits, is absent, saying why; one report."""
    pipeline = make_pipeline(tiny_segmenter)
    sensors = Sensors(rosbags_kit, (64, 64))
    pipeline.set_camera_info(rosbags_kit.camera_info(intrinsics((480, 640)), (480, 640), sensors.header(0.0)))
    with caplog.at_level(logging.WARNING):
        results = run(pipeline, sensors, 50)
    assert len(results) == 50
    assert all(r.labels is not None and r.labels.shape == (64, 64) for r in results)
    assert all(r.used == ("rgb", "event") and r.status["depth"] == "invalid" for r in results)
    assert (f"camera_info on {TOPIC} is 640x480, another aspect ratio than the frame's 64x64 (the driving rgb "
            f"image)") in results[0].errors["depth"]
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"camera_info on {TOPIC}")]
    assert reports == [f"camera_info on {TOPIC} is 640x480, the images 64x64 (the driving rgb image): another "
                       f"aspect ratio: its camera model is not used (HHA depth and point-cloud projection are "
                       f"absent; the frame is labelled from the other inputs)"]


def test_camera_info_of_the_same_aspect_ratio_is_scaled_to_the_images(tiny_segmenter, rosbags_kit, caplog,
                                                                       monkeypatch):
    pipeline = make_pipeline(tiny_segmenter)
    sensors = Sensors(rosbags_kit, (64, 64))
    k = np.array([[100.0, 0.0, 60.0], [0.0, 110.0, 64.0], [0.0, 0.0, 1.0]])
    pipeline.set_camera_info(rosbags_kit.camera_info(k, (128, 128), sensors.header(0.0)))
    given = []
    predict = pipeline.segmenter.predict
    monkeypatch.setattr(pipeline.segmenter, "predict", lambda images, **kw: given.append(images) or predict(images,
                                                                                                           **kw))
    with caplog.at_level(logging.WARNING):
        results = run(pipeline, sensors, 3)
    assert len(results) == 3 and all(r.used == ("rgb", "depth", "event") for r in results)
    scaled, projection = pipeline.decoder.camera(pipeline.decoder.frame_size((64, 64), "the test"))
    np.testing.assert_array_equal(scaled, [[50.0, 0.0, 30.0], [0.0, 55.0, 32.0], [0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(projection[:, :3], scaled)  # camera_info's P, scaled alike
    # the last frame's HHA is that of its depth with the scaled K
    np.testing.assert_array_equal(given[-1]["depth"], depth_to_hha(sensors.depth_m, scaled, DepthEncoding()))
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"camera_info on {TOPIC}")]
    assert reports == [f"camera_info on {TOPIC} is 128x128, the images 64x64 (the driving rgb image): the same "
                       f"aspect ratio: its camera model is scaled to the images"]


def test_a_camera_info_with_k_all_zeros_is_named_as_the_problem(tiny_segmenter, rosbags_kit, caplog):
    pipeline = make_pipeline(tiny_segmenter)
    sensors = Sensors(rosbags_kit, (48, 64))
    with caplog.at_level(logging.WARNING):
        pipeline.set_camera_info(rosbags_kit.camera_info(np.zeros((3, 3)), (48, 64), sensors.header(0.0)))
    assert f"{TOPIC}: CameraInfo not used: its K is all zeros" in caplog.text
    [result, *_] = run(pipeline, sensors, 2)
    assert result.labels is not None and result.status["depth"] == "invalid"
    assert result.errors["depth"].startswith(f"no usable camera intrinsics: the CameraInfo on {TOPIC} was refused "
                                             f"(its K is all zeros")
    pipeline.set_camera_info(rosbags_kit.camera_info(intrinsics((48, 64)), (48, 64), sensors.header(1.0)))
    assert "depth" in run(pipeline, sensors, 1, start=101.0)[0].used  # a usable one later: depth is back


def test_frames_beyond_the_models_input_are_decoded_at_its_size_and_labels_upsampled_once(
        tiny_segmenter, rosbags_kit, caplog, monkeypatch):
    """A camera of 4x the model's side: every input is resized before its per-pixel work (HHA on the model's
    pixels with K scaled to them), the labels come back at the camera's size, nearest from the model's."""
    model = tiny_segmenter.size
    big = (4 * model[0], 4 * model[1])
    with caplog.at_level(logging.INFO):
        pipeline = make_pipeline(tiny_segmenter)
    assert (f"model input {model[1]}x{model[0]}: a sensor image of more than {4 * model[0] * model[1]} pixels (4x "
            f"the model's) is resized to it on input") in caplog.text  # said at start-up
    sensors = Sensors(rosbags_kit, big, seed=4)
    k = intrinsics(big)
    pipeline.set_camera_info(rosbags_kit.camera_info(k, big, sensors.header(0.0)))
    calls = []
    predict = pipeline.segmenter.predict
    monkeypatch.setattr(pipeline.segmenter, "predict", lambda images, **kw: calls.append((images, kw)) or predict(
        images, **kw))
    with caplog.at_level(logging.INFO):
        results = run(pipeline, sensors, 2, confidence=False)
    assert len(results) == 2 and all(r.used == ("rgb", "depth", "event") for r in results)
    images, options = calls[-1]
    assert all(image.shape[:2] == model for image in images.values())
    assert options == {"confidence": False, "size": big}
    assert results[-1].labels.shape == big and results[-1].confidence is None
    depth = cv2.resize(sensors.depth_m, model[::-1], interpolation=cv2.INTER_NEAREST)
    scaled = k * np.array([[model[1] / big[1]], [model[0] / big[0]], [1.0]])
    np.testing.assert_array_equal(images["depth"], depth_to_hha(depth, scaled, DepthEncoding()))
    at_model = tiny_segmenter.predict(images, confidence=False)
    np.testing.assert_array_equal(results[-1].labels, resize_label(at_model.labels, big))
    told = [r.getMessage() for r in caplog.records if " -> model " in r.getMessage()]
    assert len(told) == 3  # once per sensor, not per frame
    assert told[0] == (f"rgb {big[1]}x{big[0]} -> model {model[1]}x{model[0]}: resized on input to the model's size "
                       f"(more than 4x its pixels: per-pixel work at {model[1]}x{model[0]}, labels "
                       f"upsampled to {big[1]}x{big[0]}, nearest)")


@pytest.mark.parametrize("size", [(48, 64), (30, 30), (128, 128)])
def test_frames_up_to_four_times_the_models_pixels_keep_their_size(tiny_segmenter, rosbags_kit, size):
    assert size[0] * size[1] <= 4 * tiny_segmenter.size[0] * tiny_segmenter.size[1]
    pipeline = make_pipeline(tiny_segmenter, "depth.encoding=depth")
    [result] = run(pipeline, Sensors(rosbags_kit, size), 1)
    frame = pipeline.decoder.frame_size(size, "the test")
    assert frame.work == frame.sensor == size and not frame.resized
    assert result.labels.shape == result.confidence.shape == size


def cloud(kit, t, n=300, seed=0):
    rng = np.random.default_rng(seed)
    points = np.zeros(n, dtype=[("x", np.float32), ("y", np.float32), ("z", np.float32), ("intensity", np.float32)])
    points["x"], points["y"] = rng.uniform(3, 30, n), rng.uniform(-8, 8, n)
    points["z"], points["intensity"] = rng.uniform(-1.4, 2, n), 100.0
    return kit.pointcloud(points, kit.header(int(round(t * 1e9)), "lidar"))


def test_a_frame_a_point_cloud_drives_takes_its_size_from_the_camera_settings(tiny_segmenter, rosbags_kit):
    """The camera silent, LiDAR points drive: without an image there is no size unless camera.image_size or
    camera_info gives one, and the cloud says so; with one, the frame is labelled at it."""
    overrides = ["modalities=[rgb,lidar]", "sensors.lidar.type=sensor_msgs/msg/PointCloud2"]
    results = {}
    camera = ["camera.image_size=[40,60]", "camera.intrinsics=[30.0,0.0,30.0,0.0,30.0,20.0,0.0,0.0,1.0]"]
    for name, extra in (("no size", []), ("image_size", camera)):
        pipeline = make_pipeline(tiny_segmenter, *overrides, *extra)
        frames = [f for i in range(3) for f in pipeline.add("lidar", cloud(rosbags_kit, 100.0 + i), received=i)]
        results[name] = [pipeline.process(f) for f in frames + pipeline.drain()]
    assert all(r.driver == "lidar" and r.labels is None for r in results["no size"])
    assert results["no size"][0].errors["lidar"].startswith("no image in this frame gives its size")
    assert all(r.labels.shape == (40, 60) and r.used == ("lidar",) for r in results["image_size"])
