"""The node's processing status (`health.ProcessingMonitor`): processing-time and rate thresholds, by hand."""

from mlesam_ros.health import ERROR, OK, WARN, ProcessingMonitor
from mlesam_ros.params import DiagnosticsParams


def test_late_frames_in_a_row_warn_then_error_and_one_frame_in_time_clears_them():
    monitor = ProcessingMonitor(DiagnosticsParams(max_processing_time_ms=100.0, late_frames_warn=2,
                                                  late_frames_error=4))
    levels = []
    for t, processing_ms in enumerate([50.0, 150.0, 150.0, 150.0, 150.0, 90.0]):
        monitor.frame(processing_ms, processing_ms / 2, now=float(t))
        levels.append(monitor.entry(float(t)).level)
    assert levels == [OK, OK, WARN, WARN, ERROR, OK]
    entry = monitor.entry(5.0)
    assert entry.values["late_frames"] == "4" and entry.values["consecutive_late_frames"] == "0"
    assert entry.values["processing_ms"] == "90.0" and entry.values["model_ms"] == "45.0"


def test_no_limit_means_no_late_frame():
    monitor = ProcessingMonitor(DiagnosticsParams())  # max_processing_time_ms 0, expected_rate_hz 0
    for t in range(5):
        monitor.frame(10_000.0, None, now=float(t))
    assert monitor.entry(5.0).level == OK and monitor.entry(5.0).values["model_ms"] == "none"


def test_a_rate_below_the_expected_one_warns_and_falls_while_nothing_comes():
    monitor = ProcessingMonitor(DiagnosticsParams(expected_rate_hz=10.0, rate_tolerance=0.2))
    for i in range(11):  # 10 Hz
        monitor.frame(5.0, 4.0, now=i * 0.1)
    assert abs(monitor.rate(1.0) - 10.0) < 1e-9 and monitor.entry(1.0).level == OK
    entry = monitor.entry(3.0)  # nothing for 2 s: 10 intervals over 3 s
    assert entry.level == WARN and "rate 3.33 Hz below expected_rate_hz 10" in entry.message


def test_thresholds_replaced_while_running_apply_to_the_next_frame():
    monitor = ProcessingMonitor(DiagnosticsParams(max_processing_time_ms=100.0, late_frames_warn=1,
                                                  late_frames_error=5))
    monitor.frame(150.0, 100.0, now=0.0)
    assert monitor.entry(0.0).level == WARN
    monitor.thresholds = DiagnosticsParams(max_processing_time_ms=200.0, late_frames_warn=1, late_frames_error=5)
    monitor.frame(150.0, 100.0, now=1.0)
    assert monitor.entry(1.0).level == OK
