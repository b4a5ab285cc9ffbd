"""Replay a ROS 2 bag through the node's pipeline offline: same synchroniser, same decoding, same model.

    python -m mlesam_ros.replay --bag IN --out OUT [--params config/segment.yaml] [--storage sqlite3|mcap]
        [--allow-random-init] [--set key=value ...]

Messages are read in log-time order and synchronised on their header stamps (arrival = header stamp, so
the synchroniser's waiting is in data time). OUT receives:

- `bag/`: a version-8 bag with /mlesam/{labels,labels_color,confidence,routing}, /mlesam/class_names and
  /diagnostics (every `diagnostics.period` of data time);
- `frames.jsonl`: one line per frame: stamp, driver, per-sensor status, modalities used, routing weights per
  level, latency, errors and, with ground truth on /ground_truth/labels, the frame's confusion entries
  ([gt, pred, count]) and its mIoU;
- `summary.json`: frames in/out, per-sensor availability, latency p50/p95, mIoU (both protocols), and the
  damage found in the bag.

A bag that cannot be opened, has no messages on the sensor topics, or carries another message type on one of
them is refused before the model loads (exit 2, naming the file and the problem), and so is an output folder
that cannot or must not be written: not creatable or not writable, a file, inside the input bag, holding the input
where an output goes, or with a `bag/` already in it. Damage found part-way keeps everything processed so far: the
output bag is closed, the summary written with the damage, and the exit status is 2.

An output that cannot be written any more (a full disk, a quota) stops the replay at that frame: every frame before
it stays, whole, in the closed output bag and in frames.jsonl (each frame is made durable once written: sqlite3
commits, MCAP chunks flushed), summary.json says where and why it stopped (`stopped`), and the exit status is 2. A
few MiB reserved in the output folder at the start are freed at that moment, so that the outputs can be closed even
on a disk that filled up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mlesam_core.config_io import ConfigError
from mlesam_core.host_memory import retain_freed_memory
from mlesam_core.metrics import PROTOCOL_DESCRIPTIONS, ConfusionMatrix, confusion_matrix, scores_from_confusion
from mlesam_ros.bag_io import (
    STORAGES,
    BagError,
    BagWriter,
    OutputWriteError,
    TopicInfo,
    bag_message_count,
    bag_topics,
    read_bag,
)
from mlesam_ros.image_conversion import image_msg_to_array
from mlesam_ros.messages import MessageKit, stamp_to_ns
from mlesam_ros.outputs import CLASS_NAMES_TOPIC, DIAGNOSTICS_TOPIC, OUTPUT_TOPICS, class_names_json, output_messages
from mlesam_ros.params import IMAGE_TYPE, SegmentConfig, accepted_types, load_segment_config, resolve_path
from mlesam_ros.pipeline import FrameResult, SegmentationPipeline, load_segmenter
from mlesam_ros.sync import SyncedFrame

logger = logging.getLogger(__name__)

GROUND_TRUTH_TOPIC = "/ground_truth/labels"
TF_STATIC_TOPIC = "/tf_static"
GROUND_TRUTH_KEPT = 64  # ground-truth labels waiting for their frame, at most (the oldest is dropped)
OUTPUTS = ("bag", "frames.jsonl", "summary.json")  # what the replay writes into --out
# room kept free in the output folder (a file deleted when a write fails): closing the bag (sqlite3's rollback
# journal and metadata row, MCAP's summary section, metadata.yaml) and writing summary.json need a little space
RESERVE_NAME = ".replay-reserve"
RESERVE_BYTES = 4 * 2**20


class OutputFolderError(ValueError):
    """--out cannot or must not be written; the message names the path and why."""


def prepare_output(bag: str | Path, out: str | Path) -> Path:
    """Check and create the output folder before anything loads; OutputFolderError naming the path otherwise."""
    out_path, bag_path = Path(out).resolve(), Path(bag).resolve()
    if out_path == bag_path or bag_path in out_path.parents:
        raise OutputFolderError(f"--out {out}: inside the input bag {bag}; the outputs would be written into the "
                                f"input (choose a folder outside it)")
    for name in OUTPUTS:
        target = out_path / name
        if target == bag_path or target in bag_path.parents:
            raise OutputFolderError(f"--out {out}: the input bag {bag} is where the replay writes {name}; it would "
                                    f"be overwritten (choose another --out)")
    if out_path.exists() and not out_path.is_dir():
        raise OutputFolderError(f"--out {out}: exists and is not a folder")
    if (out_path / "bag").exists():
        raise OutputFolderError(f"--out {out}: {Path(out) / 'bag'} already exists (an earlier replay's output?); "
                                f"choose another --out or remove it")
    try:
        out_path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_path):
            pass
    except OSError as exc:
        raise OutputFolderError(f"--out {out}: cannot write there ({exc.strerror or exc}: "
                                f"{exc.filename or out_path})") from None
    return out_path


class FramesFile:
    """frames.jsonl, one line a frame, each flushed; closed as of the last committed line."""

    def __init__(self, path: Path) -> None:
        """Create (or empty) `path`."""
        self.path = path
        try:
            self.file = path.open("wb")
        except OSError as exc:
            raise OutputWriteError(path, exc) from None
        self.committed = 0  # bytes of the lines of frames complete everywhere

    def write(self, record: dict) -> None:
        """Append `record` as a line and flush it to the file."""
        try:
            self.file.write((json.dumps(record) + "\n").encode())
            self.file.flush()
        except OSError as exc:
            raise OutputWriteError(self.path, exc) from None

    def commit(self) -> None:
        """The lines written so far belong to frames that are complete everywhere."""
        self.committed = self.file.tell()

    def close(self) -> None:
        """Close without what came after the last commit (a frame that failed part-way leaves no line)."""
        with suppress(OSError):  # what it could not flush belongs to an uncommitted line: cut off below
            self.file.close()
        os.truncate(self.path, self.committed)


class Replay:
    """Feeds bag messages through a SegmentationPipeline and records outputs, frames and totals."""

    def __init__(self, pipeline: SegmentationPipeline, writer: BagWriter, frames_file: FramesFile) -> None:
        """Replay into `writer` (output bag) and `frames_file` (frames.jsonl)."""
        self.pipeline = pipeline
        self.config = pipeline.config
        self.writer = writer
        self.frames_file = frames_file
        self.writing_stamp_ns: int | None = None  # the frame being written (where a failed write stopped)
        self.kit = MessageKit.rosbags(writer.store)
        self.sensor_of_topic = {pipeline.config.input_topic(m): m for m in pipeline.config.modalities}
        self.ground_truth: dict[int, np.ndarray] = {}
        self.pending: list[tuple[int, SyncedFrame]] = []  # (log time at which it became complete, frame)
        self.confusion = ConfusionMatrix(pipeline.class_table.num_classes, pipeline.class_table.ignore_index)
        self.messages_in: dict[str, int] = {}
        self.latencies: list[float] = []
        self.status_counts = {m: {"ok": 0, "stale": 0, "missing": 0, "invalid": 0, "used": 0}
                              for m in self.config.modalities}
        self.drivers: dict[str, int] = {}
        self.frames_out = 0
        self.frames_without_output = 0
        self.next_diagnostics: float | None = None

    @property
    def topics(self) -> set[str]:
        """Topics read from the input bag."""
        return {*self.sensor_of_topic, self.config.camera_info_topic, GROUND_TRUTH_TOPIC}

    def feed(self, topic: str, log_ns: int, msg: Any) -> None:
        """Take one input message logged at `log_ns`.

        A frame that became complete while messages logged at L were read is segmented once the bag has moved
        past L, so that the ground truth logged with it (after the sensors) has been read. Header stamps play no
        part in this: frames go out in the order they complete, however far the stamps are from the log times.
        """
        while self.pending and self.pending[0][0] < log_ns:
            self.process(self.pending.pop(0)[1])
        self.messages_in[topic] = self.messages_in.get(topic, 0) + 1
        if topic == self.config.camera_info_topic:
            self.pipeline.set_camera_info(msg)
        elif topic == GROUND_TRUTH_TOPIC:
            self.ground_truth[stamp_to_ns(msg.header.stamp)] = image_msg_to_array(msg)
            if len(self.ground_truth) > GROUND_TRUTH_KEPT:
                del self.ground_truth[next(iter(self.ground_truth))]
        else:
            stamp = stamp_to_ns(msg.header.stamp) / 1e9
            self.pending += [(log_ns, f) for f in self.pipeline.add(self.sensor_of_topic[topic], msg, received=stamp)]

    def finish(self) -> None:
        """Segment every frame still waiting at the end of the bag."""
        for frame in [f for _, f in self.pending] + self.pipeline.drain():
            self.process(frame)
        self.pending = []

    def process(self, frame: SyncedFrame) -> None:
        """Segment one frame, write its outputs, /diagnostics when due and its frames.jsonl line. The frame counts
        once all of it is durable; a failed write (OutputWriteError) leaves no part of it in the outputs."""
        result = self.pipeline.process(frame, now=frame.stamp)
        stamp_ns = stamp_to_ns(result.header.stamp)
        self.writing_stamp_ns = stamp_ns
        messages = output_messages(self.kit, self.pipeline, result)
        for name, msg in messages.items():
            self.writer.write("/" + OUTPUT_TOPICS[name], stamp_ns, msg)
        diagnostics_due = self.next_diagnostics is None or frame.stamp >= self.next_diagnostics
        if diagnostics_due:
            entries = self.pipeline.diagnostics(frame.stamp)
            self.writer.write(DIAGNOSTICS_TOPIC, stamp_ns, self.kit.diagnostic_array(entries, result.header))
        record, label = self.frame_record(result, stamp_ns)
        self.frames_file.write(record)
        self.writer.checkpoint()
        self.frames_file.commit()
        self.writing_stamp_ns = None
        if diagnostics_due:
            self.next_diagnostics = frame.stamp + self.config.diagnostics.period
        if label is not None and result.labels is not None:
            self.confusion.update(result.labels, label)
        self.frames_out += bool(messages)
        self.frames_without_output += not messages
        self.drivers[result.driver] = self.drivers.get(result.driver, 0) + 1
        for sensor, state in result.status.items():
            self.status_counts[sensor][state] += 1
        for sensor in result.used:
            self.status_counts[sensor]["used"] += 1
        if result.latency is not None:
            self.latencies.append(result.latency)

    def frame_record(self, result: FrameResult, stamp_ns: int) -> tuple[dict, np.ndarray | None]:
        """The frames.jsonl line of one result (ground truth scored when it exists for the stamp), and the ground
        truth it was scored against (None: not scored)."""
        record = {"stamp": result.stamp, "stamp_ns": stamp_ns, "driver": result.driver, "status": result.status,
                  "used": list(result.used),
                  "routing": result.routing.as_dict() if result.routing is not None else {},
                  "latency_ms": None if result.latency is None else round(result.latency * 1000, 3),
                  "errors": result.errors}
        label = self.ground_truth.pop(stamp_ns, None)
        if label is None or result.labels is None:
            return record, None
        if label.shape != result.labels.shape:
            record["errors"] = {**result.errors, "ground_truth": f"label size {label.shape} differs from "
                                                                 f"output {result.labels.shape}"}
            return record, None
        matrix = confusion_matrix(result.labels, label, self.confusion.num_classes, self.confusion.ignore_index).numpy()
        gt, pred = np.nonzero(matrix)
        record["confusion"] = [[int(g), int(p), int(matrix[g, p])] for g, p in zip(gt, pred, strict=True)]
        record["miou_present_classes"] = scores_from_confusion(matrix).miou["present_classes"]
        return record, label

    def summary(self, wall_seconds: float) -> dict:
        """Totals of the replay."""
        latencies = np.asarray(self.latencies) * 1000.0
        frames = self.frames_out + self.frames_without_output
        summary = {
            "frames": frames, "frames_out": self.frames_out, "frames_without_output": self.frames_without_output,
            "messages_in": self.messages_in, "drivers": self.drivers,
            "availability": {m: {state: (count / frames if frames else None) for state, count in counts.items()}
                             for m, counts in self.status_counts.items()},
            "latency_ms": {"p50": float(np.percentile(latencies, 50)) if latencies.size else None,
                           "p95": float(np.percentile(latencies, 95)) if latencies.size else None,
                           "mean": float(latencies.mean()) if latencies.size else None},
            "wall_seconds": round(wall_seconds, 3),
            "frames_per_second": round(frames / wall_seconds, 3) if wall_seconds > 0 else None,
        }
        if int(self.confusion.matrix.sum()) > 0:
            scores = self.confusion.scores(self.pipeline.class_table.names)
            summary["ground_truth"] = {**scores.to_dict(), "protocols": PROTOCOL_DESCRIPTIONS}
        return summary


def check_bag_topics(bag: str | Path, config: SegmentConfig, topics: dict[str, TopicInfo]) -> None:
    """Refuse a bag with no messages on the sensor topics, or another message type on one of them (BagError)."""
    expected = {config.input_topic(m): (m, accepted_types(m)) for m in config.modalities}
    expected[config.camera_info_topic] = ("camera_info", ("sensor_msgs/msg/CameraInfo",))
    expected[GROUND_TRUTH_TOPIC] = ("ground truth", (IMAGE_TYPE,))
    for topic, (what, types) in expected.items():
        info = topics.get(topic)
        wrong = [t for t in (info.types if info else ()) if t not in types]
        if wrong:
            raise BagError(f"{bag}: {topic} ({what}) carries {', '.join(wrong)}; {what} takes "
                           f"{' or '.join(types)} (set sensors.<m>.topic, or leave the modality out)")
    if not any(topics.get(config.input_topic(m), TopicInfo((), 0)).messages for m in config.modalities):
        found = ", ".join(f"{t} ({'/'.join(i.types)}, {i.messages})" for t, i in sorted(topics.items()))
        raise BagError(f"{bag}: no messages on the sensor topics "
                       f"({', '.join(config.input_topic(m) for m in config.modalities)}); the bag has: "
                       f"{found or 'no topics at all'}")


def replay(bag: str | Path, out: str | Path, config: SegmentConfig, segmenter: Any, storage: str = "sqlite3"
           ) -> dict:
    """Replay `bag` into the folder `out` (bag/, frames.jsonl, summary.json); returns the summary.

    Damage found part-way through the bag ends the reading; what was read is segmented and written, and the
    summary lists the damage (`damage`, empty for an intact bag). An output that cannot be written stops the replay
    with every frame before it kept (`stopped`: where and why; None when it ran to the end).
    """
    out = prepare_output(bag, out)
    pipeline = SegmentationPipeline(config, segmenter, clock=lambda: 0.0)
    start = time.perf_counter()
    damage: list[str] = []
    failures: list[OutputWriteError] = []
    reserve = out / RESERVE_NAME
    try:
        reserve.write_bytes(bytes(RESERVE_BYTES))
    except OSError as exc:
        reserve.unlink(missing_ok=True)
        raise OutputFolderError(f"--out {out}: cannot reserve {RESERVE_BYTES // 2**20} MiB there "
                                f"({exc.strerror or exc}); free some space") from None
    writer = BagWriter(out / "bag", storage)
    run: Replay | None = None
    try:
        frames_file = FramesFile(out / "frames.jsonl")
        try:
            with writer:  # closed in every case; after a failed write, as it was after the last whole frame
                run = Replay(pipeline, writer, frames_file)
                try:
                    _replay_messages(run, bag, damage)
                except OutputWriteError as exc:
                    failures.append(exc)
                    writer.discard_pending()  # the frame that failed, in whichever output
                    reserve.unlink(missing_ok=True)  # room to close the outputs on a full disk
        finally:
            frames_file.close()
    except OutputWriteError as exc:  # opening, or closing after all
        failures.append(exc)
    finally:
        reserve.unlink(missing_ok=True)
    summary: dict[str, Any] = {"bag": str(bag), "output_bag": str(out / "bag")}
    if run is not None:
        summary.update(run.summary(time.perf_counter() - start))
    summary["damage"] = damage
    summary["stopped"] = None
    if failures:
        first = failures[0]
        summary["stopped"] = {
            "error": str(first), "path": str(first.path), "cause": first.cause,
            "frames_written": 0 if run is None else run.frames_out + run.frames_without_output,
            "at_stamp_ns": None if run is None else run.writing_stamp_ns,
            "not_closed": [str(f) for f in failures[1:]]}
        logger.error("%s: the replay stopped; the frames before it are kept", first)
    try:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    except OSError as exc:
        summary["summary_error"] = str(OutputWriteError(out / "summary.json", exc))
    return summary


def _replay_messages(run: Replay, bag: str | Path, damage: list[str]) -> None:
    """Feed every input message of `bag` to `run` and segment what remains at the end (BagError: damage)."""
    pipeline, writer = run.pipeline, run.writer
    try:  # static transforms hold for the whole bag, wherever they were recorded: read them first
        for _, _, msg in read_bag(bag, {TF_STATIC_TOPIC}, damage=damage):
            pipeline.add_transforms(msg)
    except BagError as exc:  # the same damage stops the pass below, after the frames before it
        logger.error("%s (reading %s)", exc, TF_STATIC_TOPIC)
    first = True
    try:
        for topic, log_ns, msg in tqdm(read_bag(bag, run.topics, damage=damage), total=bag_message_count(bag),
                                       unit="msg", desc=f"replay {Path(bag).name}"):
            if first:
                first = False
                writer.write("/" + CLASS_NAMES_TOPIC, log_ns, run.kit.string(class_names_json(pipeline.class_table)))
            run.feed(topic, log_ns, msg)
    except BagError as exc:
        logger.error("%s; keeping the %d frames read before it", exc, run.frames_out + len(run.pending))
        damage.append(str(exc))
    run.finish()


def stopped_message(summary: dict, out: str | Path) -> str:
    """What the command line says when an output could not be written."""
    stopped = summary["stopped"]
    stamp = stopped["at_stamp_ns"]
    at = "" if stamp is None else f" (stamp {stamp // 10**9}.{stamp % 10**9:09d})"
    kept = (f"the {stopped['frames_written']} frames before it are in {out}: bag/ "
            + ("(closed, readable)" if not stopped["not_closed"] else
               f"(not closed: {'; '.join(stopped['not_closed'])}; its storage file holds them)")
            + ", frames.jsonl and "
            + ("summary.json" if "summary_error" not in summary else f"no summary.json ({summary['summary_error']})"))
    return (f"error: {stopped['error']}; the replay stopped at frame {stopped['frames_written'] + 1}{at}; "
            f"{kept}\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point (`mlesam_replay`)."""
    parser = argparse.ArgumentParser(prog="python -m mlesam_ros.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--bag", required=True, help="input bag (directory, .db3 or .mcap)")
    parser.add_argument("--out", required=True, help="output folder (bag/, frames.jsonl, summary.json)")
    parser.add_argument("--params", default=str(resolve_path("config/segment.yaml")),
                        help="ROS 2 parameters file of the node (default: config/segment.yaml)")
    parser.add_argument("--storage", choices=tuple(STORAGES), default="sqlite3", help="output bag storage")
    parser.add_argument("--allow-random-init", action="store_true",
                        help="no SAM2 checkpoint: seeded random frozen backbone (only adapters trained on that "
                             "same random backbone, as the CPU demo's, make sense)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set model.device=cuda (repeatable)")
    args = parser.parse_args(argv)
    try:
        retain_freed_memory()  # per-frame buffers reused instead of page-faulted in again (mlesam_core.host_memory)
    except ValueError as exc:  # a bad MLESAM_HOST_MEMORY
        parser.exit(2, f"error: {exc}\n")
    if not Path(args.bag).exists():  # before the (slow) model load
        parser.exit(2, f"error: bag not found: {args.bag}\n")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = [*args.set, *(["model.allow_random_init=true"] if args.allow_random_init else [])]
    try:
        config = load_segment_config(args.params, overrides)
        check_bag_topics(args.bag, config, bag_topics(args.bag))  # before the (slow) model load
        prepare_output(args.bag, args.out)  # before the model load too
        summary = replay(args.bag, args.out, config, load_segmenter(config), storage=args.storage)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:  # BagError, OutputFolderError too
        parser.exit(2, f"error: {exc}\n")
    if summary["stopped"]:
        parser.exit(2, stopped_message(summary, args.out))
    if "summary_error" in summary:
        parser.exit(2, f"error: {summary['summary_error']}; bag/ and frames.jsonl in {args.out} are complete\n")
    logger.info("%d frames, %d with outputs; latency p50 %s ms; wrote %s", summary["frames"], summary["frames_out"],
                summary["latency_ms"]["p50"], args.out)
    if summary["damage"]:
        parser.exit(2, "error: the bag is damaged; the frames before the damage were replayed and written to "
                       f"{args.out} (summary.json lists it):\n" + "\n".join(f"  {d}" for d in summary["damage"]) + "\n")


if __name__ == "__main__":
    main()
