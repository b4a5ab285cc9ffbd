"""Per-sensor and inference health (rate, age, frames missing, last error) as ROS-free diagnostics content.

The node turns `DiagnosticEntry`s into diagnostic_msgs/DiagnosticArray; the replay writes them to its
summary. Levels follow diagnostic_msgs: OK 0, WARN 1, ERROR 2, STALE 3. Times are on the caller's clock
(the node's monotonic clock live, header stamps in a replay).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlesam_ros.params import DiagnosticsParams

OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class DiagnosticEntry:
    """One diagnostic_msgs/DiagnosticStatus worth of content."""

    level: int
    name: str
    message: str
    hardware_id: str
    values: dict[str, str]


@dataclass
class SensorHealth:
    """Counters of one input sensor."""

    topic: str
    stale_after: float
    arrivals: deque = field(default_factory=lambda: deque(maxlen=50))
    received: int = 0  # messages since start (against what a publisher sent: DDS drops)
    frames: dict[str, int] = field(default_factory=lambda: {"ok": 0, "stale": 0, "missing": 0, "invalid": 0})
    consecutive_absent: int = 0
    last_status: str = ""
    errors: int = 0
    last_error: str = ""
    last_error_time: float | None = None

    def rate(self) -> float:
        """Messages per second over the recent arrivals (0 with fewer than two)."""
        if len(self.arrivals) < 2 or self.arrivals[-1] <= self.arrivals[0]:
            return 0.0
        return (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])

    def age(self, now: float) -> float | None:
        """Seconds since the last message (None if none arrived)."""
        return now - self.arrivals[-1] if self.arrivals else None


class HealthMonitor:
    """Collects arrivals, per-frame statuses, conversion errors and latency; reports DiagnosticEntry lists."""

    def __init__(self, topics: dict[str, str], stale_after: dict[str, float], node_name: str = "mlesam_segmenter",
                 error_hold: float = 2.0) -> None:
        """`topics` and `stale_after` per sensor; errors keep a sensor at WARN for `error_hold` seconds."""
        self.node_name = node_name
        self.error_hold = error_hold
        self.sensors = {name: SensorHealth(topic, stale_after[name]) for name, topic in topics.items()}
        self._lock = threading.Lock()
        self.latencies: deque = deque(maxlen=200)
        self.frames_out = 0
        self.frames_failed = 0
        self.frames_replaced = 0
        self.last_inference_error = ""
        self.last_inference_failed = False
        self.driver: str | None = None

    def message(self, sensor: str, now: float) -> None:
        """A message of `sensor` arrived at `now`."""
        with self._lock:
            self.sensors[sensor].arrivals.append(now)
            self.sensors[sensor].received += 1

    def error(self, sensor: str, problem: str, now: float) -> None:
        """A message of `sensor` was unusable (conversion or stamp problem)."""
        with self._lock:
            health = self.sensors[sensor]
            health.errors += 1
            health.last_error, health.last_error_time = problem, now

    def frame(self, status: dict[str, str], driver: str) -> None:
        """Record each sensor's status in one processed frame (ok, stale, missing or invalid)."""
        with self._lock:
            self.driver = driver
            for sensor, state in status.items():
                health = self.sensors[sensor]
                health.frames[state] += 1
                health.last_status = state
                health.consecutive_absent = 0 if state == "ok" else health.consecutive_absent + 1

    def inference(self, latency: float | None, error: str = "") -> None:
        """Record one inference: its latency in seconds, or the error that stopped it."""
        with self._lock:
            self.last_inference_failed = bool(error)
            if error:
                self.frames_failed += 1
                self.last_inference_error = error
            else:
                self.frames_out += 1
                self.latencies.append(latency)

    def replaced(self) -> None:
        """A waiting frame was replaced by a newer one while inference was busy."""
        with self._lock:
            self.frames_replaced += 1

    def sensor_level(self, sensor: str, now: float) -> tuple[int, str]:
        """Diagnostic level and one-line message of one sensor at `now`."""
        health = self.sensors[sensor]
        age = health.age(now)
        if age is None:
            return ERROR, "no message received"
        if age > health.stale_after:
            return ERROR, f"silent for {age:.1f} s"
        if health.last_error_time is not None and now - health.last_error_time <= self.error_hold:
            return WARN, f"unusable input: {health.last_error}"
        if health.last_status in ("stale", "missing", "invalid"):
            return WARN, f"{health.last_status} in the last frame"
        return OK, "ok"

    def entries(self, now: float) -> list[DiagnosticEntry]:
        """One entry per sensor plus one for inference."""
        with self._lock:
            result = [self._sensor_entry(sensor, now) for sensor in self.sensors]
            result.append(self._inference_entry())
        return result

    def _sensor_entry(self, sensor: str, now: float) -> DiagnosticEntry:
        health = self.sensors[sensor]
        level, message = self.sensor_level(sensor, now)
        age = health.age(now)
        values = {"topic": health.topic, "rate_hz": f"{health.rate():.2f}", "messages_received": str(health.received),
                  "age_s": "none" if age is None else f"{age:.3f}",
                  **{f"frames_{state}": str(count) for state, count in health.frames.items()},
                  "consecutive_absent": str(health.consecutive_absent), "errors": str(health.errors),
                  "last_error": health.last_error}
        return DiagnosticEntry(level, f"{self.node_name}: {sensor}", message, sensor, values)

    def _inference_entry(self) -> DiagnosticEntry:
        latencies = sorted(self.latencies)
        p50 = latencies[len(latencies) // 2] if latencies else None
        if self.frames_out == 0 and self.frames_failed == 0:
            level, message = STALE, "no frame segmented yet"
        elif self.last_inference_failed:
            level, message = ERROR, f"last frame not segmented: {self.last_inference_error}"
        else:
            level, message = OK, f"driven by {self.driver}"
        values = {"frames_out": str(self.frames_out), "frames_failed": str(self.frames_failed),
                  "frames_replaced_while_busy": str(self.frames_replaced),
                  "latency_p50_ms": "none" if p50 is None else f"{p50 * 1000:.1f}",
                  "driver": self.driver or "none", "last_error": self.last_inference_error}
        return DiagnosticEntry(level, f"{self.node_name}: inference", message, "inference", values)


class ProcessingMonitor:
    """The node's speed against its thresholds (`DiagnosticsParams`): processing time per frame and output rate.

    Autoware's perception nodes' rule: a frame slower than `max_processing_time_ms` is late; `late_frames_warn`
    late frames in a row make the status WARN, `late_frames_error` ERROR; one frame in time makes it OK again.
    The rate of segmented frames over the last `RATE_FRAMES` intervals between outputs (counted up to now, so it
    falls while nothing comes) below `expected_rate_hz` x (1 - `rate_tolerance`) is WARN. Times are on the
    caller's clock.
    """

    RATE_FRAMES = 10

    def __init__(self, thresholds: DiagnosticsParams, node_name: str = "mlesam_segmenter") -> None:
        """A monitor with `thresholds` (replace `thresholds` to change them while it runs)."""
        self.thresholds = thresholds
        self.node_name = node_name
        self._lock = threading.Lock()
        self._outputs: deque = deque(maxlen=self.RATE_FRAMES + 1)
        self.consecutive_late = 0
        self.late_frames = 0
        self.last_processing_ms: float | None = None
        self.last_model_ms: float | None = None

    def frame(self, processing_ms: float, model_ms: float | None, now: float) -> None:
        """One frame was segmented and published at `now`, after `processing_ms` (model: `model_ms`)."""
        limit = self.thresholds.max_processing_time_ms
        with self._lock:
            self._outputs.append(now)
            self.last_processing_ms, self.last_model_ms = processing_ms, model_ms
            if limit and processing_ms > limit:
                self.consecutive_late += 1
                self.late_frames += 1
            else:
                self.consecutive_late = 0

    def rate(self, now: float) -> float:
        """Segmented frames per second: the intervals between the recent outputs over the time from the first of
        them to `now` (0 with fewer than two)."""
        with self._lock:
            if len(self._outputs) < 2 or now <= self._outputs[0]:
                return 0.0
            return (len(self._outputs) - 1) / (now - self._outputs[0])

    def entry(self, now: float) -> DiagnosticEntry:
        """The processing status at `now`."""
        thresholds = self.thresholds
        rate = self.rate(now)
        with self._lock:
            late, total_late, processing, model = (self.consecutive_late, self.late_frames,
                                                   self.last_processing_ms, self.last_model_ms)
        minimum_rate = thresholds.expected_rate_hz * (1.0 - thresholds.rate_tolerance)
        level, problems = OK, []
        if thresholds.max_processing_time_ms and late >= thresholds.late_frames_warn:
            level = ERROR if late >= thresholds.late_frames_error else WARN
            problems.append(f"{late} frames in a row over max_processing_time_ms "
                            f"{thresholds.max_processing_time_ms:g}")
        if thresholds.expected_rate_hz and rate < minimum_rate:
            level = max(level, WARN)
            problems.append(f"rate {rate:.2f} Hz below expected_rate_hz {thresholds.expected_rate_hz:g} "
                            f"(tolerance {thresholds.rate_tolerance:g})")
        values = {"processing_ms": "none" if processing is None else f"{processing:.1f}",
                  "model_ms": "none" if model is None else f"{model:.1f}",
                  "rate_hz": f"{rate:.2f}", "consecutive_late_frames": str(late), "late_frames": str(total_late),
                  "max_processing_time_ms": f"{thresholds.max_processing_time_ms:g}",
                  "expected_rate_hz": f"{thresholds.expected_rate_hz:g}"}
        return DiagnosticEntry(level, f"{self.node_name}: processing", "; ".join(problems) or "ok", "processing",
                               values)


class ProblemLog:
    """Logs each (sensor, problem kind) at most once per `period` seconds, counting what it held back."""

    def __init__(self, logger: logging.Logger, period: float = 5.0) -> None:
        """Throttle warnings to `logger` to one per `period` per key."""
        self.logger = logger
        self.period = period
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def warn(self, key: tuple[str, str], text: str, now: float) -> bool:
        """Log `text` unless `key` was logged less than `period` ago; returns whether it logged."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._held[key] = self._held.get(key, 0) + 1
                return False
            held = self._held.pop(key, 0)
            self._last[key] = now
        suffix = f" ({held} more since the last report)" if held else ""
        self.logger.warning("%s%s", text, suffix)
        return True


__all__ = ["OK", "WARN", "ERROR", "STALE", "DiagnosticEntry", "SensorHealth", "HealthMonitor", "ProcessingMonitor",
           "ProblemLog"]
