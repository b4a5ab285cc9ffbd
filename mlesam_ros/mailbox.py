"""A single-slot mailbox between the executor thread and the inference worker: the newest frame wins.

While inference is busy, a frame that arrives replaces the one still waiting, so latency stays bounded
and nothing queues up.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Holds at most one item; `put` replaces what the taker has not taken yet."""

    def __init__(self) -> None:
        """An empty, open mailbox."""
        self._item: T | None = None
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: T) -> bool:
        """Leave `item`; returns True when it replaced an item nobody had taken."""
        with self._changed:
            replaced = self._item is not None
            self._item = item
            self._changed.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Wait for an item and take it; None when closed (or after `timeout` seconds)."""
        with self._changed:
            self._changed.wait_for(lambda: self._item is not None or self._closed, timeout)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake every taker; later takes return None."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


__all__ = ["Mailbox"]
