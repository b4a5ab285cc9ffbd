"""Recorded-style bags (dataset_to_bag --as-recorded: CompressedImage png, compressedDepth 16UC1, evt3
EventPackets, PointCloud2 + /tf_static) replay to the SAME labels, frame for frame, as a bag of their decoded
equivalents as raw Images, decoded here with independent tools (OpenCV, faery's evt3 decoder, the projection)."""

import json

import cv2
import numpy as np
import pytest

from mlesam_core.data import deliver_camera_matrix
from mlesam_core.sensors import event_count_scale, lidar_image_to_uint8, project_points, render_event_frame
from mlesam_ros.bag_io import BagWriter, read_bag
from mlesam_ros.dataset_to_bag import (
    CAMERA_FROM_LIDAR,
    EVENT_WINDOW,
    GROUND_TRUTH_TOPIC,
    RECORDED_TOPICS,
    TF_STATIC_TOPIC,
    convert,
)
from mlesam_ros.dataset_to_bag import main as dataset_to_bag_main
from mlesam_ros.image_conversion import image_msg_to_array
from mlesam_ros.messages import MessageKit, message_type, stamp_to_ns
from mlesam_ros.params import load_segment_config
from mlesam_ros.replay import replay

RECORDED_OVERRIDES = [f"sensors.{m}.topic={RECORDED_TOPICS[m]}" for m in ("rgb", "depth", "event", "lidar")]


def replay_config(*overrides):
    return load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver", *overrides])


def faery_decode(stream, size, tmp_path):
    import faery

    path = tmp_path / "events.raw"
    path.write_bytes(b"%% evt 3.0\n%% format EVT3;width=%d;height=%d\n%% geometry %dx%d\n" % (
        size[1], size[0], size[1], size[0]) + stream)
    with faery.evt.Decoder(path, None, None) as decoder:
        events = np.concatenate([packet["events"] for packet in decoder])
    return events["t"].astype(np.int64), events["x"], events["y"], events["on"].astype(np.uint8)


def decoded_equivalents(recorded, out, tmp_path):
    """The recorded bag's content as raw Images on the default topics (and its camera_info, ground truth)."""
    messages = list(read_bag(recorded))
    packets = [m for t, _, m in messages if t == RECORDED_TOPICS["event"]]
    size = (int(packets[0].height), int(packets[0].width))
    t_us, x, y, p = faery_decode(b"".join(bytes(m.events) for m in packets), size, tmp_path)
    offset_ns = stamp_to_ns(packets[0].header.stamp) - int(t_us[0]) * 1000  # the first packet anchors
    ros_ns = t_us * 1000 + offset_ns
    with BagWriter(out, "sqlite3") as writer:
        kit = MessageKit.rosbags(writer.store)
        for topic, log_ns, msg in messages:
            if topic == RECORDED_TOPICS["rgb"]:
                bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
                assert msg.format == "rgb8; png compressed bgr8"
                writer.write("/camera/image_raw", log_ns, kit.image(bgr[:, :, ::-1].copy(), "rgb8", msg.header))
                end = stamp_to_ns(msg.header.stamp)
                window = (ros_ns > end - int(EVENT_WINDOW * 1e9)) & (ros_ns <= end)
                frame = render_event_frame(x[window], y[window], p[window], size, event_count_scale("deliver"))
                writer.write("/event/image_raw", log_ns, kit.image(frame, "rgb8", msg.header))
            elif topic == RECORDED_TOPICS["depth"]:
                assert msg.format == "16UC1; compressedDepth png"
                millimetres = cv2.imdecode(np.frombuffer(bytes(msg.data)[12:], np.uint8), cv2.IMREAD_UNCHANGED)
                writer.write("/depth/image_raw", log_ns, kit.image(millimetres, "16UC1", msg.header))
            elif topic == RECORDED_TOPICS["lidar"]:
                points = np.frombuffer(bytes(msg.data), dtype=[(f.name, "<f4") for f in msg.fields])
                xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
                image = project_points(xyz, points["intensity"], CAMERA_FROM_LIDAR,
                                       deliver_camera_matrix(*size), size)
                header = kit.header(stamp_to_ns(msg.header.stamp), "camera_optical_frame")
                writer.write("/lidar/image_raw", log_ns, kit.image(lidar_image_to_uint8(image), "rgb8", header))
            elif topic in ("/camera/camera_info", GROUND_TRUTH_TOPIC):
                writer.write(topic, log_ns, msg)
    return x.size


def labels(out):
    return [(stamp_to_ns(m.header.stamp), image_msg_to_array(m)) for t, _, m in read_bag(out / "bag")
            if t == "/mlesam/labels"]


@pytest.fixture(scope="module")
def recorded_bag(synthetic_deliver_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("recorded") / "bag"
    record = convert("deliver", synthetic_deliver_root, "val", out, storage="mcap", depth_encoding="16UC1",
                     as_recorded=True, codec="png", seed=3)
    return out, record


def test_a_recorded_style_bag_carries_what_drivers_publish(recorded_bag, synthetic_deliver_root):
    from mlesam_core.data import DeliverDataset

    bag, record = recorded_bag
    types, clouds = {}, []
    for topic, _, msg in read_bag(bag):
        types.setdefault(topic, set()).add(message_type(msg))
        if topic == RECORDED_TOPICS["lidar"]:
            clouds.append(msg)
    # the clouds are the generator's own ray-cast scans: they project to exactly the data set's LiDAR images
    stored = DeliverDataset(synthetic_deliver_root, "val", ("lidar",))
    for index in (0, 5):
        points = np.frombuffer(bytes(clouds[index].data), dtype=[(f.name, "<f4") for f in clouds[index].fields])
        size = stored[index]["label"].shape
        image = project_points(np.stack([points["x"], points["y"], points["z"]], axis=1), points["intensity"],
                               CAMERA_FROM_LIDAR, deliver_camera_matrix(*size), size)
        np.testing.assert_array_equal(lidar_image_to_uint8(image), stored[index]["images"]["lidar"])
    assert types[RECORDED_TOPICS["rgb"]] == types[RECORDED_TOPICS["depth"]] == {"sensor_msgs/msg/CompressedImage"}
    assert types[RECORDED_TOPICS["event"]] == {"event_camera_msgs/msg/EventPacket"}
    assert types[RECORDED_TOPICS["lidar"]] == {"sensor_msgs/msg/PointCloud2"}
    assert types[TF_STATIC_TOPIC] == {"tf2_msgs/msg/TFMessage"}
    assert record["topics"][RECORDED_TOPICS["rgb"]] == record["frames"] == 10
    assert record["topics"][RECORDED_TOPICS["event"]] > 2 * record["frames"]  # several packets per frame
    assert any(p.suffix == ".mcap" for p in bag.iterdir())  # MCAP: the storage robots record with (Jazzy)


def test_recorded_style_bag_gives_the_same_labels_as_its_decoded_equivalents(recorded_bag, tiny_segmenter, tmp_path):
    bag, _ = recorded_bag
    events = decoded_equivalents(bag, tmp_path / "decoded", tmp_path)
    assert events > 1000
    recorded = replay(bag, tmp_path / "out_recorded", replay_config(*RECORDED_OVERRIDES), tiny_segmenter)
    decoded = replay(tmp_path / "decoded", tmp_path / "out_decoded", replay_config(), tiny_segmenter)
    assert recorded["frames"] == decoded["frames"] == 10
    frames = {out: [json.loads(line) for line in (tmp_path / out / "frames.jsonl").read_text().splitlines()]
              for out in ("out_recorded", "out_decoded")}
    for records in frames.values():
        assert all(f["used"] == ["rgb", "depth", "event", "lidar"] and not f["errors"] for f in records), records
    # the router's weights depend continuously on every input: equal weights mean equal model inputs
    assert [f["routing"] for f in frames["out_recorded"]] == [f["routing"] for f in frames["out_decoded"]]
    a, b = labels(tmp_path / "out_recorded"), labels(tmp_path / "out_decoded")
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) == 10
    for (_, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert recorded["ground_truth"]["miou"] == decoded["ground_truth"]["miou"]


def test_the_command_line_writes_mcap_by_default_with_as_recorded(synthetic_deliver_root, tmp_path):
    out = tmp_path / "cli"
    dataset_to_bag_main(["--format", "deliver", "--root", str(synthetic_deliver_root), "--split", "val", "--out",
                         str(out), "--as-recorded", "--codec", "jpeg", "--limit", "2"])
    assert any(p.suffix == ".mcap" for p in out.iterdir())
    formats = {m.format for t, _, m in read_bag(out) if t == RECORDED_TOPICS["rgb"]}
    assert formats == {"rgb8; jpeg compressed bgr8"}


def write_muses_with_raw_sensors(root, frames=2, seed=0):
    """A MUSES tree (official layout) with calib.json, raw LiDAR scans and event files."""
    import h5py

    from mlesam_core.data.image_io import write_image

    rng = np.random.default_rng(seed)
    height, width = 108, 192  # a tenth of 1080 x 1920
    folder = ("val", "clear", "day")
    yaw = np.radians(3.0)
    event_to_rgb = np.eye(4)
    event_to_rgb[:3, :3] = [[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]]
    calib = {"intrinsics": {"rgb": {"K": [[1000.0, 0, 960.0], [0, 1000.0, 540.0], [0, 0, 1]]},
                            "event": {"K": [[100.0, 0, 96.0], [0, 100.0, 54.0], [0, 0, 1]]}},
             "extrinsics": {"lidar2rgb": [[0, -1, 0, 0.05], [0, 0, -1, -0.2], [1, 0, 0, 0.1], [0, 0, 0, 1]],
                            "event2rgb": event_to_rgb.tolist()}}
    root.mkdir(parents=True)
    (root / "calib.json").write_text(json.dumps(calib))
    for i in range(frames):
        name = f"{i:06d}"
        write_image(root.joinpath("frame_camera", *folder, f"{name}_frame_camera.png"),
                    rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        write_image(root.joinpath("gt_semantic", *folder, f"{name}_gt_labelTrainIds.png"),
                    rng.integers(0, 19, (height, width), dtype=np.uint8))
        n = 4000
        scan = np.stack([rng.uniform(3, 40, n), rng.uniform(-10, 10, n), rng.uniform(-2, 3, n),
                         rng.uniform(0, 255, n), rng.integers(0, 32, n), rng.uniform(0, 0.1, n)], axis=1)
        path = root.joinpath("lidar", *folder, f"{name}_lidar.bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        scan.astype(np.float64).tofile(path)
        m = 20000  # 60 ms of events: the loader and the bag keep the last 30 ms
        t = np.sort(rng.integers(5_000_000, 5_060_000, m))
        t = np.where(t == t.max() - 30_000, t + 1, t)  # none on the window's open end (MUSES: closed, ours: open)
        path = root.joinpath("event_camera", *folder, f"{name}_event_camera.h5")
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for key, values in (("x", rng.integers(0, width, m)), ("y", rng.integers(0, height, m)), ("t", t),
                                ("p", rng.integers(0, 2, m))):
                f[f"events/{key}"] = values
    return root


def test_muses_raw_events_and_scans_become_packets_and_clouds_that_decode_to_the_loaders_images(tmp_path,
                                                                                                 decode_message):
    from mlesam_core.data import MusesDataset
    from mlesam_ros.events import EventStream
    from mlesam_ros.model_inputs import InputDecoder

    root = write_muses_with_raw_sensors(tmp_path / "muses")
    bag = tmp_path / "muses_bag"
    convert("muses", root, "val", bag, as_recorded=True, codec="png")
    loader = MusesDataset(root, "val", ("frame", "event", "lidar"), from_raw=True)
    config = load_segment_config(None, ["modalities=[frame,event,lidar]", "primary=frame",
                                        f"events.count_scale={event_count_scale('muses')}"])
    decoder = InputDecoder(config, model_size=(1024, 1024))  # larger than the samples: nothing resized
    stream = EventStream(window=EVENT_WINDOW, retain=1.0)
    frames = {}
    for topic, _, msg in read_bag(bag):
        if topic == TF_STATIC_TOPIC:
            decoder.transforms.add_message(msg)
        elif topic == "/camera/camera_info":
            decoder.set_camera_info(msg)
        elif topic == RECORDED_TOPICS["event"]:
            stream.add(msg)
        elif topic in (RECORDED_TOPICS["frame"], RECORDED_TOPICS["lidar"]):
            frames.setdefault(stamp_to_ns(msg.header.stamp), {})[topic] = msg
    assert len(frames) == 2
    for index, (stamp, messages) in enumerate(sorted(frames.items())):
        sample = loader[index]
        size = sample["label"].shape
        camera = decode_message(decoder, "frame", messages[RECORDED_TOPICS["frame"]], size)
        np.testing.assert_array_equal(camera, sample["images"]["frame"])
        events = decoder.render_events("event", stream.window(stamp), decoder.frame_size(size, "the sample"))
        assert events.sum() > 1000
        np.testing.assert_array_equal(events, sample["images"]["event"][:, :, :2])
        lidar = decode_message(decoder, "lidar", messages[RECORDED_TOPICS["lidar"]], size)
        assert (lidar[:, :, 0] > 0).sum() > 100
        np.testing.assert_array_equal(lidar, sample["images"]["lidar"])
