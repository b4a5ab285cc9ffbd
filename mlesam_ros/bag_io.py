"""ROS 2 bag reading and writing with rosbags (no ROS installation needed).

Bags are written as rosbag2 version 8 (Humble's `ros2 bag play` cannot parse version 9; Jazzy reads both),
sqlite3 by default or MCAP. Reading accepts a bag directory or a bare `.db3`/`.mcap` file; when a
directory's metadata does not match its storage (rosbag2 sometimes records QoS metadata that makes
rosbags skip every message), the storage files are read directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

logger = logging.getLogger(__name__)

BAG_VERSION = 8
STORAGES = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}
Storage = Literal["sqlite3", "mcap"]


def typestore() -> Any:
    """The message definitions used for every bag: Humble's (identical to Jazzy's for our types) plus
    event_camera_msgs/msg/EventPacket from its .msg text (no ROS distribution ships it in rosbags)."""
    from mlesam_ros.events import EVENT_PACKET_MSG, EVENT_PACKET_TYPE

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(EVENT_PACKET_MSG, EVENT_PACKET_TYPE))
    return store


class BagWriter:
    """Writes messages to a new rosbag2 directory; connections are added on first use of a topic."""

    def __init__(self, path: str | Path, storage: Storage = "sqlite3", store: Any = None) -> None:
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

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._writer.close()

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a string in the bag metadata's custom_data."""
        self._writer.set_custom_data(key, value)

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Serialise `msg` (a typestore dataclass) on `topic` at log time `stamp_ns`."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msg.__msgtype__, typestore=self.store)
            self._connections[topic] = connection
        self._writer.write(connection, int(stamp_ns), self.store.serialize_cdr(msg, msg.__msgtype__))
        self.counts[topic] = self.counts.get(topic, 0) + 1


def _storage_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.db3")) + sorted(path.glob("*.mcap"))


def read_bag(path: str | Path, topics: set[str] | None = None, store: Any = None
             ) -> Iterator[tuple[str, int, Any]]:
    """(topic, log time ns, message) in log-time order for `topics` (all when None), with the fallback above."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    store = store if store is not None else typestore()
    sources = [path]
    if path.is_dir() and not _directory_readable(path, topics):
        sources = _storage_files(path)
        if not sources:
            raise FileNotFoundError(f"{path}: no .db3 or .mcap storage file in the bag directory")
    for source in sources:
        with Reader(source) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            if not connections:
                continue
            for connection, stamp, raw in reader.messages(connections):
                yield connection.topic, stamp, store.deserialize_cdr(raw, connection.msgtype)


def bag_message_count(path: str | Path) -> int | None:
    """Messages in a bag according to its metadata (None when unknown)."""
    try:
        with Reader(Path(path)) as reader:
            return reader.message_count
    except (ReaderError, FileNotFoundError, ValueError):
        return None


def _directory_readable(path: Path, topics: set[str] | None) -> bool:
    """Whether messages come out through the directory's metadata (logs why not)."""
    try:
        with Reader(path) as reader:
            connections = [c for c in reader.connections if topics is None or c.topic in topics]
            expected = sum(c.msgcount for c in connections)
            if expected == 0 or next(iter(reader.messages(connections)), None) is not None:
                return True
            logger.warning("%s: metadata lists %d messages but none can be read through it; reading the "
                           "storage files directly", path, expected)
    except ReaderError as exc:
        logger.warning("%s: unreadable metadata (%s); reading the storage files directly", path, exc)
    return False


__all__ = ["BAG_VERSION", "STORAGES", "BagWriter", "typestore", "read_bag", "bag_message_count"]
