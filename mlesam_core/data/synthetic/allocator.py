"""Keep freed array memory inside the process while rendering (glibc's allocator only).

A sample allocates and frees hundreds of 0.1-1 MB numpy buffers. By default glibc serves each from a fresh
mmap and returns it on free, so every buffer costs page faults again (`python -m benchmarks.generator_speed`).
Raising the mmap and trim thresholds lets freed buffers be reused from the heap instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: buffers below this come from the heap
TRIM_THRESHOLD = 256 << 20  # free heap kept before memory is returned to the system
TOP_PAD = 16 << 20


def keep_freed_memory() -> bool:
    """Tune glibc malloc for many large short-lived buffers; False (and no change) on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        log.debug("no glibc mallopt: allocator left as it is")
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
