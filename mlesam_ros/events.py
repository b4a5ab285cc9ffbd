"""event_camera_msgs/EventPacket streams -> events in ROS time -> the event frame of each camera frame's window.

An `EventStream` per event sensor decodes every packet in arrival order, keeping the decoder's state across
packets (an evt3 stream split into packets at any 2-byte word continues its time base), maps event time to ROS
time and keeps the recent events; `window(t)` returns those with ROS time in (t - window, t], which
`render_event_frame` (mlesam_core.sensors, the one rendering) turns into the model's event frame.

Encodings and their time rules (event_camera_codecs' documentation and decoders, event_camera_msgs' README):

- `evt3` (Prophesee, metavision_driver): decoded with the `evt3` package's streaming decoder. evt3 carries sensor
  time only (24-bit microseconds wrapping every 16.8 s, extended by the decoder), and `time_base` is unused. ROS
  time = sensor time + offset, the offset anchored at the first packet (its header stamp minus the sensor time of
  its first event) and re-anchored, with a log line, when a packet's implied offset moves by more than
  `REANCHOR_NS` (a driver restart, a mis-detected wrap): small jitter of the stamps does not move events.
- `mono` (deprecated): 64-bit words, bit 63 polarity, bits 48-62 y, 32-47 x, 0-31 dt in ns; ROS time = header
  stamp + dt (the README's "best estimate ROS time").
- `libcaer` (iniVation, libcaer_driver): libcaer's 8-byte polarity events (uint32 data: bit 1 polarity, bits 2-16
  y, 17-31 x; int32 microsecond timestamp); the sensor time is aligned with host time at driver start-up, so ROS
  time = `time_base` (ns) + timestamp, plus 2^31 us for each timestamp wrap within the packet.
- `libcaer_cmp` (libcaer_driver's compressed form): 16-bit words (4-bit code: TIME_HIGH, TIME_LOW, ADDR_X,
  ADDR_Y, VECT_BASE_Y, VECT_8) with the packet's time in microseconds since `time_base` (us); ROS time =
  (time_base + (time_high << 12 | time_low)) * 1000. The time words restart in each packet; x, the vector base
  and polarity carry over, as in event_camera_codecs' decoder.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlesam_ros.messages import stamp_to_ns

logger = logging.getLogger(__name__)

# event_camera_msgs' EventPacket.msg (ROS 2), registered in the rosbags typestore for bags and tests
EVENT_PACKET_MSG = """\
std_msgs/Header header
uint32 height
uint32 width
uint64 seq
uint64 time_base
string encoding
bool is_bigendian
uint8[] events
"""
REANCHOR_NS = 50_000_000  # an implied evt3 offset this far from the anchor re-anchors
ENCODINGS = ("evt3", "mono", "libcaer", "libcaer_cmp")
MAX_EVENTS = 20_000_000  # events kept per stream at most (about 260 MB), whatever the retention time


class EventDecodeError(ValueError):
    """An EventPacket cannot be decoded; the message says why (the stream's state is unchanged)."""


@dataclass
class EventWindow:
    """The events of one frame's window, in sensor pixels; what the input decoder renders."""

    x: np.ndarray  # uint16
    y: np.ndarray  # uint16
    polarity: np.ndarray  # uint8, 1 = ON
    sensor_size: tuple[int, int]  # (H, W) of the event sensor
    end_ns: int  # the window is (end_ns - window_ns, end_ns] in ROS time
    window_ns: int
    header: Any  # the newest packet's header (frame_id, for logs)


@dataclass
class _Chunk:
    """One packet's events; ROS time ns = t * scale + offset (the decoder's own time array is kept, no copy)."""

    t: np.ndarray  # non-decreasing sensor or packet time in units of `scale` ns
    scale: int
    offset: int
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray

    def ros_ns(self, index: int) -> int:
        return int(self.t[index]) * self.scale + self.offset

    def mask(self, start_ns: int, end_ns: int) -> np.ndarray:
        """Events with ROS time in (start_ns, end_ns]."""
        keep = self.t <= (end_ns - self.offset) // self.scale
        low = (start_ns - self.offset) // self.scale
        return keep & (self.t > low) if low >= 0 else keep


class EventStream:
    """One event sensor's packets -> recent events in ROS time (see the module docstring)."""

    def __init__(self, window: float, retain: float) -> None:
        """Windows of `window` seconds; events older than `retain` seconds behind the newest are dropped."""
        if window <= 0 or retain < window:
            raise ValueError(f"window must be > 0 and retain >= window, got {window}, {retain}")
        self.window_ns = int(round(window * 1e9))
        self.retain_ns = int(round(retain * 1e9))
        self.encoding: str | None = None
        self.sensor_size: tuple[int, int] | None = None  # (H, W)
        self._decoder: Any = None
        self._offset_ns: int | None = None  # evt3: ROS time - sensor time
        self._chunks: deque[_Chunk] = deque()
        self._count = 0
        self.newest_ns: int | None = None
        self.header: Any = None

    def add(self, msg: Any) -> int:
        """Decode one packet; returns the ROS time (ns) up to which events are known (its last event's, or its
        header stamp without events). Raises EventDecodeError, keeping the state, for an unusable packet."""
        encoding = str(msg.encoding)
        size = (int(msg.height), int(msg.width))
        data = bytes(msg.events)
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if encoding not in ENCODINGS:
            raise EventDecodeError(f"EventPacket encoding {encoding!r} is not supported (supported: "
                                   f"{', '.join(ENCODINGS)})")
        if size[0] <= 0 or size[1] <= 0:
            raise EventDecodeError(f"EventPacket with sensor size {size[1]}x{size[0]}")
        if self.sensor_size is not None and (size != self.sensor_size or encoding != self.encoding):
            raise EventDecodeError(f"packet from another sensor: {encoding} {size[1]}x{size[0]}, the stream is "
                                   f"{self.encoding} {self.sensor_size[1]}x{self.sensor_size[0]}")
        if encoding == "evt3":
            chunk = self._decode_evt3(data, size, stamp_ns)
        elif encoding == "mono":
            chunk = _decode_mono(data, stamp_ns, bool(msg.is_bigendian))
        elif encoding == "libcaer":
            chunk = _decode_libcaer(data, int(msg.time_base))
        else:
            if self._decoder is None:
                self._decoder = LibcaerCmpDecoder()
            chunk = self._decoder.decode(data, int(msg.time_base))
        self.encoding, self.sensor_size, self.header = encoding, size, msg.header
        inside = (chunk.x < size[1]) & (chunk.y < size[0])  # as event_camera_codecs: outside the geometry: dropped
        if not inside.all():
            chunk.t, chunk.x, chunk.y, chunk.p = chunk.t[inside], chunk.x[inside], chunk.y[inside], chunk.p[inside]
        if chunk.t.size == 0:
            return stamp_ns
        self._chunks.append(chunk)
        self._count += chunk.t.size
        last = chunk.ros_ns(-1)
        self.newest_ns = last if self.newest_ns is None else max(self.newest_ns, last)
        self._prune()
        return last

    def _decode_evt3(self, data: bytes, size: tuple[int, int], stamp_ns: int) -> _Chunk:
        import evt3

        if len(data) % 2:
            raise EventDecodeError(f"evt3 packet of {len(data)} bytes is cut mid-word (evt3 words are 2 bytes); "
                                   f"packet dropped")
        if self._decoder is None:
            self._decoder = evt3.Decoder(sensor_width=size[1], sensor_height=size[0])
        try:
            events = self._decoder.feed(data)
        except Exception as exc:  # noqa: BLE001 -- the Rust decoder's errors (ValueError, RuntimeError, ...)
            raise EventDecodeError(f"evt3 decoder refused the packet: {type(exc).__name__}: {exc}") from None
        sensor_us = np.asarray(events.t)  # uint64 microseconds, the decoder's own array
        if sensor_us.size:
            implied = stamp_ns - int(sensor_us[0]) * 1000
            if self._offset_ns is None or abs(implied - self._offset_ns) > REANCHOR_NS:
                if self._offset_ns is not None:
                    logger.info("evt3: re-anchoring sensor time (implied offset moved %.3f s: driver restart or "
                                "a time wrap)", (implied - self._offset_ns) / 1e9)
                self._offset_ns = implied
        return _Chunk(sensor_us, 1000, self._offset_ns or 0, np.asarray(events.x), np.asarray(events.y),
                      np.asarray(events.p))

    def _prune(self) -> None:
        if self.newest_ns is None:
            return
        horizon = self.newest_ns - self.retain_ns
        while self._chunks and (self._chunks[0].ros_ns(-1) <= horizon or self._count > MAX_EVENTS):
            self._count -= self._chunks.popleft().t.size

    def window(self, end_ns: int) -> EventWindow:
        """The events with ROS time in (end_ns - window, end_ns]."""
        if self.sensor_size is None:
            raise EventDecodeError("no event packet decoded yet")
        start_ns = end_ns - self.window_ns
        parts = []
        for chunk in self._chunks:
            if chunk.ros_ns(-1) <= start_ns or chunk.ros_ns(0) > end_ns:
                continue
            keep = chunk.mask(start_ns, end_ns)
            parts.append((chunk.x[keep], chunk.y[keep], chunk.p[keep]))
        if parts:
            x, y, p = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        else:
            x, y, p = np.zeros(0, np.uint16), np.zeros(0, np.uint16), np.zeros(0, np.uint8)
        return EventWindow(x, y, p, self.sensor_size, end_ns, self.window_ns, self.header)


def _decode_mono(data: bytes, stamp_ns: int, big_endian: bool) -> _Chunk:
    if len(data) % 8:
        raise EventDecodeError(f"mono packet of {len(data)} bytes is cut mid-event (mono events are 8 bytes)")
    words = np.frombuffer(data, dtype=">u8" if big_endian else "<u8").astype(np.uint64)
    dt = (words & np.uint64(0xFFFFFFFF)).astype(np.int64)
    if dt.size > 1 and (np.diff(dt) < 0).any():
        raise EventDecodeError("mono packet whose event times go backwards")
    x = ((words >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.uint16)
    y = ((words >> np.uint64(48)) & np.uint64(0x7FFF)).astype(np.uint16)
    return _Chunk(dt, 1, stamp_ns, x, y, (words >> np.uint64(63)).astype(np.uint8))


def _decode_libcaer(data: bytes, time_base_ns: int) -> _Chunk:
    if len(data) % 8:
        raise EventDecodeError(f"libcaer packet of {len(data)} bytes is cut mid-event (events are 8 bytes)")
    events = np.frombuffer(data, dtype=[("data", "<u4"), ("timestamp", "<i4")])
    stamps = events["timestamp"].astype(np.int64)
    wraps = np.concatenate([[0], np.cumsum(stamps[1:] < stamps[:-1])]) if stamps.size else stamps
    t_us = stamps + wraps * (1 << 31)  # a wrap of the 31-bit microsecond counter within the packet
    word = events["data"]
    return _Chunk(t_us, 1000, time_base_ns, ((word >> 17) & 0x7FFF).astype(np.uint16),
                  ((word >> 2) & 0x7FFF).astype(np.uint16), ((word >> 1) & 1).astype(np.uint8))


class LibcaerCmpDecoder:
    """event_camera_codecs' libcaer_cmp decoding, vectorised: each word's state (time, x, vector base, polarity)
    is the value of the last word that set it (the time restarts in every packet; the rest carries over)."""

    TIME_HIGH, TIME_LOW, ADDR_X, ADDR_Y, VECT_BASE_Y, VECT_8 = range(6)

    def __init__(self) -> None:
        """A decoder at the stream's start."""
        self.x, self.base_y, self.polarity = 0, 0, 0

    def decode(self, data: bytes, time_base_us: int) -> _Chunk:
        """The events of one packet."""
        if len(data) % 2:
            raise EventDecodeError(f"libcaer_cmp packet of {len(data)} bytes is cut mid-word (words are 2 bytes)")
        words = np.frombuffer(data, dtype="<u2").astype(np.int64)
        codes, rest = words >> 12, words & 0xFFF
        if (codes > self.VECT_8).any():
            raise EventDecodeError(f"libcaer_cmp: unsupported word code {int(codes[codes > self.VECT_8][0])}")
        positions = np.arange(words.size)

        def last(code: int, values: np.ndarray, initial: int) -> np.ndarray:
            """Per word: `values` at the last word (at or before it) with `code`, else `initial`."""
            index = np.maximum.accumulate(np.where(codes == code, positions, -1))
            return np.where(index >= 0, values[np.maximum(index, 0)], initial)

        time_us = (last(self.TIME_HIGH, rest << 12, 0) | last(self.TIME_LOW, rest, 0)) + time_base_us
        x = last(self.ADDR_X, rest & 0x7FF, self.x)
        base = last(self.VECT_BASE_Y, rest & 0x7FF, self.base_y)
        polarity = last(self.VECT_BASE_Y, (rest >> 11) & 1, self.polarity)
        # each VECT_8 after a base (or after the packet start) moves the base on by 8
        vectors = codes == self.VECT_8
        since_base = np.cumsum(vectors) - last(self.VECT_BASE_Y, np.cumsum(vectors), 0)
        vector_base = base + 8 * (since_base - 1)
        single = np.flatnonzero(codes == self.ADDR_Y)
        bits = (rest[vectors, None] >> np.arange(8)) & 1
        vector_word, bit = np.nonzero(bits)
        vector_index = np.flatnonzero(vectors)[vector_word]
        order = np.argsort(np.concatenate([single, vector_index]), kind="stable")
        event_x = np.concatenate([x[single], x[vector_index]])[order]
        event_y = np.concatenate([rest[single] & 0x7FF, vector_base[vector_index] + bit])[order]
        event_p = np.concatenate([(rest[single] >> 11) & 1, polarity[vector_index]])[order]
        event_t = time_us[np.concatenate([single, vector_index])[order]]
        if words.size:
            self.x = int(x[-1])
            self.base_y = int(base[-1] + 8 * since_base[-1])
            self.polarity = int(polarity[-1])
        return _Chunk(event_t, 1000, 0, event_x.astype(np.uint16), event_y.astype(np.uint16),
                      event_p.astype(np.uint8))


def encode_mono(t_ns: np.ndarray, x: np.ndarray, y: np.ndarray, polarity: np.ndarray, stamp_ns: int) -> bytes:
    """The deprecated mono encoding of events (ROS time ns, dt from `stamp_ns` must fit 32 bits)."""
    dt = np.asarray(t_ns, np.int64) - stamp_ns
    if dt.size and (dt.min() < 0 or dt.max() >= 2**32):
        raise ValueError("mono: event times must lie within 4.29 s after the packet stamp")
    words = (dt.astype(np.uint64) | (np.asarray(x, np.uint64) << np.uint64(32))
             | (np.asarray(y, np.uint64) << np.uint64(48)) | (np.asarray(polarity, np.uint64) > 0).astype(
                 np.uint64) << np.uint64(63))
    return words.astype("<u8").tobytes()


def encode_evt3(t_us: np.ndarray, x: np.ndarray, y: np.ndarray, polarity: np.ndarray,
                sensor_size: tuple[int, int], continuation: bool = False) -> bytes:
    """An evt3 stream of time-ordered events (sensor time in microseconds), written by the faery package's
    encoder (an independent implementation, the file header stripped).

    faery starts a stream with a staircase of TIME_HIGH words from 0 up to the first event's time; with
    `continuation` only its last step is kept, so that the bytes continue an earlier stream with earlier times
    (a decoder reading the staircase after later times would count a time wrap)."""
    import tempfile
    from pathlib import Path

    import faery

    events = np.zeros(len(t_us), dtype=faery.EVENTS_DTYPE)
    events["t"], events["x"], events["y"] = t_us, x, y
    events["on"] = np.asarray(polarity) > 0
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.raw"
        with faery.evt.Encoder(path, "evt3", False, (int(sensor_size[1]), int(sensor_size[0])), True) as encoder:
            encoder.write({"events": events})
        raw = path.read_bytes()
    start = 0
    while raw[start:start + 1] == b"%":  # the .raw file's text header: '% key value' lines
        start = raw.index(b"\n", start) + 1
    stream = raw[start:]
    if continuation:
        codes = np.frombuffer(stream[: len(stream) // 2 * 2], dtype="<u2") >> 12
        first_other = int(np.argmax(codes != 0x8)) if (codes != 0x8).any() else codes.size
        stream = stream[max(0, first_other - 1) * 2:]
    return stream


def evt3_events_before(stream: bytes) -> np.ndarray:
    """For each 2-byte word of an evt3 stream, how many CD events the words before it hold (ADDR_X: one;
    VECT_12 / VECT_8: one per valid bit), to split a stream into packets at known events."""
    words = np.frombuffer(stream[: len(stream) // 2 * 2], dtype="<u2")
    codes = words >> 12
    valid = np.where(codes == 0x4, words & 0xFFF, np.where(codes == 0x5, words & 0xFF, 0)).astype(np.uint16)
    bits = np.unpackbits(valid.view(np.uint8).reshape(-1, 2), axis=1).sum(axis=1)
    counts = np.where(codes == 0x2, 1, bits).astype(np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]) if counts.size else counts


def split_evt3(stream: bytes, first_events: np.ndarray) -> list[tuple[bytes, int]]:
    """Split an evt3 stream into packets, the k-th starting at the word of event `first_events[k]` (increasing);
    returns (packet bytes, index of its first event). The first packet starts at byte 0 (with the stream's
    initial time words)."""
    before = evt3_events_before(stream)
    cuts = np.searchsorted(before, np.asarray(first_events, np.int64), side="left") * 2
    cuts[0] = 0
    ends = [*cuts[1:], len(stream)]
    return [(stream[a:b], int(before[a // 2]) if a // 2 < before.size else 0)
            for a, b in zip(cuts, ends, strict=True) if b > a]


__all__ = ["EVENT_PACKET_MSG", "REANCHOR_NS", "ENCODINGS", "EventDecodeError", "EventWindow",
           "EventStream", "LibcaerCmpDecoder", "encode_mono", "encode_evt3", "evt3_events_before", "split_evt3"]
