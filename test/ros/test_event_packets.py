"""event_camera_msgs/EventPacket input: evt3 streams written by an independent encoder (faery's) and checked with
a second decoder (faery's), split into packets as metavision_driver splits them; mono; the event frame of each
camera frame's window through the pipeline."""

import logging

import numpy as np
import pytest

from mlesam_core.data.base import resize_to
from mlesam_core.sensors import event_count_scale, render_event_frame
from mlesam_ros.events import (
    REANCHOR_NS,
    EventDecodeError,
    EventStream,
    encode_evt3,
    encode_mono,
    evt3_events_before,
    split_evt3,
)
from mlesam_ros.params import load_segment_config

SENSOR = (60, 80)  # (H, W) of the event sensor
BASE_NS = 1_700_000_000_000_000_000  # ROS time of sensor time 0


def synthetic_events(start_us, end_us, rate_per_s=400_000, seed=0):
    rng = np.random.default_rng(seed)
    n = int((end_us - start_us) / 1e6 * rate_per_s)
    t = np.sort(rng.integers(start_us, end_us, n)).astype(np.uint64)
    x = rng.integers(0, SENSOR[1], n).astype(np.uint16)
    y = rng.integers(0, SENSOR[0], n).astype(np.uint16)
    return t, x, y, rng.integers(0, 2, n).astype(np.uint8)


def second_decoder(stream, tmp_path):
    """faery's own decoder on the stream (a .raw file with faery's header)."""
    import faery

    header = b"%% evt 3.0\n%% format EVT3;width=%d;height=%d\n%% geometry %dx%d\n" % (
        SENSOR[1], SENSOR[0], SENSOR[1], SENSOR[0])
    path = tmp_path / "check.raw"
    path.write_bytes(header + stream)
    with faery.evt.Decoder(path, None, None) as decoder:
        events = np.concatenate([packet["events"] for packet in decoder])
    return events["t"], events["x"], events["y"], events["on"].astype(np.uint8)


def evt3_packets(kit, events, slice_us=5000, packet_bytes=None, latency_ns=(0, 0), seed=1):
    """One continuous evt3 stream of `events` written by faery's encoder, split as a driver splits it: at the
    first event of each `slice_us` of sensor time, or at every `packet_bytes` (any even offset); header stamp =
    ROS time of the packet's first event + a driver latency drawn from `latency_ns`."""
    t = events[0]
    stream = encode_evt3(*events, SENSOR)
    rng = np.random.default_rng(seed)
    if packet_bytes is None:
        edges = np.arange(int(t[0]) // slice_us * slice_us, int(t[-1]) + slice_us + 1, slice_us)
        pieces = split_evt3(stream, np.unique(np.searchsorted(t, edges)[:-1]))
    else:
        before = evt3_events_before(stream)
        pieces = [(stream[a:a + packet_bytes], int(before[a // 2])) for a in range(0, len(stream), packet_bytes)]
    msgs = []
    for seq, (data, first) in enumerate(pieces):
        stamp = BASE_NS + int(t[min(first, len(t) - 1)]) * 1000 + int(rng.integers(*latency_ns, endpoint=True))
        msgs.append(kit.event_packet("evt3", data, SENSOR, kit.header(stamp, "event_camera"), seq=seq))
    assert b"".join(bytes(m.events) for m in msgs) == stream
    return msgs, stream


def expected_window(events, end_ns, window_ns, offset_ns):
    t, x, y, p = events
    ros = t.astype(np.int64) * 1000 + offset_ns
    keep = (ros > end_ns - window_ns) & (ros <= end_ns) & (x < SENSOR[1]) & (y < SENSOR[0])
    return x[keep], y[keep], p[keep]


def test_an_evt3_stream_across_the_24_bit_wrap_decodes_packet_by_packet_as_a_second_decoder_does(rosbags_kit,
                                                                                                  tmp_path):
    events = synthetic_events(16_700_000, 16_860_000)  # sensor time wraps at 2^24 us = 16.777216 s
    msgs, stream = evt3_packets(rosbags_kit, events, packet_bytes=4094)  # USB-sized, splits mid-slice
    np.testing.assert_array_equal(second_decoder(stream, tmp_path)[0], events[0])  # the stream is right
    stream_state = EventStream(window=0.03, retain=1.0)
    for msg in msgs:
        stream_state.add(msg)
    offset = BASE_NS  # the first packet starts with the first event: its stamp anchors exactly
    for end_us in (16_730_000, 16_777_216 + 5_000, 16_859_999):
        end_ns = BASE_NS + end_us * 1000
        window = stream_state.window(end_ns)
        x, y, p = expected_window(events, end_ns, 30_000_000, offset)
        assert window.x.size > 5000
        np.testing.assert_array_equal(window.x, x)
        np.testing.assert_array_equal(window.y, y)
        np.testing.assert_array_equal(window.polarity, p)


def test_stamp_jitter_keeps_the_anchor_and_a_driver_restart_re_anchors(rosbags_kit, caplog):
    events = synthetic_events(1_000_000, 1_200_000, seed=2)
    msgs, _ = evt3_packets(rosbags_kit, events, latency_ns=(0, REANCHOR_NS // 2))
    stream = EventStream(window=0.03, retain=10.0)
    first_offset = stamp_of(msgs[0]) - int(events[0][0]) * 1000  # the anchor: the first packet's stamp
    for msg in msgs:
        stream.add(msg)
    end_ns = BASE_NS + 1_100_000_000
    np.testing.assert_array_equal(stream.window(end_ns).x, expected_window(events, end_ns, 30_000_000,
                                                                           first_offset)[0])
    # the driver restarts: the camera's clock starts again near 0 while ROS time goes on
    restarted = synthetic_events(10_000, 150_000, seed=3)
    later, _ = evt3_packets(rosbags_kit, restarted)
    shift = 2_000_000_000
    for msg in later:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec + shift
        msg.header = rosbags_kit.header(stamp, "event_camera")
    with caplog.at_level(logging.INFO):
        for msg in later:
            stream.add(msg)
    assert "re-anchoring" in caplog.text
    end_ns = BASE_NS + shift + 100_000_000
    x, _, _ = expected_window(restarted, end_ns, 30_000_000, BASE_NS + shift)
    np.testing.assert_array_equal(stream.window(end_ns).x, x)


def test_a_packet_cut_mid_word_or_from_another_sensor_is_refused_and_the_stream_goes_on(rosbags_kit):
    events = synthetic_events(500_000, 600_000, seed=4)
    msgs, _ = evt3_packets(rosbags_kit, events)
    stream = EventStream(window=0.03, retain=1.0)
    cut = rosbags_kit.event_packet("evt3", bytes(msgs[5].events)[:-1], SENSOR, msgs[5].header)
    other = rosbags_kit.event_packet("evt3", bytes(msgs[5].events), (480, 640), msgs[5].header)
    unknown = rosbags_kit.event_packet("trigger", b"\x00\x00", SENSOR, msgs[5].header)
    for msg in msgs[:5]:
        stream.add(msg)
    with pytest.raises(EventDecodeError, match="cut mid-word"):
        stream.add(cut)
    with pytest.raises(EventDecodeError, match="another sensor: evt3 640x480, the stream is evt3 80x60"):
        stream.add(other)
    with pytest.raises(EventDecodeError, match="'trigger' is not supported"):
        stream.add(unknown)
    for msg in msgs[5:]:
        stream.add(msg)
    end_ns = BASE_NS + 590_000_000
    np.testing.assert_array_equal(stream.window(end_ns).x, expected_window(events, end_ns, 30_000_000, BASE_NS)[0])


def test_mono_packets_take_the_header_stamp_plus_dt(rosbags_kit):
    t, x, y, p = synthetic_events(0, 40_000, seed=5)
    stamp = BASE_NS + 7
    ros = stamp + t.astype(np.int64) * 1000
    msg = rosbags_kit.event_packet("mono", encode_mono(ros, x, y, p, stamp), SENSOR,
                                   rosbags_kit.header(stamp, "event_camera"))
    stream = EventStream(window=0.03, retain=1.0)
    assert stream.add(msg) == ros[-1]
    window = stream.window(stamp + 35_000_000)
    keep = (ros > stamp + 5_000_000) & (ros <= stamp + 35_000_000) & (x < SENSOR[1])
    np.testing.assert_array_equal(window.x, x[keep])
    np.testing.assert_array_equal(window.polarity, p[keep])


def test_each_camera_frame_gets_the_events_of_its_window_late_packets_included(tiny_segmenter, rosbags_kit, caplog):
    from mlesam_ros.pipeline import SegmentationPipeline

    config = load_segment_config(None, ["model.config=config/model/mlesam_tiny.yaml", "classes=deliver",
                                        "modalities=[rgb,event]", "sensors.event.max_delay=0.02",
                                        "sensors.event.type=event_camera_msgs/msg/EventPacket"])
    pipeline = SegmentationPipeline(config, tiny_segmenter, clock=lambda: 0.0)
    assert pipeline.decoder.event_count_scale == config.events.count_scale == event_count_scale("deliver") == 32.0
    events = synthetic_events(0, 400_000, rate_per_s=100_000, seed=6)
    packets, _ = evt3_packets(rosbags_kit, events, slice_us=2000)
    size = (2 * SENSOR[0], 2 * SENSOR[1])  # the camera has twice the event sensor's resolution
    camera = [(BASE_NS + k * 100_000_000, rosbags_kit.image(np.zeros((*size, 3), np.uint8), "rgb8",
                                                            rosbags_kit.header(BASE_NS + k * 100_000_000, "cam")))
              for k in range(1, 4)]
    arrivals = [(stamp_of(m) + 10_000_000, "event", m) for m in packets]  # packets arrive 10 ms late
    arrivals += [(stamp, "rgb", m) for stamp, m in camera]
    frames = []
    for received, sensor, msg in sorted(arrivals, key=lambda a: a[0]):
        frames += pipeline.add(sensor, msg, received=received / 1e9)
    frames += pipeline.drain()
    assert [round(f.stamp, 3) for f in frames] == [round(s / 1e9, 3) for s, _ in camera]
    for frame, (stamp, _) in zip(frames, camera, strict=True):
        x, y, p = expected_window(events, stamp, 30_000_000, BASE_NS)
        assert x.size > 1000
        result = pipeline.process(frame)
        assert result.used == ("rgb", "event") and result.labels.shape == size
        assert "event" not in frame.messages  # the packets gave way to the frame's window
        # the camera's 120x160 has more pixels than the tiny model's input: the frame is decoded at the model's size
        work = pipeline.decoder.frame_size(size, "the camera").work
        assert work == tiny_segmenter.size
        expected = resize_to(render_event_frame(x, y, p, SENSOR, 32.0), work, "event")[:, :, :2]
        np.testing.assert_array_equal(pipeline.decoder.render_events("event", frame.events["event"],
                                                                     pipeline.decoder.frame_size(size, "")), expected)
    bad = rosbags_kit.event_packet("evt3", b"\x00\x80\x01", SENSOR, rosbags_kit.header(BASE_NS + 5 * 10**8, "e"))
    assert pipeline.add("event", bad, received=0.5) == []
    assert "/event/image_raw (event): evt3 packet of 3 bytes is cut mid-word" in caplog.text


def stamp_of(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def word(code, rest):
    """A libcaer_cmp word as event_camera_codecs' libcaer_cmp_types.h lays it out (4-bit code over 12 bits)."""
    return (code << 12) | rest


def test_libcaer_cmp_packets_decode_as_event_camera_codecs_decodes_them(rosbags_kit):
    th, tl, ax, ay, vb, v8 = range(6)
    first = [word(th, 1), word(tl, 5), word(ax, 7), word(ay, 3 | 1 << 11), word(ay, 4),  # x 7: y 3 ON, y 4 OFF
             word(tl, 9), word(vb, 10 | 1 << 11), word(v8, 0b101), word(v8, 0b10000000)]  # vector: y 10, 12; 25
    second = [word(tl, 2), word(v8, 0b1), word(ax, 9), word(ay, 50)]  # time restarts; x and the base carry over
    stream = EventStream(window=1.0, retain=2.0)
    base_us = 1_700_000_000_000_000
    for words, offset in ((first, 0), (second, 10_000)):
        stream.add(rosbags_kit.event_packet("libcaer_cmp", np.array(words, "<u2").tobytes(), SENSOR,
                                            rosbags_kit.header(0, "e"), time_base=base_us + offset))
    window = stream.window((base_us + 20_000) * 1000)
    assert window.x.tolist() == [7, 7, 7, 7, 7, 7, 9]
    assert window.y.tolist() == [3, 4, 10, 12, 25, 26, 50]
    assert window.polarity.tolist() == [1, 0, 1, 1, 1, 1, 0]
    t_us = [4096 + 5, 4096 + 5, 4096 + 9, 4096 + 9, 4096 + 9, 10_000 + 2, 10_000 + 2]
    assert [c.ros_ns(i) for c in stream._chunks for i in range(c.t.size)] == [(base_us + t) * 1000 for t in t_us]


def test_libcaer_packets_take_time_base_plus_the_microsecond_stamps_across_a_wrap(rosbags_kit):
    x, y, p = np.array([3, 85, 5]), np.array([2, 59, 0]), np.array([1, 0, 1])  # x 85: outside the 80x60 sensor
    stamps = np.array([2**31 - 5, 2**31 - 1, 3], dtype=np.int64)  # the 31-bit counter wraps before the third
    events = np.zeros(3, dtype=[("data", "<u4"), ("timestamp", "<i4")])
    events["data"] = (x << 17) | (y << 2) | (p << 1) | 1  # libcaer's polarity event: bit 0 = valid
    events["timestamp"] = stamps
    msg = rosbags_kit.event_packet("libcaer", events.tobytes(), SENSOR, rosbags_kit.header(0, "e"), time_base=BASE_NS)
    stream = EventStream(window=10.0, retain=20.0)
    last_ns = BASE_NS + (2**31 + 3) * 1000
    assert stream.add(msg) == last_ns
    window = stream.window(last_ns)
    assert window.x.tolist() == [3, 5] and window.y.tolist() == [2, 0] and window.polarity.tolist() == [1, 1]
    assert stream.window(last_ns - 1).x.tolist() == [3]
