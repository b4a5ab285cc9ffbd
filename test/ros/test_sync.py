"""ApproximateSync on scripted timelines: drop, return, jitter, reorder, primary loss, stamps going backwards."""

import random
import weakref

import pytest

from mlesam_ros.sync import ApproximateSync, SensorTiming, StampError

SENSORS = ("rgb", "depth", "event", "lidar")
PERIOD = 0.1


def make_sync(use_stale=True, sensors=SENSORS, **timing):
    return ApproximateSync(sensors, {s: SensorTiming(**timing) for s in sensors}, primary_timeout=0.3,
                           use_stale=use_stale, buffer_size=16)


def timeline(duration, silent=None, jitter=0.0, seed=0):
    """Messages (sensor, stamp) of four 10 Hz sensors in stamp order; `silent`: sensor -> (start, end)."""
    rng = random.Random(seed)
    events = []
    for i in range(round(duration / PERIOD)):
        t = round(i * PERIOD, 6)
        for sensor in SENSORS:
            start, end = (silent or {}).get(sensor, (None, None))
            if start is not None and start <= t < end:
                continue
            offset = rng.uniform(-jitter, jitter) if sensor != "rgb" else 0.0
            events.append((sensor, round(t + offset, 6)))
    return events


def feed(sync, events, refused=None):
    """Add messages in the given (arrival) order; the message is its (sensor, stamp) pair. Messages refused with
    a StampError are appended to `refused` (as the pipeline logs and skips them)."""
    frames = []
    for sensor, stamp in events:
        try:
            frames += sync.add(sensor, stamp, (sensor, stamp))
        except StampError:
            (refused if refused is not None else []).append((sensor, stamp))
    return frames + sync.drain()


def test_every_primary_message_gives_one_frame_with_all_sensors_ok():
    frames = feed(make_sync(), timeline(2.0))
    assert [f.stamp for f in frames] == [round(i * PERIOD, 6) for i in range(20)]
    assert all(f.driver == "rgb" for f in frames)
    assert all(set(f.status.values()) == {"ok"} for f in frames)
    assert all(f.messages[s] == (s, f.stamp) for f in frames for s in SENSORS)


def test_dropped_depth_is_stale_then_missing_and_used_again_when_it_returns():
    frames = feed(make_sync(), timeline(3.0, silent={"depth": (1.0, 2.0)}))
    assert len(frames) == 30  # one per primary message throughout the drop
    by_stamp = {f.stamp: f for f in frames}
    assert by_stamp[0.9].status["depth"] == "ok"
    # last depth message at 0.9: stale while within stale_after (0.5 s), missing after
    assert [by_stamp[t].status["depth"] for t in (1.0, 1.4, 1.5, 1.9)] == ["stale", "stale", "missing", "missing"]
    assert by_stamp[1.2].messages["depth"] == ("depth", 0.9)  # stale data reused by policy
    assert "depth" not in by_stamp[1.6].messages
    assert by_stamp[2.0].status["depth"] == "ok" and by_stamp[2.0].messages["depth"] == ("depth", 2.0)
    assert all(f.status[s] == "ok" for f in frames for s in ("rgb", "event", "lidar"))


def test_stale_data_is_left_out_when_the_policy_says_so():
    frames = feed(make_sync(use_stale=False), timeline(2.0, silent={"lidar": (1.0, 2.0)}))
    frame = next(f for f in frames if f.stamp == 1.2)
    assert frame.status["lidar"] == "stale" and "lidar" not in frame.messages


def test_jittered_stamps_within_slop_match_the_nearest_message():
    frames = feed(make_sync(slop=0.03), timeline(3.0, jitter=0.02, seed=4))
    assert len(frames) == 30
    for frame in frames:
        for sensor in ("depth", "event", "lidar"):
            assert frame.status[sensor] == "ok"
            assert abs(frame.offsets[sensor]) <= 0.02 + 1e-9
            assert abs(frame.messages[sensor][1] - frame.stamp) <= 0.02 + 1e-9


def test_arrival_order_does_not_change_the_frames():
    events = timeline(3.0, jitter=0.02, seed=5)
    expected = [(f.stamp, f.messages) for f in feed(make_sync(), events)]
    rng = random.Random(6)
    shuffled = sorted(events, key=lambda e: e[1] + rng.uniform(0, 0.07))  # arrive up to 70 ms late, reordered
    assert shuffled != events
    assert [(f.stamp, f.messages) for f in feed(make_sync(), shuffled)] == expected


def test_silent_primary_hands_over_to_the_next_sensor_and_takes_back_when_it_returns():
    frames = feed(make_sync(), timeline(4.0, silent={"rgb": (1.0, 2.5)}))
    stamps = [f.stamp for f in frames]
    assert stamps == sorted(set(stamps))  # strictly increasing, no duplicate frames
    drivers = {f.stamp: f.driver for f in frames}
    assert all(drivers[t] == "rgb" for t in stamps if t < 1.0 or t >= 2.5)
    # rgb's last stamp 0.9 + primary_timeout 0.3: depth drives from the first depth message after 1.2
    assert [drivers[t] for t in stamps if 1.0 <= t < 2.5] == ["depth"] * len([t for t in stamps if 1.25 <= t < 2.5])
    assert min(t for t in stamps if drivers[t] == "depth") == pytest.approx(1.3)
    assert len(frames) == 10 + 12 + 15  # rgb frames before and after, depth frames 1.3 .. 2.4
    by_stamp = {round(f.stamp, 6): f for f in frames}
    assert by_stamp[1.3].status["rgb"] == "stale" and by_stamp[1.3].status["event"] == "ok"  # 0.4 s old
    assert by_stamp[1.5].status["rgb"] == "missing"


def test_primary_and_first_fallback_silent_the_third_sensor_drives():
    frames = feed(make_sync(), timeline(3.0, silent={"rgb": (1.0, 3.0), "depth": (1.0, 3.0)}))
    late = [f for f in frames if f.stamp >= 1.5]
    assert late and all(f.driver == "event" for f in late)
    assert all(f.status["lidar"] == "ok" and f.status["depth"] == "missing" for f in late)


def test_aux_stamp_going_backwards_is_refused_without_changing_state():
    sync = make_sync()
    feed_events = timeline(1.0)
    frames = [f for s, t in feed_events for f in sync.add(s, t, (s, t))]
    with pytest.raises(StampError, match="went backwards by 0.9"):
        sync.add("lidar", 0.0, ("lidar", "old"))
    frames += sync.add("rgb", 1.0, ("rgb", 1.0)) + sync.drain()
    assert frames[-1].stamp == 1.0 and frames[-1].messages["lidar"] == ("lidar", 0.9)


def test_primary_stamp_jumping_back_restarts_synchronisation_like_a_bag_loop():
    events = timeline(1.0) + timeline(1.0)  # the same second played twice
    frames = feed(make_sync(), events)
    assert len(frames) == 20
    assert [f.stamp for f in frames[10:]] == [f.stamp for f in frames[:10]]
    assert all(set(f.status.values()) == {"ok"} for f in frames)


def interleaved(stamps, aux_first=True):
    """Messages of the four sensors at each stamp, the auxiliaries logged before the camera (or after)."""
    aux = [s for s in SENSORS if s != "rgb"]
    return [(s, t) for t in stamps for s in ([*aux, "rgb"] if aux_first else ["rgb", *aux])]


def restarts(caplog):
    return sum("restarting synchronisation" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("aux_first", [True, False])
def test_a_bag_loop_answers_every_camera_frame_once_in_order_and_uses_every_sensor_right_after(caplog, aux_first):
    first = [round(100 + i * PERIOD, 6) for i in range(20)]
    looped = [round(t - 10.0, 6) for t in first]  # `ros2 bag play --loop`: every stamp 10 s back
    frames = feed(make_sync(), interleaved(first + looped, aux_first))
    assert [f.stamp for f in frames] == first + looped  # each camera frame exactly once, in arrival order
    assert all(set(f.status.values()) == {"ok"} for f in frames)  # also the first frame after the jump
    assert all(f.messages[s] == (s, f.stamp) for f in frames for s in SENSORS)
    assert restarts(caplog) == 1


def test_one_camera_stamp_far_in_the_future_costs_only_that_frame(caplog):
    stamps = [round(i * PERIOD, 6) for i in range(20)]
    events = interleaved(stamps)
    outlier = events.index(("rgb", stamps[5]))
    events[outlier] = ("rgb", stamps[5] + 100.0)
    frames = feed(make_sync(), events)
    expected = [*stamps[:5], stamps[5] + 100.0, *stamps[6:]]
    assert [f.stamp for f in frames] == expected  # each camera frame exactly once, in arrival order
    assert frames[5].driver == "rgb" and set(frames[5].messages) == {"rgb"}  # nothing near its stamp
    assert all(set(f.status.values()) == {"ok"} for i, f in enumerate(frames) if i != 5)
    assert restarts(caplog) == 1  # once, not on every later frame


def test_one_auxiliary_stamp_far_in_the_future_costs_that_sensor_at_most_one_frame():
    stamps = [round(i * PERIOD, 6) for i in range(20)]
    events = interleaved(stamps)
    outlier = events.index(("depth", stamps[5]))
    events[outlier] = ("depth", stamps[5] + 100.0)
    frames = feed(make_sync(), events)
    assert [f.stamp for f in frames] == stamps
    assert all(f.status["depth"] == "ok" and f.messages["depth"] == ("depth", f.stamp)
               for f in frames if f.stamp != stamps[5])
    assert all(set(f.status.values()) == {"ok"} for f in frames if f.stamp != stamps[5])


def test_an_auxiliary_clock_behind_the_driver_is_refused_and_not_used():
    sync = make_sync(sensors=("rgb", "depth"))
    frames = []
    for i in range(10):
        t = round(10 + i * PERIOD, 6)
        frames += sync.add("rgb", t, ("rgb", t))
        if i < 5:
            frames += sync.add("depth", t, ("depth", t))
        else:  # depth's clock reset to 0 while the camera goes on
            with pytest.raises(StampError, match="held in case the driving sensor rgb jumps back too"):
                sync.add("depth", t - 10, ("depth", t - 10))
    frames += sync.drain()
    assert [f.stamp for f in frames] == [round(10 + i * PERIOD, 6) for i in range(10)]
    assert all(f.messages.get("depth", ("depth", f.stamp))[1] >= 10 for f in frames)


def test_a_primary_message_older_than_an_emitted_frame_is_refused():
    sync = make_sync(sensors=("rgb", "depth"))
    assert sync.add("rgb", 1.0, "a") == []
    assert [f.stamp for f in sync.add("depth", 1.0, "d")] == [1.0]
    with pytest.raises(StampError, match="not newer than the last emitted frame"):
        sync.add("rgb", 0.95, "late")


def test_frames_wait_for_slow_sensors_at_most_max_delay_of_data_time():
    sync = make_sync(sensors=("rgb", "depth"), max_delay=0.1)
    assert sync.add("rgb", 1.0, "rgb1") == []  # waits for depth
    assert sync.add("rgb", 1.05, "rgb2") == []  # data time 1.05 < 1.0 + max_delay
    frames = sync.add("rgb", 1.1, "rgb3")  # data time reached 1.1: frame 1.0 goes out without depth
    assert [f.stamp for f in frames] == [1.0] and frames[0].status["depth"] == "missing"


def test_tick_flushes_waiting_frames_when_every_sensor_is_silent():
    sync = make_sync(sensors=("rgb", "depth"), max_delay=0.1)
    sync.add("rgb", 1.0, "rgb", received=50.0)
    assert sync.tick(50.05) == []
    frames = sync.tick(50.1)
    assert [f.stamp for f in frames] == [1.0] and frames[0].status["depth"] == "missing"


def test_buffers_and_waiting_frames_stay_bounded():
    sync = ApproximateSync(("rgb", "depth"), {"rgb": SensorTiming(), "depth": SensorTiming(max_delay=1e9)},
                           buffer_size=4)
    emitted = []
    for i in range(100):
        emitted += sync.add("rgb", i * 0.1, i)
        assert len(sync._waiting) <= 4 and len(sync._buffers["rgb"]) <= 4
    assert [f.messages["rgb"] for f in emitted] == list(range(96))  # oldest forced out, none lost


def test_unknown_sensor_and_bad_timing_are_refused():
    with pytest.raises(ValueError, match="unknown sensor 'radar'"):
        make_sync().add("radar", 0.0, None)
    with pytest.raises(ValueError, match="stale_after: must be >= slop"):
        SensorTiming(slop=0.5, stale_after=0.1)


def test_a_sensor_that_never_drives_is_matched_but_neither_drives_nor_blocks_the_fallback():
    sync = make_sync()
    sync.never_drives("depth")  # e.g. event packets: many per frame, no frame rate
    events = [(s, t) for s, t in timeline(1.0, silent={"rgb": (0.0, 1.0)})]
    events += [("depth", round(0.05 + i * 0.01, 6)) for i in range(90)]  # a dense stream
    frames = feed(sync, sorted(events, key=lambda e: e[1]))
    assert {f.driver for f in frames} == {"event"}  # rgb silent: the next sensor that may drive takes over
    assert [f.stamp for f in frames] == [round(i * PERIOD, 6) for i in range(10)]
    assert all(f.status["depth"] == "ok" for f in frames[1:])
    with pytest.raises(ValueError, match="unknown sensor 'radar'"):
        sync.never_drives("radar")


def test_messages_no_later_frame_can_take_are_let_go():
    """Large images: what the synchroniser holds follows rate x stale_after, not buffer_size messages."""

    class Message:
        """A stand-in for a sensor message, whose lifetime the test watches."""

    sync = make_sync(stale_after=0.3)  # buffer_size 16: 1.6 s of 10 Hz messages without the pruning
    alive = []
    for sensor, stamp in timeline(4.0):
        message = Message()
        alive.append((sensor, stamp, weakref.ref(message)))
        sync.add(sensor, stamp, message)
        del message
    held = [(sensor, stamp) for sensor, stamp, ref in alive if ref() is not None]
    newest = max(stamp for _, stamp, _ in alive)
    assert held and all(stamp >= newest - 0.3 - PERIOD - 1e-9 for _, stamp in held), held
    assert len(held) <= len(SENSORS) * (round(0.3 / PERIOD) + 2)
