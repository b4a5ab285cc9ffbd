"""Primary-driven approximate synchronisation on header stamps that keeps going when sensors drop out.

message_filters' ApproximateTimeSynchronizer emits nothing while any one input is silent; a robot needs
the opposite. Here every message of the driving sensor (the primary, or the next configured sensor while
the primary has been silent for `primary_timeout`) becomes one frame. A frame at stamp t waits, in data
time (the newest header stamp seen), at most `max_delay` for each other sensor, then takes for each the
message nearest to t:

- ok: within that sensor's `slop` of t;
- stale: none within slop, but the sensor's last message before t is at most `stale_after` old
  (used only when `use_stale` is set);
- missing: otherwise.

Decisions use header stamps only, never arrival order; buffers and the queue of waiting frames are
bounded, and a message no later frame can take (older than the last emitted frame by more than its sensor's
`stale_after`) is forgotten at once. `tick(received_now)` lets a live node flush frames that have waited
`max_delay` of its own clock even when every sensor has gone silent; `drain()` flushes everything at the end of a
bag.

Stamps that jump (a bag played with `--loop`, a clock reset, one wrong stamp):

- the driving sensor going back by more than its `stale_after` restarts the synchroniser: waiting frames are
  emitted, then everything is forgotten except the other sensors' messages near the new stamp (in a bag loop
  they are often logged before the camera);
- another sensor going back that far, away from the driver's timeline, is refused (`StampError`) but held for
  such a restart; one that goes back onto the driver's timeline wins over its own newer messages (they were
  outliers, e.g. one stamp far in the future), which are dropped.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from mlesam_core.config_io import check

logger = logging.getLogger(__name__)

Status = Literal["ok", "stale", "missing"]
M = TypeVar("M")  # what the synchroniser is given per message (the pipeline: a `SensorMessage`)
E = TypeVar("E")  # what the caller cuts per event sensor for a frame (the pipeline: an `EventWindow`)


@dataclass
class SensorTiming:
    """How long a sensor's messages count as synchronous, usable when old, and worth waiting for (seconds)."""

    slop: float = field(default=0.05, metadata={"doc": "a message within this of the frame stamp is ok"})
    stale_after: float = field(default=0.5, metadata={
        "doc": "an older last message (beyond slop) is stale up to this age, missing after"})
    max_delay: float = field(default=0.1, metadata={
        "doc": "a frame waits at most this long (data time) for this sensor's message"})

    def __post_init__(self) -> None:
        check(self.slop >= 0, "slop", f"must be >= 0, got {self.slop}")
        check(self.stale_after >= self.slop, "stale_after", f"must be >= slop ({self.slop}), got {self.stale_after}")
        check(self.max_delay >= 0, "max_delay", f"must be >= 0, got {self.max_delay}")


class StampError(ValueError):
    """A message was refused because of its header stamp (went backwards, or arrived too late)."""


@dataclass
class SyncedFrame(Generic[M, E]):
    """One synchronised frame: the driving message plus, per other sensor, the message matched to it; for an
    event sensor, the events of the frame's window (cut when the frame is emitted: later packets move on)."""

    stamp: float  # header stamp of the driving message, seconds
    driver: str
    messages: dict[str, M]  # sensor -> message to use (sensors without one are absent)
    status: dict[str, Status]  # every sensor
    offsets: dict[str, float]  # sensor -> stamp of the matched message - frame stamp (ok and stale only)
    events: dict[str, E] = field(default_factory=dict)  # event sensor -> its window's events (the caller's)


@dataclass
class _Entry:
    stamp: float
    message: Any


@dataclass
class _Waiting:
    stamp: float
    driver: str
    message: Any
    received: float


class ApproximateSync(Generic[M]):
    """Primary-driven synchroniser: `add` messages with their header stamps, get `SyncedFrame`s back."""

    def __init__(self, sensors: Sequence[str], timing: Mapping[str, SensorTiming], primary_timeout: float = 0.3,
                 use_stale: bool = True, buffer_size: int = 16) -> None:
        """`sensors` in driving priority (primary first); `timing` per sensor."""
        self.sensors = tuple(sensors)
        if not self.sensors or len(set(self.sensors)) != len(self.sensors):
            raise ValueError(f"sensors must be a non-empty list of distinct names, got {list(sensors)}")
        missing = [s for s in self.sensors if s not in timing]
        if missing:
            raise ValueError(f"no timing given for sensor {missing[0]!r}")
        if primary_timeout <= 0 or buffer_size < 1:
            raise ValueError(f"primary_timeout must be > 0 and buffer_size >= 1, got {primary_timeout}, {buffer_size}")
        self.timing = {s: timing[s] for s in self.sensors}
        self.primary_timeout = primary_timeout
        self.use_stale = use_stale
        self.buffer_size = buffer_size
        self._max_wait = max(t.max_delay for t in self.timing.values())
        self._passive: set[str] = set()
        self.reset()

    def never_drives(self, sensor: str) -> None:
        """`sensor` is matched to frames but never drives one, nor keeps a lower-ranked sensor from driving
        (a stream without a frame rate, such as event packets)."""
        if sensor not in self.timing:
            raise ValueError(f"unknown sensor {sensor!r} (configured: {', '.join(self.sensors)})")
        self._passive.add(sensor)

    @property
    def primary(self) -> str:
        """The preferred driving sensor."""
        return self.sensors[0]

    @property
    def driver(self) -> str | None:
        """The sensor that drove the newest frame (None before the first)."""
        return self._last_driver

    def reset(self) -> None:
        """Forget every buffered message and waiting frame (after a clock jump)."""
        self._buffers: dict[str, list[_Entry]] = {s: [] for s in self.sensors}
        self._latest: dict[str, float | None] = dict.fromkeys(self.sensors)
        self._held: dict[str, deque[_Entry]] = {s: deque(maxlen=self.buffer_size) for s in self.sensors}
        self._waiting: list[_Waiting] = []
        self._last_emitted: float | None = None
        self._last_driver: str | None = None

    def add(self, sensor: str, stamp: float, message: M, received: float | None = None) -> list[SyncedFrame[M, Any]]:
        """Take one message (header stamp in seconds); return the frames that became complete.

        `received` is the caller's clock at arrival (for `tick`); it defaults to the stamp. Raises
        StampError for a message that cannot be used: a driving message older than a frame already emitted
        (skipped), or another sensor's message that went back by more than its `stale_after` away from the
        driver's timeline (held in case the driver jumps back too; see the module docstring).
        """
        if sensor not in self.timing:
            raise ValueError(f"unknown sensor {sensor!r} (configured: {', '.join(self.sensors)})")
        received = stamp if received is None else received
        frames: list[SyncedFrame[M, Any]] = []
        timing = self.timing[sensor]
        latest = self._latest[sensor]
        if latest is not None and latest - stamp > timing.stale_after:
            driver = self._last_driver or self.primary
            if sensor == driver:
                logger.warning("%s: stamp jumped back by %.3f s (bag loop, clock reset, or a wrong earlier stamp); "
                               "restarting synchronisation", sensor, latest - stamp)
                frames = self._emit(force_all=True)
                self._restart(sensor, stamp)
            elif self._on_driver_timeline(sensor, stamp):
                self._drop_newer(sensor, stamp + timing.stale_after)
            else:
                self._held[sensor].append(_Entry(stamp, message))
                raise StampError(f"stamp went backwards by {latest - stamp:.3f} s (newest was {latest:.3f}); held in "
                                 f"case the driving sensor {driver} jumps back too (bag loop, clock reset)")
        drives = self._drives(sensor, stamp)
        if drives and self._last_emitted is not None and stamp <= self._last_emitted:
            raise StampError(f"stamp {stamp:.3f} is not newer than the last emitted frame "
                             f"({self._last_emitted:.3f}); frame skipped")
        buffer = self._buffers[sensor]
        bisect.insort(buffer, _Entry(stamp, message), key=lambda e: e.stamp)
        del buffer[: max(0, len(buffer) - self.buffer_size)]
        newest = self._latest[sensor]  # re-read: a restart or dropped outliers changed it
        self._latest[sensor] = stamp if newest is None else max(newest, stamp)
        if drives:
            self._replace_lower_priority(sensor, stamp)
            bisect.insort(self._waiting, _Waiting(stamp, sensor, message, received), key=lambda w: w.stamp)
        return frames + self._emit()

    def tick(self, received_now: float) -> list[SyncedFrame[M, Any]]:
        """Emit frames that have waited the longest `max_delay` on the caller's clock (for silent sensors)."""
        return self._emit(received_now=received_now)

    def drain(self) -> list[SyncedFrame[M, Any]]:
        """Emit every waiting frame with what is present (end of input)."""
        return self._emit(force_all=True)

    def _data_time(self) -> float | None:
        """The newest header stamp of any sensor (data time)."""
        stamps = [t for t in self._latest.values() if t is not None]
        return max(stamps) if stamps else None

    def _on_driver_timeline(self, sensor: str, stamp: float) -> bool:
        driver_latest = self._latest[self._last_driver or self.primary]
        return driver_latest is not None and abs(stamp - driver_latest) <= self.timing[sensor].stale_after

    def _drop_newer(self, sensor: str, limit: float) -> None:
        """Forget `sensor`'s messages stamped after `limit` (outliers ahead of the driver's timeline)."""
        buffer = [e for e in self._buffers[sensor] if e.stamp <= limit]
        logger.warning("%s: stamp back on the driving sensor's timeline; dropping %d message(s) stamped up to "
                       "%.3f s ahead of it", sensor, len(self._buffers[sensor]) - len(buffer),
                       (self._latest[sensor] or limit) - limit)
        self._buffers[sensor] = buffer
        self._latest[sensor] = buffer[-1].stamp if buffer else None
        # a frame that an outlier opened as fallback driver (the primary looked silent at its stamp) goes too
        self._waiting = [w for w in self._waiting if not (w.driver == sensor and w.stamp > limit)]

    def _restart(self, driver: str, stamp: float) -> None:
        """Forget everything except the other sensors' messages (buffered or held) usable for the driver's new
        stamp: up to its `stale_after` before it, or within its `slop` after it (later ones would end the new
        frame's wait before that sensor's messages of the new timeline arrive)."""
        kept = {s: sorted((e for e in (*self._buffers[s], *self._held[s])
                           if -self.timing[s].stale_after <= e.stamp - stamp <= self.timing[s].slop),
                          key=lambda e: e.stamp)
                for s in self.sensors if s != driver}
        self.reset()
        for sensor, entries in kept.items():
            self._buffers[sensor] = entries[-self.buffer_size:]
            self._latest[sensor] = entries[-1].stamp if entries else None

    def _drives(self, sensor: str, stamp: float) -> bool:
        """A sensor drives when every sensor ranked above it has been silent for primary_timeout at `stamp`."""
        if sensor in self._passive:
            return False
        for higher in self.sensors[: self.sensors.index(sensor)]:
            if higher in self._passive:
                continue
            latest = self._latest[higher]
            if latest is not None and latest >= stamp - self.primary_timeout:
                return False
        return True

    def _replace_lower_priority(self, sensor: str, stamp: float) -> None:
        """A returning higher-priority sensor takes over frames that a fallback driver opened near its stamp."""
        rank = self.sensors.index(sensor)
        self._waiting = [w for w in self._waiting
                         if self.sensors.index(w.driver) <= rank
                         or abs(w.stamp - stamp) > self.timing[w.driver].slop]

    def _resolved(self, waiting: _Waiting) -> bool:
        for sensor in self.sensors:
            if sensor == waiting.driver:
                continue
            latest = self._latest[sensor]
            if latest is not None and latest >= waiting.stamp:
                continue  # a message at or after t exists: later ones cannot be nearer
            data_time = self._data_time()
            if data_time is not None and data_time >= waiting.stamp + self.timing[sensor].max_delay:
                continue
            return False
        return True

    def _emit(self, received_now: float | None = None, force_all: bool = False) -> list[SyncedFrame[M, Any]]:
        frames = []
        while self._waiting:
            head = self._waiting[0]
            timed_out = received_now is not None and received_now - head.received >= self._max_wait
            overflow = len(self._waiting) > self.buffer_size
            if not (force_all or timed_out or overflow or self._resolved(head)):
                break
            self._waiting.pop(0)
            frames.append(self._match(head))
            self._last_emitted = head.stamp
            self._last_driver = head.driver
        if frames:
            self._forget_unmatchable()
        return frames

    def _forget_unmatchable(self) -> None:
        """Drop the messages no frame can take any more: every later frame is newer than the last one emitted,
        and a message older than a frame by more than its sensor's `stale_after` is missing for it. What is kept
        follows each sensor's rate x stale_after, whatever `buffer_size` allows (large images: bounded memory).
        Measured from the sensor's own newest stamp where that is older (a driver's outlier stamp far ahead, which
        a restart then corrects, leaves the buffers as they were)."""
        assert self._last_emitted is not None
        for sensor, buffer in self._buffers.items():
            newest = self._latest[sensor]
            if newest is None:
                continue
            horizon = min(self._last_emitted, newest) - self.timing[sensor].stale_after
            del buffer[:bisect.bisect_left(buffer, horizon, key=lambda e: e.stamp)]

    def _match(self, waiting: _Waiting) -> SyncedFrame[M, Any]:
        t = waiting.stamp
        messages = {waiting.driver: waiting.message}
        status: dict[str, Status] = {}
        offsets = {waiting.driver: 0.0}
        for sensor in self.sensors:
            if sensor == waiting.driver:
                status[sensor] = "ok"
                continue
            timing = self.timing[sensor]
            buffer = self._buffers[sensor]
            nearest = min(buffer, key=lambda e: abs(e.stamp - t), default=None)
            if nearest is not None and abs(nearest.stamp - t) <= timing.slop:
                status[sensor] = "ok"
                messages[sensor], offsets[sensor] = nearest.message, nearest.stamp - t
                continue
            before = [e for e in buffer if e.stamp <= t]
            if before and t - before[-1].stamp <= timing.stale_after:
                status[sensor] = "stale"
                if self.use_stale:
                    messages[sensor], offsets[sensor] = before[-1].message, before[-1].stamp - t
                continue
            status[sensor] = "missing"
        return SyncedFrame(stamp=t, driver=waiting.driver, messages=messages, status=status, offsets=offsets)


__all__ = ["ApproximateSync", "SensorTiming", "StampError", "SyncedFrame", "Status"]
