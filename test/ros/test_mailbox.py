"""The node's single-slot mailbox: a busy worker sees only the newest frame, and closing wakes it."""

import threading

from mlesam_ros.mailbox import Mailbox


def test_newer_frames_replace_the_one_still_waiting():
    mailbox = Mailbox()
    assert mailbox.put(1) is False
    assert mailbox.put(2) is True and mailbox.put(3) is True
    assert mailbox.take() == 3
    assert mailbox.take(timeout=0.01) is None  # nothing queued behind it


def test_a_waiting_taker_gets_the_next_item_and_close_wakes_it():
    mailbox = Mailbox()
    taken = []
    worker = threading.Thread(target=lambda: taken.extend([mailbox.take(), mailbox.take()]))
    worker.start()
    mailbox.put("frame")
    mailbox.close()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert taken[0] in ("frame", None) and taken[-1] is None
