"""ROS 2 bag reading and writing with rosbags (no ROS installation needed).

Bags are written as rosbag2 version 8 (Humble's `ros2 bag play` cannot parse version 9; Jazzy reads both),
sqlite3 by default or MCAP. Reading accepts a bag directory or a bare `.db3`/`.mcap` file; when a
directory has no metadata.yaml, or its metadata does not match its storage (rosbag2 sometimes records QoS
metadata that makes rosbags skip every message), the storage files are read directly.

A bag that cannot be read raises `BagError` naming the file and the problem: at opening (zero-byte or
truncated storage), or part-way (damaged storage: everything before it has been yielded). Fewer messages than
the storage's index lists (MCAP chunks skipped over damage) is damage too. A message that does not decode is
skipped and reported (`damage`), the rest goes on.

Writing survives a full disk: `BagWriter.checkpoint` makes what was written so far durable (sqlite3: a commit;
rosbags otherwise keeps the whole bag in one transaction, and a failed write rolls all of it back; MCAP: the
pending chunk written out and flushed). A write that fails raises `OutputWriteError` naming the file and the
cause, and closing then drops what came after the last checkpoint and closes the bag properly, so that it reads
back with every message up to there.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter, PendingChunk
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

logger = logging.getLogger(__name__)

BAG_VERSION: Literal[8, 9] = 8
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
# what the storage layers raise when a file cannot be written: the OS (ENOSPC, EDQUOT, EIO, EFBIG) and sqlite3
# ("database or disk is full")
STORAGE_ERRORS = (OSError, sqlite3.Error)


class BagError(ValueError):
    """A bag or one of its storage files cannot be read (further); the message names the file and the problem."""


class OutputWriteError(RuntimeError):
    """An output file cannot be written (further): a full disk, a quota, an I/O error. `path` is the file, `cause`
    what the system said."""

    def __init__(self, path: str | Path, error: BaseException) -> None:
        """The failure to write `path`, raised by the storage layer as `error`."""
        self.path = Path(path)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        self.cause = f"{reason} ({type(error).__name__})"
        super().__init__(f"cannot write {self.path}: {self.cause}")


@dataclass
class _Checkpoint:
    """What a BagWriter had written at its last checkpoint: rosbags' counters and, for MCAP, the file's state."""

    connection_counts: dict[int, int]
    topic_counts: dict[str, int]
    min_timestamp: int
    max_timestamp: int
    mcap: tuple[int, int, dict[int, int], int, int] | None  # offset, chunks, channel counts, first and last time


def typestore() -> Any:
    """The message definitions used for every bag: Humble's (identical to Jazzy's for our types) plus
    event_camera_msgs/msg/EventPacket from its .msg text (no ROS distribution ships it in rosbags)."""
    from mlesam_ros.events import EVENT_PACKET_MSG
    from mlesam_ros.params import EVENT_PACKET_TYPE

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(EVENT_PACKET_MSG, EVENT_PACKET_TYPE))
    return store


class BagWriter:
    """Writes messages to a new rosbag2 directory; connections are added on first use of a topic.

    A failed write raises OutputWriteError; closing then keeps everything up to the last `checkpoint`.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3", store: Any = None) -> None:
        """Create the bag at `path` (must not exist)."""
        if storage not in STORAGES:
            raise ValueError(f"storage: must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"output bag {self.path} already exists")
        self.store = store if store is not None else typestore()
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.failure: OutputWriteError | None = None
        self._discard_pending = False
        self._checkpoint: _Checkpoint | None = None

    def __enter__(self) -> BagWriter:
        try:
            self._writer.open()
            storage = self._storage()
            if isinstance(storage, Sqlite3Writer):
                # a checkpoint must outlive a later failed write (a full disk), not a power cut: the OS keeps what
                # was committed without an fsync per commit, which would cost more than writing the frame
                # (benchmarks/bag_checkpoint.py; rosbag2's own sqlite3 writer does not sync by default either)
                storage.conn.execute("PRAGMA synchronous = OFF")
        except STORAGE_ERRORS as exc:
            raise OutputWriteError(self.path, exc) from None
        self.checkpoint()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def storage_file(self) -> Path:
        """The bag's storage file (.db3 or .mcap)."""
        storage = self._writer.storage
        return Path(storage.path) if storage is not None else self.path

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a string in the bag metadata's custom_data."""
        self._writer.set_custom_data(key, value)

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Serialise `msg` (a typestore dataclass) on `topic` at log time `stamp_ns`."""
        if self.failure is not None:
            raise self.failure
        data = self.store.serialize_cdr(msg, msg.__msgtype__)
        try:
            connection = self._connections.get(topic)
            if connection is None:
                connection = self._writer.add_connection(topic, msg.__msgtype__, typestore=self.store)
                self._connections[topic] = connection
            self._writer.write(connection, int(stamp_ns), data)
        except STORAGE_ERRORS as exc:
            raise self._failed(exc) from None
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def checkpoint(self) -> None:
        """Make everything written so far durable: a later failed write keeps it."""
        if self.failure is not None:
            raise self.failure
        storage = self._storage()
        try:
            if isinstance(storage, Sqlite3Writer):
                storage.conn.commit()
            else:
                if storage.chunk.bio.tell():
                    storage.close_chunk()
                storage.bio.flush()
        except STORAGE_ERRORS as exc:
            raise self._failed(exc) from None
        writer = self._writer
        mcap = None if isinstance(storage, Sqlite3Writer) else (
            storage.bio.tell(), len(storage.chunks), dict(storage.channel_stats), storage.message_start_time,
            storage.message_end_time)
        self._checkpoint = _Checkpoint(dict(writer.counts), dict(self.counts), writer.min_timestamp,
                                       writer.max_timestamp, mcap)

    def discard_pending(self) -> None:
        """Close without what was written after the last checkpoint (part of a frame another output failed on)."""
        self._discard_pending = True

    def close(self) -> None:
        """Close the bag (metadata.yaml written); after a failed write, without what came after the last checkpoint.

        Raises OutputWriteError when the bag cannot be closed even so; its storage file then still holds every
        message up to the last checkpoint (readable directly, without metadata.yaml).
        """
        if self._writer.storage is None:
            return
        try:
            if self.failure is not None or self._discard_pending:
                self._roll_back()
            self._writer.close()
        except STORAGE_ERRORS as exc:
            with suppress(Exception):  # only to release the file; the durable part is on disk already
                self._writer.abort()
            raise OutputWriteError(self.path, exc) from None

    def _storage(self) -> Sqlite3Writer | McapWriter:
        storage = self._writer.storage
        assert isinstance(storage, (Sqlite3Writer, McapWriter)), "the bag is not open"
        return storage

    def _failed(self, error: BaseException) -> OutputWriteError:
        self.failure = OutputWriteError(self.storage_file, error)
        return self.failure

    def _roll_back(self) -> None:
        """Back to the last checkpoint: the storage file and the counters the metadata is written from."""
        saved, writer, storage = self._checkpoint, self._writer, self._storage()
        assert saved is not None  # taken when the bag was opened
        if isinstance(storage, Sqlite3Writer):
            storage.conn.rollback()
        else:
            assert saved.mcap is not None
            offset, chunks, channel_counts, first, last = saved.mcap
            with suppress(OSError):  # its buffer may still hold part of the failed chunk: cut off below
                storage.bio.close()
            os.truncate(storage.path, offset)
            storage.bio = Path(storage.path).open("ab")  # noqa: SIM115 - the storage writer owns and closes it
            del storage.chunks[chunks:]
            storage.chunk = PendingChunk(2**63 - 1, 0, BytesIO(), defaultdict(list))
            storage.channel_stats = {cid: channel_counts.get(cid, 0) for cid in storage.channel_stats}
            storage.message_start_time, storage.message_end_time = first, last
        writer.counts = {cid: saved.connection_counts.get(cid, 0) for cid in writer.counts}
        writer.min_timestamp, writer.max_timestamp = saved.min_timestamp, saved.max_timestamp
        self.counts = dict(saved.topic_counts)


def _storage_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.db3")) + sorted(path.glob("*.mcap"))


def _sources(path: Path, topics: set[str] | None) -> list[Path]:
    """What to open: the bag directory through its metadata, else its storage files; or the bare file."""
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if not path.is_dir() or _directory_readable(path, topics):
        return [path]
    sources = _storage_files(path)
    if not sources:
        raise BagError(f"{path}: no .db3 or .mcap storage file in the bag directory")
    return sources


def _open(source: Path) -> Any:
    try:
        reader = Reader(source)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags and its storage backends (apsw, mcap) raise their own types
        raise BagError(f"{source}: cannot be read ({type(exc).__name__}: {exc}); empty, truncated or not a "
                       f"rosbag2 storage file?") from None
    return reader


def read_bag(path: str | Path, topics: set[str] | None = None, store: Any = None,
             damage: list[str] | None = None) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, message) in log-time order for `topics` (all when None), with the fallback above.

    Raises BagError where the storage cannot be read (on), after yielding everything before the damage. With
    `damage` given, messages that do not decode are described there and skipped; without it they raise too.
    """
    path = Path(path)
    store = store if store is not None else typestore()
    for source in _sources(path, topics):
        reader = _open(source)
        name = " + ".join(map(str, _storage_files(source) or [source])) if source.is_dir() else str(source)
        try:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            if not connections:
                continue
            expected, read = sum(c.msgcount for c in connections), 0
            messages = reader.messages(connections)
            while True:
                try:
                    item = next(messages, None)
                except Exception as exc:  # noqa: BLE001 - the storage backends raise their own types
                    raise BagError(f"{name}: damaged after {read} messages ({type(exc).__name__}: {exc})"
                                   ) from None
                if item is None:
                    break
                connection, stamp, raw = item
                read += 1
                try:
                    msg = store.deserialize_cdr(raw, connection.msgtype)
                except Exception as exc:  # noqa: BLE001 - a malformed CDR payload raises whatever it hits
                    problem = (f"{name}: message {read} ({connection.topic}, log time {stamp}) does not decode "
                               f"as {connection.msgtype} ({type(exc).__name__}: {exc})")
                    if damage is None:
                        raise BagError(problem) from None
                    logger.error("%s; skipped", problem)
                    damage.append(problem)
                    continue
                yield connection.topic, stamp, msg
            if read < expected:
                raise BagError(f"{name}: only {read} of the {expected} messages its index lists could be read "
                               f"(damaged storage)")
        finally:
            reader.close()


@dataclass
class TopicInfo:
    """One topic of a bag: its message type(s) and message count."""

    types: tuple[str, ...]
    messages: int


def bag_topics(path: str | Path) -> dict[str, TopicInfo]:
    """The topics of a bag (through the same fallback as `read_bag`); BagError when it cannot be read."""
    topics: dict[str, TopicInfo] = {}
    for source in _sources(Path(path), None):
        reader = _open(source)
        try:
            for connection in reader.connections:
                info = topics.setdefault(connection.topic, TopicInfo((), 0))
                if connection.msgtype not in info.types:
                    info.types += (connection.msgtype,)
                info.messages += connection.msgcount
        finally:
            reader.close()
    return topics


def bag_message_count(path: str | Path) -> int | None:
    """Messages in a bag according to its metadata (None when unknown)."""
    try:
        with Reader(Path(path)) as reader:
            return reader.message_count
    except (ReaderError, FileNotFoundError, ValueError):
        return None


def _directory_readable(path: Path, topics: set[str] | None) -> bool:
    """Whether messages come out through the directory's metadata (logs why not)."""
    if not (path / "metadata.yaml").exists():
        logger.warning("%s: no metadata.yaml; reading the storage files directly", path)
        return False
    try:
        with Reader(path) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            expected = sum(c.msgcount for c in connections)
            if expected == 0 or next(iter(reader.messages(connections)), None) is not None:
                return True
            logger.warning("%s: metadata lists %d messages but none can be read through it; reading the "
                           "storage files directly", path, expected)
    except Exception as exc:  # noqa: BLE001 - rosbags and its storage backends raise their own types
        logger.warning("%s: unreadable through its metadata (%s); reading the storage files directly", path, exc)
    return False


__all__ = ["BAG_VERSION", "STORAGES", "STORAGE_ERRORS", "BagError", "OutputWriteError", "BagWriter", "TopicInfo",
           "typestore", "read_bag", "bag_topics", "bag_message_count"]
